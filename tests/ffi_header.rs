//! `include/qwen.h` is cbindgen's output for `src/ffi/`, committed so C users need no Rust
//! tooling. This test regenerates it and fails on any difference; run it with
//! `QWEN_BLESS_HEADER=1` to rewrite the header after an intended change of the ABI.

use std::path::Path;

#[test]
fn header_matches_cbindgen_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = root.join("include/qwen.h");
    if std::env::var_os("QWEN_BLESS_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    if committed != generated {
        let tmp = std::env::temp_dir().join("qwen.h.generated");
        std::fs::write(&tmp, &generated).unwrap();
        panic!(
            "include/qwen.h differs from cbindgen's output for src/ffi/ (regenerated copy: {}; \
             `diff {} {}`). Rerun with QWEN_BLESS_HEADER=1 if the ABI change is intended, \
             and bump the QWEN_ABI_VERSION_* constants.",
            tmp.display(),
            path.display(),
            tmp.display()
        );
    }
}
