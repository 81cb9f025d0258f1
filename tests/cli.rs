//! The `qwen` command line contract (names and output shapes that outside checks rely on).

mod common;

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn qwen(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn existing(path: PathBuf, what: &str) -> Option<String> {
    if path.exists() {
        return Some(path.to_string_lossy().into_owned());
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} missing at {}",
        path.display()
    );
    eprintln!("SKIP: {what} missing at {}", path.display());
    None
}

fn real_model() -> Option<String> {
    let dir = common::models_dir();
    existing(
        dir.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        "Qwen2.5 0.5B GGUF",
    )
}

fn tiktoken() -> Option<String> {
    let dir = std::env::var_os("QWEN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"));
    existing(dir.join("models/qwen1-tiny/qwen.tiktoken"), "qwen.tiktoken")
}

#[test]
fn tokenize_text_and_special_modes() {
    let Some(tt) = tiktoken() else { return };
    let (ok, out, err) = qwen(&["tokenize", "--tiktoken", &tt, "<|im_start|>1234"]);
    assert!(ok, "{err}");
    let ids: Vec<u32> = serde_json::from_str(&out).unwrap();
    // The control string is plain text without --special; digits are split one by one.
    assert_eq!(ids, [27, 91, 318, 4906, 91, 29, 16, 17, 18, 19]);
    let (_, out, _) = qwen(&[
        "tokenize",
        "--tiktoken",
        &tt,
        "--special",
        "<|im_start|>1234",
    ]);
    let ids: Vec<u32> = serde_json::from_str(&out).unwrap();
    assert_eq!(ids, [151644, 16, 17, 18, 19]);
    let Some(m) = real_model() else { return };
    let (_, out, _) = qwen(&["tokenize", "-m", &m, "--special", "<|im_start|>1234"]);
    assert_eq!(
        serde_json::from_str::<Vec<u32>>(&out).unwrap(),
        [151644, 16, 17, 18, 19]
    );
}

#[test]
fn info_logits_and_run_on_the_real_model() {
    let Some(m) = real_model() else { return };
    let (ok, out, err) = qwen(&["info", "-m", &m]);
    assert!(ok, "{err}");
    let info: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["architecture"], "qwen2");
    assert_eq!(info["n_layer"], 24);
    assert_eq!(info["n_head_kv"], 2);
    assert!(info["tensor_types"]["Q4_K"]["count"].as_u64().unwrap() > 0);
    // Where the tensor data starts and the file's size (scripts/zeroed-model.sh uses them).
    let (offset, size) = (
        info["data_offset"].as_u64().unwrap(),
        info["file_bytes"].as_u64().unwrap(),
    );
    assert_eq!(size, std::fs::metadata(&m).unwrap().len());
    assert!(
        offset > 0 && offset.is_multiple_of(32) && offset < size,
        "{offset} of {size}"
    );

    let (ok, out, err) = qwen(&["logits", "-m", &m, "--ids", "9707,11,1879", "-t", "2"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["logits"].as_array().unwrap().len(), 1);
    assert_eq!(v["logits"][0].as_array().unwrap().len(), 151936);
    let (_, out, _) = qwen(&[
        "logits",
        "-m",
        &m,
        "--ids",
        "9707,11,1879",
        "--all",
        "-t",
        "2",
    ]);
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all["logits"].as_array().unwrap().len(), 3);
    assert_eq!(
        all["logits"][2], v["logits"][0],
        "the last row equals the last-position logits"
    );

    // Raw completion with a seed is reproducible.
    let args = [
        "run",
        "-m",
        &m,
        "-p",
        "def add(a, b):",
        "-n",
        "6",
        "--seed",
        "7",
        "--temp",
        "0.8",
        "--json",
        "-t",
        "2",
    ];
    let (ok, a, err) = qwen(&args);
    assert!(ok, "{err}");
    let (_, b, _) = qwen(&args);
    let (a, b): (Value, Value) = (
        serde_json::from_str(&a).unwrap(),
        serde_json::from_str(&b).unwrap(),
    );
    assert_eq!(a["generated_ids"], b["generated_ids"]);
    assert_eq!(a["generated_ids"].as_array().unwrap().len(), 6);
    assert_eq!(a["finish_reason"], "length");
}

#[test]
fn piped_chat_answers_each_line() {
    let Some(m) = real_model() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(["chat", "-m", &m, "--temp", "0", "-n", "12", "-t", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            "What is the capital of France? Answer in one word.\nAnd of Italy?\n/exit\n".as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Paris"), "{text}");
    assert!(
        text.contains("Rome"),
        "the second turn sees the first: {text}"
    );
}

#[test]
fn bad_files_give_clear_errors() {
    let (ok, _, err) = qwen(&["info", "-m", "/nonexistent/model.gguf"]);
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let (ok, _, err) = qwen(&["run", "-m", junk.to_str().unwrap(), "-p", "hi"]);
    assert!(
        !ok && err.starts_with("error:") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = qwen(&[
        "run",
        "-m",
        junk.to_str().unwrap(),
        "-p",
        "hi",
        "--top-p",
        "0",
    ]);
    assert!(!ok && err.contains("top-p"), "{err}");
}

/// Every command that runs a model takes `--backend`; one this build or machine cannot run is a
/// clear error naming why (not built in, or its driver missing), never a silent CPU run.
#[test]
fn every_model_command_takes_a_backend() {
    let Some(model) = real_model() else {
        return;
    };
    let text = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("backend-ppl.txt");
    std::fs::write(&text, "Hello world. ".repeat(20)).unwrap();
    let text = text.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["run", "-p", "hi", "-n", "2"],
        &["chat", "-n", "2"],
        &["perplexity", "-f", text, "-c", "16"],
        &["logits", "--ids", "1,2"],
        &["bench", "-p", "4", "-n", "2", "-r", "1"],
        &["serve", "--port", "0"],
    ];
    for kind in ["cuda", "rocm"] {
        let built_in = match kind {
            "cuda" => cfg!(feature = "cuda"),
            _ => cfg!(feature = "rocm"),
        };
        for cmd in commands {
            if built_in && cmd[0] == "serve" {
                // With a GPU present it would start serving and not return.
                continue;
            }
            let mut args = cmd.to_vec();
            args.extend(["-m", &model, "--backend", kind]);
            let (ok, _, err) = qwen(&args);
            if ok {
                // A machine with this GPU and a build with its feature.
                eprintln!("{args:?}: {kind} is available here");
                continue;
            }
            let why = if err.contains("built without feature") {
                format!("built without feature {kind}")
            } else {
                // Built in: the driver library or device this machine lacks is named.
                "not found".to_string()
            };
            assert!(
                err.starts_with(&format!("error: backend {kind}: ")) && err.contains(&why),
                "{args:?}: {err}"
            );
        }
    }
    let (ok, _, err) = qwen(&["run", "-m", &model, "-p", "hi", "--backend", "tpu"]);
    assert!(!ok && err.contains("backend `tpu`"), "{err}");
    // The CPU, named explicitly, is the default path.
    let (ok, out, err) = qwen(&[
        "run",
        "-m",
        &model,
        "-p",
        "1+1=",
        "-n",
        "2",
        "--backend",
        "cpu",
    ]);
    assert!(ok && !out.is_empty(), "{err}");
    let (ok, out, err) = qwen(&[
        "bench", "-m", &model, "-p", "4", "-n", "2", "-r", "1", "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["backend"], "cpu");
    assert!(v["device"].as_str().unwrap().starts_with("cpu ("), "{v}");
    assert!(v["backend_init_ms"].as_f64().unwrap() >= 0.0);
}
