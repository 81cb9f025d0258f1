//! Writer → reader round trips and the typed accessors.

use super::*;
use crate::error::Error;
use std::path::{Path, PathBuf};
use MetadataValue as V;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn kv(k: &str, v: impl Into<MetadataValue>) -> (String, MetadataValue) {
    (k.to_string(), v.into())
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn write(
    dir: &Path,
    meta: &[(String, MetadataValue)],
    tensors: &[(&str, GgmlType, &[usize], &[u8])],
) -> PathBuf {
    let path = dir.join("t.gguf");
    write_gguf(&path, meta, tensors).unwrap();
    path
}

fn every_value_type() -> Vec<(String, MetadataValue)> {
    vec![
        kv("u8", 200u8),
        kv("i8", -100i8),
        kv("u16", 60000u16),
        kv("i16", -30000i16),
        kv("u32", 4_000_000_000u32),
        kv("i32", -2_000_000_000i32),
        kv("f32", 1.5f32),
        kv("bool", true),
        kv("string", "héllo 世界"),
        kv("empty_string", ""),
        kv("u64", u64::MAX),
        kv("i64", i64::MIN),
        kv("f64", -0.125f64),
        kv("strings", vec!["a", "", "ü"]),
        kv("i32s", vec![1i32, -2, 3]),
        kv("empty", MetadataValue::Array(vec![])),
        kv(
            "nested",
            V::Array(vec![
                vec![1u8, 2].into(),
                V::Array(vec![]),
                V::Array(vec![vec!["deep"].into()]),
            ]),
        ),
        kv("bools", vec![true, false]),
        kv("f64s", vec![0.5f64, f64::MAX]),
    ]
}

#[test]
fn every_value_type_round_trips() {
    let dir = tmp();
    let meta = every_value_type();
    let path = write(dir.path(), &meta, &[]);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.metadata(), &meta[..]);
    assert_eq!(f.get("nested"), Some(&meta[16].1));
    assert!(f.tensor_infos().is_empty());
}

#[test]
fn tensors_round_trip_with_default_alignment() {
    let dir = tmp();
    let a = bytes(3 * 4, 1);
    let b = bytes(GgmlType::Q4_K.type_size() * 2, 2);
    let c = bytes(GgmlType::Q8_0.type_size() * 3, 3);
    let tensors: &[(&str, GgmlType, &[usize], &[u8])] = &[
        ("a", GgmlType::F32, &[3], &a),
        ("b", GgmlType::Q4_K, &[256, 2], &b),
        ("c", GgmlType::Q8_0, &[32, 1, 3], &c),
        ("empty", GgmlType::F16, &[0, 5], &[]),
    ];
    let path = write(dir.path(), &[kv("general.architecture", "qwen2")], tensors);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.tensor_infos().len(), 4);
    for &(name, ty, dims, data) in tensors {
        let t = f.tensor(name).unwrap();
        assert_eq!((t.name, t.ty, t.dims, t.data), (name, ty, dims, data));
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.offset % 32, 0);
        assert_eq!(info.n_bytes(), data.len());
        assert_eq!(info.n_elements(), dims.iter().product::<usize>());
    }
    let b = f.tensor("b").unwrap();
    assert_eq!((b.row_len(), b.n_rows(), b.row_bytes()), (256, 2, 144));
    assert_eq!(f.tensor("c").unwrap().n_rows(), 3);
    assert!(f.tensor("missing").is_none());
    assert_eq!(
        f.tensors().map(|t| t.name).collect::<Vec<_>>(),
        ["a", "b", "c", "empty"]
    );
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = tmp();
    let a = bytes(40, 1);
    let b = bytes(8, 2);
    let meta = [kv(KEY_ALIGNMENT, 64u32)];
    let path = write(
        dir.path(),
        &meta,
        &[
            ("a", GgmlType::F32, &[10], &a),
            ("b", GgmlType::F16, &[4], &b),
        ],
    );
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor_info("b").unwrap().offset, 64);
    assert_eq!(f.tensor("b").unwrap().data, &b[..]);
    assert_eq!(f.file_size() % 64, 0, "the last tensor is padded too");
}

#[test]
fn tensor_views_point_into_the_map() {
    let dir = tmp();
    let a = bytes(64, 9);
    let path = write(dir.path(), &[], &[("a", GgmlType::F32, &[4, 4], &a)]);
    let f = GgufFile::open(&path).unwrap();
    let map = f.as_bytes().as_ptr_range();
    let data = f.tensor("a").unwrap().data.as_ptr_range();
    assert!(map.start <= data.start && data.end <= map.end);
    assert_eq!(data.start as usize - map.start as usize, f.data_offset());
}

#[test]
fn version_2_is_read() {
    let dir = tmp();
    let path = write(dir.path(), &[kv("x", 1u32)], &[]);
    let mut raw = std::fs::read(&path).unwrap();
    raw[4] = 2;
    let f = GgufFile::from_bytes(raw).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.get_u32("x").unwrap(), 1);
}

#[test]
fn typed_getters_convert_and_name_the_key() {
    let dir = tmp();
    let meta = [
        kv("n", 24u32),
        kv("big", u64::MAX),
        kv("neg", -1i32),
        kv("eps", 1e-6f32),
        kv("name", "qwen2"),
        kv("flag", false),
        kv("tokens", vec!["a", "b"]),
        kv("types", vec![1i32, 3]),
        kv("mixed_u8", vec![1u8, 2]),
    ];
    let path = write(dir.path(), &meta, &[]);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_u32("n").unwrap(), 24);
    assert_eq!(f.get_u64("n").unwrap(), 24);
    assert_eq!(f.get_f32("n").unwrap(), 24.0);
    assert_eq!(f.get_f32("eps").unwrap(), 1e-6);
    assert_eq!(f.get_str("name").unwrap(), "qwen2");
    assert!(!f.get_bool("flag").unwrap());
    assert_eq!(f.get_str_array("tokens").unwrap(), ["a", "b"]);
    assert_eq!(f.get_i32_array("types").unwrap(), [1, 3]);
    assert_eq!(f.get_i32_array("mixed_u8").unwrap(), [1, 2]);
    assert_eq!(f.get_opt_u32("absent").unwrap(), None);
    assert_eq!(f.get_opt_str("name").unwrap(), Some("qwen2"));
    assert_eq!(f.get_opt_bool("absent").unwrap(), None);
    assert_eq!(f.get_opt_f32("eps").unwrap(), Some(1e-6));

    let key_of = |e: Error| match e {
        Error::Metadata { key, msg } => format!("{key}: {msg}"),
        other => panic!("expected a metadata error, got {other}"),
    };
    assert_eq!(key_of(f.get_u32("absent").unwrap_err()), "absent: missing");
    assert!(key_of(f.get_u32("big").unwrap_err()).starts_with("big: expected"));
    assert!(key_of(f.get_u64("neg").unwrap_err()).starts_with("neg: expected"));
    assert!(key_of(f.get_str("n").unwrap_err()).contains("found u32 24"));
    assert!(key_of(f.get_opt_bool("name").unwrap_err()).starts_with("name:"));
    assert!(key_of(f.get_str_array("types").unwrap_err()).contains("element 0"));
    assert!(key_of(f.get_i32_array("name").unwrap_err()).contains("array"));
}

#[test]
fn later_metadata_replaces_earlier() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", 1u32.into());
    w.add_metadata("b", 2u32.into());
    w.add_metadata("a", "x".into());
    let dir = tmp();
    let path = dir.path().join("t.gguf");
    w.begin(&path).unwrap().finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.metadata(), &[kv("a", "x"), kv("b", 2u32)]);
}

#[test]
fn writer_rejects_bad_declarations() {
    let mut w = GgufWriter::new();
    w.add_tensor_info("t", GgmlType::F32, &[4]).unwrap();
    let dup = w.add_tensor_info("t", GgmlType::F32, &[4]).unwrap_err();
    assert!(dup.to_string().contains("duplicate"), "{dup}");
    let partial_block = w.add_tensor_info("q", GgmlType::Q4_0, &[33]).unwrap_err();
    assert!(
        partial_block.to_string().contains("block size"),
        "{partial_block}"
    );
    let five_dims = w.add_tensor_info("d", GgmlType::F32, &[1; 5]).unwrap_err();
    assert!(five_dims.to_string().contains("dimension"), "{five_dims}");
    let overflow = w
        .add_tensor_info("o", GgmlType::F32, &[1 << 40, 1 << 40])
        .unwrap_err();
    assert!(overflow.to_string().contains("overflow"), "{overflow}");
}

#[test]
fn writer_rejects_unencodable_metadata() {
    let dir = tmp();
    let path = dir.path().join("t.gguf");
    let mut w = GgufWriter::new();
    w.add_metadata("mixed", V::Array(vec![V::U8(1), V::I8(1)]));
    let e = w.begin(&path).err().unwrap();
    assert!(e.to_string().contains("mixed"), "{e}");

    let mut deep = V::Array(vec![]);
    for _ in 0..MAX_ARRAY_DEPTH {
        deep = V::Array(vec![deep]);
    }
    let mut w = GgufWriter::new();
    w.add_metadata("deep", deep);
    assert!(w.begin(&path).is_err());

    let mut w = GgufWriter::new();
    w.add_metadata(KEY_ALIGNMENT, 48u32.into());
    assert!(w
        .begin(&path)
        .err()
        .unwrap()
        .to_string()
        .contains("power of two"));
    assert!(!path.exists());
}

#[test]
fn deepest_allowed_nesting_round_trips() {
    let mut deep = V::Array(vec![1u8.into()]);
    for _ in 1..MAX_ARRAY_DEPTH {
        deep = V::Array(vec![deep]);
    }
    let dir = tmp();
    let path = write(dir.path(), &[kv("deep", deep.clone())], &[]);
    assert_eq!(GgufFile::open(&path).unwrap().get("deep"), Some(&deep));
}

#[test]
fn sink_enforces_order_size_and_completeness() {
    let dir = tmp();
    let path = dir.path().join("t.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor_info("a", GgmlType::F32, &[2]).unwrap();
    w.add_tensor_info("b", GgmlType::F32, &[2]).unwrap();
    let mut sink = w.begin(&path).unwrap();
    assert!(sink
        .write_tensor("b", &[0; 8])
        .unwrap_err()
        .to_string()
        .contains("order"));
    assert!(sink
        .write_tensor("a", &[0; 7])
        .unwrap_err()
        .to_string()
        .contains("needs 8"));
    sink.write_tensor("a", &[0; 8]).unwrap();
    let e = sink.finish().unwrap_err();
    assert!(e.to_string().contains("never written"), "{e}");
    // Nothing at the target, and the temporary file is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_failed_rewrite_keeps_the_old_file() {
    let dir = tmp();
    let path = write(dir.path(), &[kv("v", 1u32)], &[]);
    let mut w = GgufWriter::new();
    w.add_metadata("v", 2u32.into());
    w.add_tensor_info("a", GgmlType::F32, &[1]).unwrap();
    drop(w.begin(&path).unwrap()); // abandoned mid-way
    assert_eq!(GgufFile::open(&path).unwrap().get_u32("v").unwrap(), 1);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_vocabulary_sized_array_parses() {
    let tokens: Vec<String> = (0..151_936).map(|i| format!("tok{i}")).collect();
    let dir = tmp();
    let path = write(
        dir.path(),
        &[kv("tokenizer.ggml.tokens", tokens.clone())],
        &[],
    );
    let f = GgufFile::open(&path).unwrap();
    let read = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(read.len(), tokens.len());
    assert_eq!(read[151_935], "tok151935");
}

/// Large arrays are kept encoded at open and decoded on use: every accessor must give what the
/// writer was given. Strings mix short runs, strings of 128 bytes and more (which end a run of
/// one-check UTF-8 validation), multi-byte characters and empty strings.
#[test]
fn large_arrays_decode_on_use() {
    let dir = tmp();
    let strs: Vec<String> = (0..1000)
        .map(|i| match i % 7 {
            0 => String::new(),
            1 => "Ġ".repeat(64 + i % 5), // 128+ bytes
            2 => format!("中{i}é"),
            3 => "x".repeat(127),
            _ => format!("tok{i}"),
        })
        .collect();
    let ints: Vec<i32> = (0..700).map(|i| i * 3 - 1000).collect();
    let meta = vec![
        kv(
            "strs",
            V::Array(strs.iter().map(|s| V::from(s.as_str())).collect()),
        ),
        kv("ints", V::Array(ints.iter().map(|&v| V::from(v)).collect())),
        kv(
            "u8s",
            V::Array((0..300u32).map(|v| V::from(v as u8)).collect()),
        ),
        kv(
            "bools",
            V::Array((0..300).map(|v| V::Bool(v % 3 == 0)).collect()),
        ),
        kv(
            "big_u64",
            V::Array((0..300u64).map(|v| V::from(v << 62)).collect()),
        ),
        kv("small", V::Array(vec![V::from(1i32), V::from(2i32)])),
    ];
    let path = write(dir.path(), &meta, &[]);
    let f = GgufFile::open(&path).unwrap();
    assert!(f.contains_key("strs") && !f.contains_key("nope"));
    assert_eq!(f.get_str_array("strs").unwrap(), strs);
    assert_eq!(f.get_i32_array("ints").unwrap(), ints);
    assert_eq!(
        f.get_i32_array("u8s").unwrap(),
        (0..300).map(|v| v as u8 as i32).collect::<Vec<_>>()
    );
    // u64 values beyond i32 take the general path and its error.
    let err = f.get_i32_array("big_u64").unwrap_err().to_string();
    assert!(
        err.contains("element 1:") && err.contains("big_u64"),
        "{err}"
    );
    assert!(f
        .get_str_array("ints")
        .unwrap_err()
        .to_string()
        .contains("element 0"));
    assert_eq!(f.get("bools"), Some(&meta[3].1));
    assert_eq!(f.metadata(), &meta[..]);
}

/// A bad string in a large array is found at open, inside a run of short strings or in a long
/// one, with the offset the one-by-one check reports; a bad bool byte too.
#[test]
fn large_arrays_are_validated_at_open() {
    let dir = tmp();
    for (bad, i) in [("short", 200usize), ("long", 201)] {
        let strs: Vec<String> = (0..400)
            .map(|j| match (j, bad) {
                (201, _) => format!("@{}", "L".repeat(150)),
                (200, _) => "@abc".to_string(),
                _ => format!("t{j}"),
            })
            .collect();
        let meta = vec![kv(
            "strs",
            V::Array(strs.iter().map(|s| V::from(s.as_str())).collect()),
        )];
        let path = write(dir.path(), &meta, &[]);
        let mut raw = std::fs::read(&path).unwrap();
        // The '@' that starts string i becomes 0xFF, which UTF-8 never contains.
        let marks: Vec<usize> = raw
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'@')
            .map(|(k, _)| k)
            .collect();
        let at = marks[i - 200];
        raw[at] = 0xFF;
        std::fs::write(&path, &raw).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        let want = format!("at offset {} is not valid UTF-8", at - 8);
        assert!(err.contains(&want) && err.contains("strs"), "{bad}: {err}");
    }
    let meta = vec![kv(
        "bools",
        V::Array((0..300).map(|v| V::Bool(v % 2 == 0)).collect()),
    )];
    let path = write(dir.path(), &meta, &[]);
    let mut raw = std::fs::read(&path).unwrap();
    let at = raw.len() - 1 - 50;
    assert!(raw[at] <= 1);
    raw[at] = 7;
    std::fs::write(&path, &raw).unwrap();
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("invalid bool byte 7"), "{err}");
}
