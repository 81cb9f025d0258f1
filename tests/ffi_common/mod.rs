//! Shared by the C ABI tests (tests/ffi_*.rs): a tiny `qwen2` GGUF model with a real byte-level
//! BPE vocabulary and ChatML control tokens, the real 0.5B model when present, and where the
//! built library lives.
#![allow(dead_code)]

use qwen::gguf::{write_gguf, GgmlType, MetadataValue};
use qwen::tokenizer::bytes_to_unicode;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const D: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FF: usize = 128;
const LAYERS: usize = 2;

/// Merged tokens after the 256 bytes (each is the concatenation of two earlier tokens).
const MERGES: &[&str] = &[
    "he", "ll", "lo", " t", " w", "in", "er", "on", "or", " a", "hel", "hello", " wor", " world",
    " the", "is", " is",
];
const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Writes the tiny model to `dir/tiny.gguf`: 2 layers, 64 wide, GQA 4/2 heads, 276 tokens,
/// random F32 weights. Greedy generation from it is printable ASCII and ends only by length, a
/// stop string, the caller or an abort, which keeps the tests deterministic.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| bytes_to_unicode(&[b])).collect();
    tokens.extend(MERGES.iter().map(|m| bytes_to_unicode(m.as_bytes())));
    let n_normal = tokens.len();
    tokens.extend(SPECIALS.iter().map(|s| s.to_string()));
    let mut types = vec![1i32; n_normal];
    types.extend(std::iter::repeat_n(3, SPECIALS.len()));
    let vocab = tokens.len();

    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let kv = KV_HEADS * D / HEADS;
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, dims: Vec<usize>, scale: f32, offset: f32| {
        let n = dims.iter().product();
        let data = (0..n).map(|_| r.f32() * scale + offset).collect();
        t.push((name, dims, data));
    };
    let s = 1.0 / (D as f32).sqrt();
    add("token_embd.weight".into(), vec![D, vocab], 1.0, 0.0);
    for i in 0..LAYERS {
        add(format!("blk.{i}.attn_norm.weight"), vec![D], 0.2, 1.0);
        add(format!("blk.{i}.attn_q.weight"), vec![D, D], 3.0 * s, 0.0);
        add(format!("blk.{i}.attn_q.bias"), vec![D], 0.2, 0.0);
        add(format!("blk.{i}.attn_k.weight"), vec![D, kv], 3.0 * s, 0.0);
        add(format!("blk.{i}.attn_k.bias"), vec![kv], 0.2, 0.0);
        add(format!("blk.{i}.attn_v.weight"), vec![D, kv], s, 0.0);
        add(format!("blk.{i}.attn_v.bias"), vec![kv], 0.2, 0.0);
        add(format!("blk.{i}.attn_output.weight"), vec![D, D], s, 0.0);
        add(format!("blk.{i}.ffn_norm.weight"), vec![D], 0.2, 1.0);
        add(format!("blk.{i}.ffn_gate.weight"), vec![D, FF], s, 0.0);
        add(format!("blk.{i}.ffn_up.weight"), vec![D, FF], s, 0.0);
        add(
            format!("blk.{i}.ffn_down.weight"),
            vec![FF, D],
            1.0 / (FF as f32).sqrt(),
            0.0,
        );
    }
    add("output_norm.weight".into(), vec![D], 0.2, 1.0);
    add("output.weight".into(), vec![D, vocab], 1.0, 0.0);
    // Zero output rows: greedy decoding (whose best logit is positive) never picks control
    // tokens, control characters or the bytes of non-ASCII characters, so generated text is
    // printable ASCII and generation never ends on a stop token by itself.
    let output = &mut t.last_mut().unwrap().2;
    for id in (0..vocab).filter(|&id| id < 32 || (127..256).contains(&id) || id >= n_normal) {
        output[id * D..(id + 1) * D]
            .iter_mut()
            .for_each(|v| *v = 0.0);
    }

    let k = |s: &str| format!("qwen2.{s}");
    let strs = |v: &[String]| MetadataValue::Array(v.iter().map(|s| s.as_str().into()).collect());
    let metadata: Vec<(String, MetadataValue)> = vec![
        ("general.architecture".into(), "qwen2".into()),
        ("general.name".into(), "qwen2-ffi-tiny".into()),
        (k("context_length"), 4096u32.into()),
        (k("embedding_length"), (D as u32).into()),
        (k("block_count"), (LAYERS as u32).into()),
        (k("feed_forward_length"), (FF as u32).into()),
        (k("attention.head_count"), (HEADS as u32).into()),
        (k("attention.head_count_kv"), (KV_HEADS as u32).into()),
        (k("rope.freq_base"), 10000f32.into()),
        (k("attention.layer_norm_rms_epsilon"), 1e-6f32.into()),
        ("tokenizer.ggml.model".into(), "gpt2".into()),
        ("tokenizer.ggml.tokens".into(), strs(&tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            MetadataValue::Array(types.iter().map(|&v| v.into()).collect()),
        ),
    ];
    let bytes: Vec<Vec<u8>> = t
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let tensors: Vec<(&str, GgmlType, &[usize], &[u8])> = t
        .iter()
        .zip(&bytes)
        .map(|((n, dims, _), b)| (n.as_str(), GgmlType::F32, dims.as_slice(), b.as_slice()))
        .collect();
    let path = dir.join("tiny.gguf");
    write_gguf(&path, &metadata, &tensors).expect("write the tiny model");
    path
}

/// The real Qwen2.5-Coder 0.5B GGUF: present, or a panic in CI, or a visible SKIP
/// (`common::real_model`; every test crate using this module declares `mod common`).
pub fn real_model() -> Option<PathBuf> {
    crate::common::real_model(crate::common::REAL_0_5B)
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The profile directory holding libqwen.so / libqwen.a (this test binary is in its `deps/`).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(
        dir.join("libqwen.so").exists() && dir.join("libqwen.a").exists(),
        "libqwen.so / libqwen.a missing in {} (scripts/test.sh builds them before the tests)",
        dir.display()
    );
    // `cargo test` rebuilds only the rlib; C programs must not link a stale shared library.
    let modified = |name: &str| {
        std::fs::metadata(dir.join(name))
            .and_then(|m| m.modified())
            .ok()
    };
    if let (Some(so), Some(rlib)) = (modified("libqwen.so"), modified("libqwen.rlib")) {
        assert!(
            so >= rlib,
            "libqwen.so in {} is older than the library: run `cargo build --release` (scripts/test.sh does)",
            dir.display()
        );
    }
    dir
}

pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A required tool: missing is a failure in CI and a visible skip elsewhere.
pub fn require_tool(tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{tool} is required in CI");
    }
    eprintln!("SKIP: {tool} not found");
    false
}

/// Runs a command, printing its output, and panics unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("$ {cmd:?}\n{stdout}{stderr}");
    assert!(out.status.success(), "{cmd:?} failed: {}", out.status);
    out
}

/// Compiles C sources against include/ and the shared library (rpath set, so no
/// LD_LIBRARY_PATH is needed).
pub fn cc_shared(out: &Path, sources: &[PathBuf], extra: &[&str]) {
    let lib = lib_dir();
    let mut cmd = Command::new("gcc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(root().join("include"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lqwen", "-lpthread"])
        .args(extra);
    run(&mut cmd);
}

/// Compiles C++ sources statically against libqwen.a.
pub fn cxx_static(out: &Path, sources: &[PathBuf]) {
    let lib = lib_dir();
    let mut cmd = Command::new("g++");
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("bindings/cpp"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .arg(lib.join("libqwen.a"))
        .args(["-lpthread", "-ldl", "-lm"]);
    run(&mut cmd);
}

/// The command under valgrind when it is installed (zero errors and zero definite or possible
/// leaks required), else as is.
pub fn maybe_valgrind(program: &Path, use_valgrind: bool) -> Command {
    if use_valgrind {
        let mut c = Command::new("valgrind");
        c.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,possible",
            "--quiet",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}
