//! The Java API (bindings/java) and its JNI glue (feature `jni`): JUnit 4 tests on the host JVM
//! against the host libqwen.so, streaming a chat reply from the tiny and the real 0.5B model.
//! bindings/java/test.sh does the work (cargo build --features jni into target/jni, javac,
//! JUnitCore with -Xcheck:jni).

mod common;
mod ffi_common;

use ffi_common::*;
use std::process::Command;

#[test]
fn java_junit_tests() {
    if !require_tool("javac") || !require_tool("java") {
        return;
    }
    let junit = std::env::var("JUNIT_JAR").unwrap_or_else(|_| "/usr/share/java/junit4.jar".into());
    let ci = std::env::var_os("CI").is_some();
    if !std::path::Path::new(&junit).exists() && ci {
        // JUnit is not in the base image: CI installs it (Debian's junit4, no Maven Central).
        run(&mut Command::new(
            root().join("bindings/java/install-deps.sh"),
        ));
    }
    if !std::path::Path::new(&junit).exists() {
        if ci {
            panic!("JUnit 4 missing at {junit} (bindings/java/install-deps.sh installs it)");
        }
        eprintln!("SKIP: JUnit 4 missing at {junit} (apt-get install junit4)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tiny = tiny_model(dir.path());
    let mut cmd = Command::new(root().join("bindings/java/test.sh"));
    cmd.env("QWEN_TINY_MODEL", &tiny);
    if let Some(converted) = common::tiny_gguf("qwen2-tiny", "f32") {
        cmd.env("QWEN_CONVERTED_TINY_MODEL", converted);
    }
    if let Some(real) = real_model() {
        cmd.env("QWEN_REAL_MODEL", real);
    }
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK ("),
        "JUnit did not report success: {stdout}"
    );
    assert!(stdout.contains("converted tiny model replied"), "{stdout}");
    if real_model().is_some() {
        assert!(stdout.contains("real model replied"), "{stdout}");
    }
}
