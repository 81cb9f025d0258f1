//! Malformed GGUF files: each corruption must give an error that names the problem, never a
//! panic. Files are built byte by byte, so each test shows exactly what is wrong.

use std::path::{Path, PathBuf};

use qwen::gguf::{write_gguf, GgmlType, GgufFile, MetadataValue};

const F32: u32 = GgmlType::F32 as u32;

/// A GGUF image built field by field.
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, tensor_count: u64, kv_count: u64) -> Raw {
        Raw(b"GGUF".to_vec())
            .u32(version)
            .u64(tensor_count)
            .u64(kv_count)
    }
    fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Zero padding up to the next multiple of `align`, as before the data section.
    fn pad(mut self, align: usize) -> Raw {
        let len = self.0.len().div_ceil(align) * align;
        self.0.resize(len, 0);
        self
    }
    fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

fn write_tmp(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Opens the bytes as a file and returns the error message, failing the test if it opened.
fn open_err(bytes: &[u8]) -> String {
    let (_dir, path) = write_tmp(bytes);
    match GgufFile::open(&path) {
        Ok(_) => panic!("a corrupt file opened without error"),
        Err(e) => e.to_string(),
    }
}

fn assert_err_contains(bytes: &[u8], words: &[&str]) {
    let msg = open_err(bytes);
    for w in words {
        assert!(
            msg.to_lowercase().contains(&w.to_lowercase()),
            "error {msg:?} does not mention {w:?}"
        );
    }
}

/// A valid file with one key and two f32 tensors of 8 and 4 elements.
fn valid() -> Raw {
    Raw::header(3, 2, 1)
        .kv_u32("k", 7)
        .tensor("a", &[8], F32, 0)
        .tensor("b", &[4], F32, 32)
        .pad(32)
        .zeros(32 + 16)
}

#[test]
fn the_hand_built_file_is_valid() {
    let (_dir, path) = write_tmp(&valid().0);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor("b").unwrap().data.len(), 16);
}

#[test]
fn truncated_file() {
    let full = valid().0;
    // Every cut before the end of the last tensor's data, header and data alike.
    for cut in 0..full.len() {
        let msg = open_err(&full[..cut]);
        assert!(
            msg.contains("truncated") && msg.contains("end of file"),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn truncated_in_the_middle_of_tensor_data() {
    let full = valid().0;
    let msg = open_err(&full[..full.len() - 8]);
    assert!(
        msg.contains("tensor `b`") && msg.contains("end of file"),
        "{msg}"
    );
}

#[test]
fn empty_file() {
    assert_err_contains(&[], &["end of file", "magic"]);
}

#[test]
fn bad_magic() {
    let mut b = valid().0;
    b[0] = b'X';
    assert_err_contains(&b, &["magic"]);
}

#[test]
fn version_1() {
    let mut b = valid().0;
    b[4] = 1;
    assert_err_contains(&b, &["version 1"]);
}

#[test]
fn version_99() {
    let mut b = valid().0;
    b[4] = 99;
    assert_err_contains(&b, &["version 99"]);
}

#[test]
fn tensor_offset_past_end_of_file() {
    let b = Raw::header(3, 1, 0)
        .tensor("t", &[8], F32, 1 << 20)
        .pad(32)
        .zeros(32);
    assert_err_contains(&b.0, &["tensor `t`", "offset", "end of file"]);
}

#[test]
fn tensor_size_past_end_of_file() {
    let b = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 20], F32, 0)
        .pad(32)
        .zeros(32);
    assert_err_contains(
        &b.0,
        &["tensor `t`", "end of file", "4194304 bytes", "byte 4194368"],
    );
}

#[test]
fn absurd_dimension_overflows() {
    let b = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 40, 1 << 40], F32, 0)
        .pad(32);
    assert_err_contains(&b.0, &["tensor `t`", "overflow"]);
}

#[test]
fn seven_dimensions() {
    let b = Raw::header(3, 1, 0)
        .tensor("t", &[1; 7], F32, 0)
        .pad(32)
        .zeros(32);
    assert_err_contains(&b.0, &["tensor `t`", "dimension"]);
}

#[test]
fn zero_dimensions() {
    let b = Raw::header(3, 1, 0)
        .tensor("t", &[], F32, 0)
        .pad(32)
        .zeros(32);
    assert_err_contains(&b.0, &["dimension"]);
}

#[test]
fn unknown_ggml_type() {
    let b = Raw::header(3, 1, 0)
        .tensor("blk.0.attn_q.weight", &[8], 99, 0)
        .pad(32)
        .zeros(32);
    assert_err_contains(&b.0, &["`blk.0.attn_q.weight`", "unknown ggml type id 99"]);
}

#[test]
fn row_not_a_whole_number_of_blocks() {
    let b = Raw::header(3, 1, 0)
        .tensor("t", &[33], GgmlType::Q8_0 as u32, 0)
        .pad(32)
        .zeros(64);
    assert_err_contains(&b.0, &["tensor `t`", "block size"]);
}

#[test]
fn duplicate_tensor_name() {
    let b = Raw::header(3, 2, 0)
        .tensor("t", &[8], F32, 0)
        .tensor("t", &[8], F32, 32)
        .pad(32)
        .zeros(64);
    assert_err_contains(&b.0, &["duplicate tensor name `t`"]);
}

#[test]
fn duplicate_key() {
    let b = Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).pad(32);
    assert_err_contains(&b.0, &["duplicate metadata key `k`"]);
}

#[test]
fn misaligned_offset() {
    let b = Raw::header(3, 1, 0)
        .tensor("t", &[4], F32, 4)
        .pad(32)
        .zeros(64);
    assert_err_contains(&b.0, &["tensor `t`", "offset 4", "alignment"]);
}

#[test]
fn overlapping_tensors() {
    let b = Raw::header(3, 2, 0)
        .tensor("a", &[16], F32, 0)
        .tensor("b", &[8], F32, 32)
        .pad(32)
        .zeros(64);
    assert_err_contains(&b.0, &["`a`", "`b`", "overlap"]);
}

#[test]
fn alignment_zero() {
    let b = Raw::header(3, 0, 1).kv_u32("general.alignment", 0).pad(32);
    assert_err_contains(&b.0, &["alignment", "power of two"]);
}

#[test]
fn alignment_not_a_power_of_two() {
    let b = Raw::header(3, 0, 1).kv_u32("general.alignment", 48).pad(32);
    assert_err_contains(&b.0, &["alignment", "48"]);
}

#[test]
fn absurd_kv_count() {
    let b = Raw::header(3, 0, u64::MAX / 2).kv_u32("k", 1);
    assert_err_contains(&b.0, &["kv_count"]);
}

#[test]
fn absurd_tensor_count() {
    let b = Raw::header(3, 1 << 40, 0).tensor("t", &[8], F32, 0);
    assert_err_contains(&b.0, &["tensor_count"]);
}

#[test]
fn string_length_past_end_of_file() {
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(8)
        .u64(1 << 50)
        .bytes(b"short");
    assert_err_contains(
        &b.0,
        &["metadata `k`", "string value length", "end of file"],
    );
}

#[test]
fn array_count_past_end_of_file() {
    let b = Raw::header(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(4)
        .u64(1 << 60)
        .u32(1);
    assert_err_contains(&b.0, &["metadata `k`", "array count", "end of file"]);
}

#[test]
fn arrays_nested_too_deep() {
    let mut b = Raw::header(3, 0, 1).str("k").u32(9);
    for _ in 0..20 {
        b = b.u32(9).u64(1);
    }
    assert_err_contains(&b.u32(0).u64(0).0, &["metadata `k`", "nested"]);
}

#[test]
fn unknown_metadata_value_type() {
    let b = Raw::header(3, 0, 1).str("k").u32(13).u32(0);
    assert_err_contains(&b.0, &["metadata `k`", "unknown metadata value type 13"]);
}

#[test]
fn invalid_utf8_key() {
    let b = Raw::header(3, 0, 1)
        .u64(2)
        .bytes(&[0xff, 0xfe])
        .u32(4)
        .u32(1);
    assert_err_contains(&b.0, &["metadata key", "utf-8"]);
}

#[test]
fn invalid_utf8_string_value() {
    let b = Raw::header(3, 0, 1).str("k").u32(8).u64(1).bytes(&[0xc3]);
    assert_err_contains(&b.0, &["metadata `k`", "utf-8"]);
}

#[test]
fn the_error_names_the_file() {
    let (_dir, path) = write_tmp(b"not a gguf file at all");
    let msg = GgufFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A small file written by our writer, with every kind of section the parser handles.
fn fuzz_seed(dir: &Path) -> Vec<u8> {
    let path = dir.join("seed.gguf");
    let meta = vec![
        ("general.architecture".to_string(), "qwen2".into()),
        ("qwen2.block_count".to_string(), 2u32.into()),
        ("f".to_string(), 0.5f32.into()),
        ("b".to_string(), true.into()),
        ("tokens".to_string(), vec!["a", "bc", "def"].into()),
        (
            "nested".to_string(),
            MetadataValue::Array(vec![vec![1i64, -1].into(), vec![2i64].into()]),
        ),
    ];
    let q = vec![1u8; GgmlType::Q4_K.type_size()];
    let f = vec![2u8; 24];
    write_gguf(
        &path,
        &meta,
        &[
            ("token_embd.weight", GgmlType::Q4_K, &[256], &q),
            ("output_norm.weight", GgmlType::F32, &[3, 2], &f),
        ],
    )
    .unwrap();
    std::fs::read(&path).unwrap()
}

/// Flips, overwrites and truncates bytes of a valid file; opening must never panic, and a file
/// that does open must hand out only in-range tensor data.
#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let seed = fuzz_seed(dir.path());
    let path = dir.path().join("fuzz.gguf");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut opened = 0;
    for iter in 0..3000 {
        let mut b = seed.clone();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            b[i] = match rng.below(4) {
                0 => b[i] ^ (1 << rng.below(8)),
                1 => 0xff,
                2 => 0,
                _ => rng.next() as u8,
            };
        }
        if rng.below(4) == 0 {
            b.truncate(rng.below(b.len() + 1));
        }
        // Mostly in memory (the same parser, and fast); every 16th through a real file and map.
        let through_file = iter % 16 == 0;
        if through_file {
            std::fs::write(&path, &b).unwrap();
        }
        let result = std::panic::catch_unwind(|| {
            let f = if through_file {
                GgufFile::open(&path)
            } else {
                GgufFile::from_bytes(b.clone())
            };
            f.map(|f| {
                let total: usize = f.tensors().map(|t| t.data.len()).sum();
                let keys = f.metadata().len();
                (total, keys)
            })
        });
        match result {
            Err(_) => panic!("open panicked on corrupt bytes {b:02x?}"),
            Ok(Ok((total, _))) => {
                assert!(total <= b.len());
                opened += 1;
            }
            Ok(Err(_)) => {}
        }
    }
    // Some mutations only touch tensor data or padding, and those files stay valid.
    assert!(opened > 0);
}
