//! Shared by the integration tests: where the test data is, and the tiny checkpoints converted
//! to GGUF once per type (cached under `target/test-models/`).
#![allow(dead_code)]

pub mod parity;
pub mod random_weights;

use qwen::convert::{convert, ConvertOptions, OutType};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// `$QWEN_TESTDATA`, default `<crate>/../shared/testdata`. `None` (with a SKIP line) when it is
/// absent; under CI (`$CI` set) a missing directory is a failure instead.
pub fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("QWEN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"));
    if dir.join("models").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "test data not found at {} (set QWEN_TESTDATA)",
            dir.display()
        );
    }
    eprintln!("SKIP: test data not found at {}", dir.display());
    None
}

/// Where the real GGUF models are: `$QWEN_MODELS`, default `~/.cache/libqwen/models`
/// (scripts/fetch-models.sh puts them there).
pub fn models_dir() -> PathBuf {
    std::env::var_os("QWEN_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/libqwen/models")
        })
}

/// The real Qwen2.5-Coder 0.5B Q4_K_M GGUF (scripts/fetch-models.sh 0.5b).
pub const REAL_0_5B: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// A real model file in [`models_dir`]: `None` with a SKIP line when it is absent; under CI
/// (`$CI` set; scripts/test.sh fetches the models first) a missing file is a failure instead.
pub fn real_model(file: &str) -> Option<PathBuf> {
    let path = models_dir().join(file);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "real model missing at {} (scripts/fetch-models.sh)",
            path.display()
        );
    }
    eprintln!(
        "SKIP: real model missing at {} (scripts/fetch-models.sh)",
        path.display()
    );
    None
}

/// A checkpoint directory of the test data, e.g. `model_dir("qwen1-tiny")`.
pub fn model_dir(name: &str) -> Option<PathBuf> {
    Some(testdata()?.join("models").join(name))
}

/// A directory for test outputs that survives the test (inspectable after a failure).
/// `$QWEN_TEST_OUT` overrides it (a test binary run on another machine, scripts/gpu-device.sh).
pub fn out_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = std::env::var_os("QWEN_TEST_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.parent().unwrap_or(tmp).join("test-models"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path in [`out_dir`] no other test or process uses.
pub fn unique_path(stem: &str, ext: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    out_dir().join(format!("{stem}.{}.{n}.{ext}", std::process::id()))
}

/// Converts a tiny checkpoint (`qwen1-tiny`, `qwen2-tiny`, `qwen1-tiny-gptq-int4-g32`, ...) to
/// `ty` once and returns the GGUF path. A cached file is reused only if it is newer than the
/// test binary (which contains the converter). Concurrent tests are safe: each converts into a
/// unique temporary name and renames it into place. qwen2-tiny ships no tokenizer, so it gets
/// qwen1-tiny's `qwen.tiktoken` (same ranks and control-token ids).
pub fn tiny_gguf(name: &str, ty: &str) -> Option<PathBuf> {
    let dst = out_dir().join(format!("{name}-{ty}.gguf"));
    // A test binary run on another machine finds the files carried there
    // (scripts/gpu-device.sh), where the checkpoints are not.
    if std::env::var_os("QWEN_TEST_OUT").is_some() && dst.exists() {
        return Some(dst);
    }
    let data = testdata()?;
    let src = data.join("models").join(name);
    if is_fresh(&dst) {
        return Some(dst);
    }
    let tmp = unique_path(&format!("{name}-{ty}"), "gguf.tmp");
    let mut opts = ConvertOptions::new(&src, &tmp);
    opts.out_type = OutType::parse(ty).unwrap();
    if !src.join("qwen.tiktoken").exists() {
        opts.tokenizer = Some(data.join("models/qwen1-tiny/qwen.tiktoken"));
    }
    convert(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("converting {name} to {ty}: {e}"));
    std::fs::rename(&tmp, &dst).unwrap();
    Some(dst)
}

/// [`tiny_gguf`] of `ty`, then every tensor decoded to f32 (the converter re-reading a GGUF):
/// the same weights as `ty` holds, for a reference that computes on them in f32.
pub fn tiny_gguf_dequantized(name: &str, ty: &str) -> Option<PathBuf> {
    Some(dequantized(&tiny_gguf(name, ty)?, &format!("{name}-{ty}")))
}

/// `model` with every tensor decoded to f32 (the converter re-reading a GGUF), cached in
/// [`out_dir`] as `<stem>-as-f32.gguf`: the same weights, for a reference computing in f32.
pub fn dequantized(model: &Path, stem: &str) -> PathBuf {
    let dst = out_dir().join(format!("{stem}-as-f32.gguf"));
    if is_fresh(&dst) && newer(&dst, model) {
        return dst;
    }
    let tmp = unique_path(&format!("{stem}-as-f32"), "gguf.tmp");
    let mut opts = ConvertOptions::new(model, &tmp);
    opts.out_type = OutType::parse("f32").unwrap();
    convert(&opts, &mut |_| {}).unwrap_or_else(|e| panic!("decoding {stem} to f32: {e}"));
    std::fs::rename(&tmp, &dst).unwrap();
    dst
}

fn newer(a: &Path, b: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(a), modified(b)), (Some(a), Some(b)) if a > b)
}

fn is_fresh(path: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let exe = std::env::current_exe().ok();
    match (modified(path), exe.as_deref().and_then(modified)) {
        (Some(file), Some(exe)) => file > exe,
        _ => false,
    }
}

/// Deterministic pseudo-random values in [-scale, scale) (an LCG; tests need no rand crate).
pub fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Shape of a synthetic Qwen-2 checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct Synthetic {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ff: usize,
    pub vocab: usize,
    pub layers: usize,
    pub tied: bool,
}

impl Default for Synthetic {
    /// Rows of 256: every K-quant applies without fallbacks.
    fn default() -> Self {
        Synthetic {
            hidden: 256,
            heads: 4,
            kv_heads: 2,
            ff: 512,
            vocab: 512,
            layers: 2,
            tied: false,
        }
    }
}

impl Synthetic {
    /// HF tensor names and shapes, in a fixed order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, kv) = (self.hidden, self.kv_heads * self.hidden / self.heads);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, d])];
        for i in 0..self.layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            t.extend([
                (p("input_layernorm.weight"), vec![d]),
                (p("self_attn.q_proj.weight"), vec![d, d]),
                (p("self_attn.q_proj.bias"), vec![d]),
                (p("self_attn.k_proj.weight"), vec![kv, d]),
                (p("self_attn.k_proj.bias"), vec![kv]),
                (p("self_attn.v_proj.weight"), vec![kv, d]),
                (p("self_attn.v_proj.bias"), vec![kv]),
                (p("self_attn.o_proj.weight"), vec![d, d]),
                (p("post_attention_layernorm.weight"), vec![d]),
                (p("mlp.gate_proj.weight"), vec![self.ff, d]),
                (p("mlp.up_proj.weight"), vec![self.ff, d]),
                (p("mlp.down_proj.weight"), vec![d, self.ff]),
            ]);
        }
        t.push(("model.norm.weight".to_string(), vec![d]));
        if !self.tied {
            t.push(("lm_head.weight".to_string(), vec![self.vocab, d]));
        }
        t
    }

    pub fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "hidden_size": self.hidden, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "intermediate_size": self.ff,
            "vocab_size": self.vocab, "num_hidden_layers": self.layers,
            "tie_word_embeddings": self.tied, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "max_position_embeddings": 4096, "some_future_key": {"nested": [1, "x"]}
        })
    }

    /// Writes `config.json` and `model.safetensors` (F32) with `tensors` (name, shape, values)
    /// instead of the defaults when given; returns the directory.
    pub fn write_with(&self, dir: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), self.config().to_string()).unwrap();
        write_safetensors(&dir.join("model.safetensors"), &tensors);
        dir.to_path_buf()
    }

    pub fn values(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.tensors()
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| {
                let n = shape.iter().product();
                let v = if shape.len() == 1 {
                    pseudo_random(n, i as u64, 0.2)
                        .iter()
                        .map(|x| x + 1.0)
                        .collect()
                } else {
                    pseudo_random(n, i as u64, 1.0 / (shape[1] as f32).sqrt())
                };
                (name, shape, v)
            })
            .collect()
    }

    pub fn write(&self, dir: &Path) -> PathBuf {
        self.write_with(dir, self.values())
    }
}

/// Writes F32 tensors into a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b);
            (n.clone(), view.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// Writes an F32 safetensors file without holding its data in memory: `fill(i, offset, out)`
/// produces elements `offset..offset + out.len()` of tensor `i`. For checkpoints larger than the
/// memory a test may use.
pub fn write_safetensors_streaming(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    fill: impl Fn(usize, usize, &mut [f32]),
) {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut buf = vec![0f32; 1 << 16];
    for (i, (_, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut done = 0;
        while done < n {
            let k = buf.len().min(n - done);
            fill(i, done, &mut buf[..k]);
            for x in &buf[..k] {
                f.write_all(&x.to_le_bytes()).unwrap();
            }
            done += k;
        }
    }
    f.flush().unwrap();
}
