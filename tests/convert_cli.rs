//! The `qwen-convert` binary: arguments, output, exit codes, and its peak memory on a checkpoint
//! whose tensors are larger than the limit (streaming, not loading).

mod common;

use qwen::gguf::{GgmlType, GgufFile};

use std::process::{Command, Output};

fn qwen_convert(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qwen-convert"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn converts_prints_a_summary_and_no_bar_when_piped() {
    let Some(src) = common::model_dir("qwen1-tiny") else {
        return;
    };
    let out = common::unique_path("cli", "gguf");
    let o = qwen_convert(&[
        src.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--type".as_ref(),
        "q8_0".as_ref(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("wrote") && stdout.contains("arch qwen") && stdout.contains("Q8_0"),
        "{stdout}"
    );
    // stderr is not a terminal here: no progress bar escape codes.
    assert!(!text(&o.stderr).contains('\u{1b}'), "{}", text(&o.stderr));
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor("output.weight").unwrap().ty, GgmlType::Q8_0);
    std::fs::remove_file(out).unwrap();
}

#[test]
fn dry_run_lists_tensors_and_writes_nothing() {
    let Some(src) = common::model_dir("qwen1-tiny") else {
        return;
    };
    let o = qwen_convert(&[
        src.as_os_str(),
        "--dry-run".as_ref(),
        "--type".as_ref(),
        "q4_k_m".as_ref(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("blk.1.attn_qkv.weight") && stdout.contains("nothing written"),
        "{stdout}"
    );
    assert!(
        text(&o.stderr).contains("warning"),
        "fallbacks are reported"
    );
}

#[test]
fn errors_exit_nonzero_with_a_message() {
    let o = qwen_convert(&[
        "/nonexistent/model".as_ref(),
        "-o".as_ref(),
        "/tmp/x.gguf".as_ref(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("qwen-convert: error: /nonexistent/model"),
        "{}",
        text(&o.stderr)
    );
    let o = qwen_convert(&[
        ".".as_ref(),
        "-o".as_ref(),
        "x.gguf".as_ref(),
        "--type".as_ref(),
        "q9".as_ref(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("unknown output type `q9`"),
        "{}",
        text(&o.stderr)
    );
    // -o is required unless --dry-run.
    let o = qwen_convert(&[".".as_ref()]);
    assert!(!o.status.success());
}
