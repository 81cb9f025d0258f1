//! The GGUF writer and reader through the public API, and the reader on a real model file.

mod common;

use qwen::gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};

/// A converter's view: declare everything, then stream tensors one at a time.
#[test]
fn streamed_file_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let shapes: Vec<(String, GgmlType, Vec<usize>)> = (0..3)
        .flat_map(|i| {
            [
                (
                    format!("blk.{i}.attn_q.weight"),
                    GgmlType::Q4_K,
                    vec![256, 4],
                ),
                (format!("blk.{i}.attn_q.bias"), GgmlType::F32, vec![5]),
            ]
        })
        .collect();
    let data = |i: usize, n: usize| vec![i as u8 + 1; n];

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "qwen2".into());
    w.add_metadata("qwen2.block_count", 3u32.into());
    w.add_metadata("tokenizer.ggml.tokens", vec!["<a>", "b", "ç"].into());
    for (name, ty, dims) in &shapes {
        w.add_tensor_info(name.as_str(), *ty, dims).unwrap();
    }
    let mut sink = w.begin(&path).unwrap();
    assert!(!path.exists(), "nothing at the target until finish");
    for (i, (name, ty, dims)) in shapes.iter().enumerate() {
        let n = ty.row_bytes(dims[0]).unwrap() * dims[1..].iter().product::<usize>();
        sink.write_tensor(name, &data(i, n)).unwrap();
    }
    sink.finish().unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(f.get_u32("qwen2.block_count").unwrap(), 3);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<a>", "b", "ç"]
    );
    let names: Vec<&str> = f.tensor_infos().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        shapes.iter().map(|s| s.0.as_str()).collect::<Vec<_>>()
    );
    for (i, (name, ty, dims)) in shapes.iter().enumerate() {
        let t = f.tensor(name).unwrap();
        assert_eq!((t.ty, t.dims), (*ty, dims.as_slice()));
        assert_eq!(t.data, data(i, t.data.len()).as_slice());
        assert_eq!(t.data.len(), t.row_bytes() * t.n_rows());
    }
    assert_eq!(
        f.get("qwen2.block_count"),
        Some(&MetadataValue::U32(3)),
        "stored with the type it was given"
    );
}

/// Qwen2.5-Coder 0.5B as quantized by llama.cpp: checks that a file made by others opens and
/// that its shapes come out in ggml order.
#[test]
fn real_qwen2_5_coder_0_5b() {
    let Some(path) = common::real_model(common::REAL_0_5B) else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(f.get_u32("qwen2.block_count").unwrap(), 24);
    assert_eq!(f.get_u32("qwen2.embedding_length").unwrap(), 896);
    let n_tensors = f.tensor_infos().len();
    assert!((280..=300).contains(&n_tensors), "{n_tensors} tensors");
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        151_936
    );
    assert_eq!(
        f.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        151_936
    );
    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [896, 151_936]);
    assert_eq!(embd.n_rows(), 151_936);
    assert_eq!(embd.data.len(), embd.row_bytes() * embd.n_rows());
    for i in 0..24 {
        assert!(
            f.tensor(&format!("blk.{i}.attn_q.bias")).is_some(),
            "block {i}"
        );
    }
    assert_eq!(f.data_offset() % f.alignment(), 0);
}
