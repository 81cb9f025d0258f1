//! The Android build of the Rust side: `cargo check --target aarch64-linux-android --features
//! jni` (into target/android). The target is installed with rustup when missing; if that is
//! impossible the test skips with a visible message. Gradle and the NDK are not on these
//! machines (see android/README.md).

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "aarch64-linux-android";

fn target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
}

#[test]
fn android_cargo_check_with_jni() {
    if !target_installed() {
        let added = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status()
            .is_ok_and(|s| s.success());
        if !added || !target_installed() {
            eprintln!("SKIP: the {TARGET} target cannot be installed (rustup target add {TARGET})");
            return;
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", root.join("target/android"))
        .args([
            "check",
            "--release",
            "--lib",
            "--features",
            "jni",
            "--target",
            TARGET,
        ])
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "cargo check for {TARGET} failed");
}
