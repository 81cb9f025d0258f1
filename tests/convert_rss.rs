//! The converter's peak memory (its own VmHWM, which it prints), in a test binary of its own so
//! no other test competes with it for memory.

mod common;

use qwen::gguf::{GgmlType, GgufFile};
use std::path::Path;
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

/// A 168 MiB checkpoint whose embedding alone (128 MiB) exceeds the 100 MiB limit converts
/// within it: tensors are streamed in row chunks and their input pages released as they go.
#[cfg(target_os = "linux")]
#[test]
fn peak_memory_stays_below_the_largest_tensor() {
    const LIMIT: u64 = 100 << 20;
    let s = common::Synthetic {
        hidden: 1024,
        heads: 8,
        kv_heads: 8,
        ff: 2048,
        vocab: 32768,
        layers: 1,
        tied: true,
    };
    let dir = common::unique_path("big", "d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), s.config().to_string()).unwrap();
    // Streamed to disk: a child's peak RSS includes this process's peak up to its exec.
    common::write_safetensors_streaming(&dir.join("model.safetensors"), &s.tensors(), value);
    let size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    let embd = (s.vocab * s.hidden * 4) as u64;
    assert!(embd > LIMIT && size > embd);
    let out = common::unique_path("big", "gguf");
    let o = qwen_convert(&[
        dir.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--type".as_ref(),
        "f16".as_ref(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The converter prints its own VmHWM, which starts afresh at exec; getrusage on children
    // would also count this test process's pages shared with the child before its exec.
    let stdout = text(&o.stdout);
    let peak_mib: u64 = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("peak RSS ")?
                .strip_suffix(" MiB")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no peak RSS line in: {stdout}"));
    let peak = peak_mib << 20;
    eprintln!(
        "checkpoint {} MiB, largest tensor {} MiB, converter peak RSS {} MiB",
        size >> 20,
        embd >> 20,
        peak >> 20
    );
    assert!(peak < LIMIT, "peak RSS {} MiB", peak >> 20);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor("token_embd.weight").unwrap().ty, GgmlType::F16);
    check_rows(&f, &dir);
    std::fs::remove_file(out).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Element `k` of tensor `i` of the big checkpoint.
fn value(i: usize, k0: usize, out: &mut [f32]) {
    for (k, x) in out.iter_mut().enumerate() {
        *x = ((k0 + k) as f32 * 0.37 + i as f32).sin() * 0.1;
    }
}

/// Spot-checks the streamed embedding against the source.
#[cfg(target_os = "linux")]
fn check_rows(f: &GgufFile, _dir: &Path) {
    let t = f.tensor("token_embd.weight").unwrap();
    for i in [0usize, 12345, 1 << 22, t.data.len() / 2 - 1] {
        let mut want = [0f32];
        value(0, i, &mut want);
        let want = want[0];
        let got = half::f16::from_le_bytes([t.data[2 * i], t.data[2 * i + 1]]).to_f32();
        assert_eq!(got, half::f16::from_f32(want).to_f32(), "element {i}");
    }
}
