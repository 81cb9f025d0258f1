//! Shared by the integration tests: where the test data is, and the tiny checkpoints converted
//! to GGUF once per type (cached under `target/test-models/`).
#![allow(dead_code)]

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

/// A checkpoint directory of the test data, e.g. `model_dir("qwen1-tiny")`.
pub fn model_dir(name: &str) -> Option<PathBuf> {
    Some(testdata()?.join("models").join(name))
}

/// A directory for test outputs that survives the test (inspectable after a failure).
pub fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-models");
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
    let data = testdata()?;
    let src = data.join("models").join(name);
    let dst = out_dir().join(format!("{name}-{ty}.gguf"));
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

fn is_fresh(path: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let exe = std::env::current_exe().ok();
    match (modified(path), exe.as_deref().and_then(modified)) {
        (Some(file), Some(exe)) => file > exe,
        _ => false,
    }
}
