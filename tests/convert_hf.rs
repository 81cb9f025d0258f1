//! qwen-convert on the tiny Hugging Face checkpoints: every tensor survives F32/F16/BF16
//! conversion exactly (up to the output type's rounding), the metadata is what the loader and
//! llama.cpp read, the embedded tokenizer equals `qwen.tiktoken`, and sharded BF16 checkpoints
//! (how real Qwen-1 ships) convert bit for bit.

mod common;

use half::{bf16, f16};
use qwen::convert::{convert, generation_keys, ConvertOptions, OutType};
use qwen::gguf::{GgmlType, GgufFile, MetadataValue};
use qwen::model::Model;
use qwen::quant::dequantize_row;
use qwen::tokenizer::{EncodeMode, Tokenizer};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

/// HF name → GGUF name for the tiny models (the converter's table, restated independently).
fn gguf_name(hf: &str) -> String {
    let simple = [
        ("transformer.wte.weight", "token_embd.weight"),
        ("transformer.ln_f.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
    ];
    if let Some((_, g)) = simple.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let per_layer = [
        ("ln_1.weight", "attn_norm.weight"),
        ("ln_2.weight", "ffn_norm.weight"),
        ("attn.c_attn.weight", "attn_qkv.weight"),
        ("attn.c_attn.bias", "attn_qkv.bias"),
        ("attn.c_proj.weight", "attn_output.weight"),
        ("mlp.w1.weight", "ffn_up.weight"),
        ("mlp.w2.weight", "ffn_gate.weight"),
        ("mlp.c_proj.weight", "ffn_down.weight"),
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.q_proj.bias", "attn_q.bias"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.k_proj.bias", "attn_k.bias"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.v_proj.bias", "attn_v.bias"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ];
    let rest = hf
        .strip_prefix("transformer.h.")
        .or_else(|| hf.strip_prefix("model.layers."))
        .unwrap_or_else(|| panic!("unexpected tensor {hf}"));
    let (layer, local) = rest.split_once('.').unwrap();
    let (_, g) = per_layer.iter().find(|(h, _)| *h == local).unwrap();
    format!("blk.{layer}.{g}")
}

fn to_f32(t: &TensorView) -> Vec<f32> {
    let d = t.data();
    match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => panic!("dtype {other:?}"),
    }
}

fn dequant(f: &GgufFile, name: &str) -> (GgmlType, Vec<usize>, Vec<f32>) {
    let t = f
        .tensor(name)
        .unwrap_or_else(|| panic!("{name} missing from the GGUF"));
    let n: usize = t.dims.iter().product();
    let mut out = vec![0f32; n];
    dequantize_row(t.ty, t.data, &mut out).unwrap();
    (t.ty, t.dims.to_vec(), out)
}

/// Expected value after rounding to the output type.
fn round_to(ty: GgmlType, x: f32) -> f32 {
    match ty {
        GgmlType::F32 => x,
        GgmlType::F16 => f16::from_f32(x).to_f32(),
        GgmlType::BF16 => bf16::from_f32(x).to_f32(),
        _ => unreachable!(),
    }
}

/// Every checkpoint tensor is in the GGUF, with reversed dims, and equal after rounding;
/// vectors stay F32; nothing else is in the file.
fn check_tensors(src: &Path, gguf: &GgufFile, ty: GgmlType) {
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut seen = 0;
    for (hf, view) in st.tensors() {
        let name = gguf_name(&hf);
        let (got_ty, dims, got) = dequant(gguf, &name);
        let want_dims: Vec<usize> = view.shape().iter().rev().copied().collect();
        assert_eq!(dims, want_dims, "{name} dims");
        let want_ty = if view.shape().len() == 1 {
            GgmlType::F32
        } else {
            ty
        };
        assert_eq!(got_ty, want_ty, "{name} type");
        let want = to_f32(&view);
        let bad = want
            .iter()
            .zip(&got)
            .position(|(w, g)| round_to(want_ty, *w).to_bits() != g.to_bits());
        assert!(bad.is_none(), "{name}: element {bad:?} differs");
        seen += 1;
    }
    assert_eq!(
        gguf.tensor_infos().len(),
        seen,
        "the GGUF has tensors the checkpoint lacks"
    );
}

fn meta_u64(f: &GgufFile, key: &str) -> u64 {
    f.get(key)
        .and_then(MetadataValue::as_u64)
        .unwrap_or_else(|| panic!("{key}"))
}

fn meta_f32(f: &GgufFile, key: &str) -> f32 {
    match f.get(key) {
        Some(MetadataValue::F32(x)) => *x,
        other => panic!("{key}: {other:?}"),
    }
}

fn meta_bool(f: &GgufFile, key: &str) -> bool {
    f.get(key)
        .and_then(MetadataValue::as_bool)
        .unwrap_or_else(|| panic!("{key}"))
}

/// The tokenizer keys: one token per embedding row, specials typed control, pads unused,
/// merges for llama.cpp, and the same encoding as the `qwen.tiktoken` it came from.
fn check_vocab(f: &GgufFile, tiktoken: &Path) {
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "qwen2");
    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    let types = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(tokens.len(), 151936);
    assert_eq!(types.len(), 151936);
    assert_eq!(tokens[220], "Ġ");
    assert_eq!(tokens[198], "Ċ");
    assert_eq!(tokens[151643], "<|endoftext|>");
    assert_eq!(tokens[151644], "<|im_start|>");
    assert_eq!(tokens[151645], "<|im_end|>");
    assert_eq!(tokens[151850], "<|extra_204|>");
    assert_eq!(tokens[151851], "[PAD151851]");
    assert_eq!(
        (
            types[0],
            types[151642],
            types[151643],
            types[151850],
            types[151851]
        ),
        (1, 1, 3, 3, 5)
    );
    let merges = f.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 151643 - 256, "one merge per multi-byte rank");
    assert!(merges.iter().all(|m| m.split(' ').count() == 2));
    assert_eq!(
        merges[0], "Ġ Ġ",
        "rank 256 of cl100k-style vocabularies is two spaces"
    );
    for key in ["bos", "eos", "padding"] {
        assert_eq!(
            meta_u64(f, &format!("tokenizer.ggml.{key}_token_id")),
            151643,
            "{key}"
        );
    }
    assert!(f
        .get_str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));

    let from_gguf = Tokenizer::from_gguf_vocab(&tokens, &types).unwrap();
    let reference = Tokenizer::from_tiktoken_file(tiktoken).unwrap();
    for text in [
        "Hello, world! 123",
        "你好，世界。\n\tdef f(x):\n        return x",
        "<|im_start|>user 🙂",
    ] {
        for mode in [EncodeMode::Text, EncodeMode::Trusted] {
            assert_eq!(
                from_gguf.encode(text, mode),
                reference.encode(text, mode),
                "{text:?}"
            );
        }
    }
}

#[test]
fn qwen1_tiny_f32() {
    let Some(src) = common::model_dir("qwen1-tiny") else {
        return;
    };
    let path = common::tiny_gguf("qwen1-tiny", "f32").unwrap();
    let f = GgufFile::open(&path).unwrap();
    check_tensors(&src, &f, GgmlType::F32);
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen");
    assert_eq!(meta_u64(&f, "general.file_type"), 0);
    assert_eq!(meta_u64(&f, "qwen.context_length"), 32768);
    assert_eq!(meta_u64(&f, "qwen.embedding_length"), 64);
    assert_eq!(meta_u64(&f, "qwen.block_count"), 2);
    assert_eq!(
        meta_u64(&f, "qwen.feed_forward_length"),
        256,
        "llama.cpp convention: HF intermediate_size"
    );
    assert_eq!(meta_u64(&f, "qwen.attention.head_count"), 4);
    assert_eq!(meta_u64(&f, "qwen.rope.dimension_count"), 16);
    assert_eq!(meta_f32(&f, "qwen.rope.freq_base"), 10000.0);
    assert_eq!(meta_f32(&f, "qwen.attention.layer_norm_rms_epsilon"), 1e-6);
    assert_eq!(meta_u64(&f, "qwen.seq_length"), 64);
    assert!(meta_bool(&f, "qwen.rope.use_dynamic_ntk"));
    assert!(meta_bool(&f, "qwen.attention.use_logn"));
    assert!(f.get("qwen.attention.head_count_kv").is_none());
    // generation_config.json
    assert_eq!(f.get_str(generation_keys::CHAT_FORMAT).unwrap(), "chatml");
    assert_eq!(meta_u64(&f, generation_keys::MAX_WINDOW_SIZE), 6144);
    assert_eq!(meta_f32(&f, generation_keys::TOP_P), 0.8);
    assert_eq!(meta_u64(&f, generation_keys::TOP_K), 0);
    assert_eq!(meta_f32(&f, generation_keys::REPETITION_PENALTY), 1.1);
    assert!(meta_bool(&f, generation_keys::DO_SAMPLE));
    check_vocab(&f, &src.join("qwen.tiktoken"));

    let model = Model::load(&path).unwrap();
    assert_eq!(model.config.n_vocab, 151936);
    assert_eq!(model.config.seq_length, 64);
}

#[test]
fn qwen2_tiny_f32_with_tokenizer_flag() {
    let Some(src) = common::model_dir("qwen2-tiny") else {
        return;
    };
    let path = common::tiny_gguf("qwen2-tiny", "f32").unwrap();
    let f = GgufFile::open(&path).unwrap();
    check_tensors(&src, &f, GgmlType::F32);
    assert!(
        f.tensor("output.weight").is_none(),
        "tied: no separate LM head"
    );
    assert_eq!(f.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(meta_u64(&f, "qwen2.attention.head_count"), 4);
    assert_eq!(meta_u64(&f, "qwen2.attention.head_count_kv"), 2);
    assert_eq!(meta_u64(&f, "qwen2.feed_forward_length"), 128);
    assert_eq!(meta_f32(&f, "qwen2.rope.freq_base"), 1e6);
    assert_eq!(meta_u64(&f, "qwen2.context_length"), 32768);
    assert!(f.get("qwen.seq_length").is_none());
    assert_eq!(meta_u64(&f, generation_keys::MAX_NEW_TOKENS), 2048);
    check_vocab(&f, &src.join("../qwen1-tiny/qwen.tiktoken"));
    let model = Model::load(&path).unwrap();
    assert_eq!(model.config.n_head_kv, 2);
}

#[test]
fn f16_and_bf16_round_each_matrix() {
    for (name, ty) in [("qwen1-tiny", "f16"), ("qwen2-tiny", "bf16")] {
        let Some(src) = common::model_dir(name) else {
            return;
        };
        let path = common::tiny_gguf(name, ty).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let ty = GgmlType::from_name(ty).unwrap();
        check_tensors(&src, &f, ty);
        let file_type = if ty == GgmlType::F16 { 1 } else { 32 };
        assert_eq!(meta_u64(&f, "general.file_type"), file_type);
    }
}

/// (name, shape, little-endian bytes) of one tensor to write.
type Owned = (String, Vec<usize>, Vec<u8>);

/// Writes `models/qwen1-tiny` rounded to BF16 in two shards with an index, as the testdata
/// README describes `qwen1-tiny-bf16` (wte, layers and ln_f in shard 1; lm_head in shard 2).
fn write_bf16_shards(src: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "qwen.tiktoken",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut shards: [Vec<Owned>; 2] = Default::default();
    for (name, view) in st.tensors() {
        let data: Vec<u8> = to_f32(&view)
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect();
        let shard = usize::from(name == "lm_head.weight");
        shards[shard].push((name, view.shape().to_vec(), data));
    }
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, tensors) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, shape, data)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::BF16, shape.clone(), data).unwrap(),
                )
            })
            .collect();
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        safetensors::serialize_to_file(views, &Some(meta), &dir.join(&file)).unwrap();
        for (n, _, data) in tensors {
            weight_map.insert(n.clone(), file.clone().into());
            total += data.len();
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_bf16_checkpoint() {
    let Some(src) = common::model_dir("qwen1-tiny") else {
        return;
    };
    let dir = common::unique_path("qwen1-tiny-bf16", "d");
    write_bf16_shards(&src, &dir);
    for ty in ["bf16", "f32"] {
        let out = common::unique_path("qwen1-tiny-bf16", "gguf");
        let mut opts = ConvertOptions::new(&dir, &out);
        opts.out_type = OutType::parse(ty).unwrap();
        let report = convert(&opts, &mut |_| {}).unwrap();
        assert_eq!(report.tensors.len(), 19);
        let f = GgufFile::open(&out).unwrap();
        // BF16 → BF16 and BF16 → F32 are both exact: compare with the fp32 originals rounded.
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (hf, view) in st.tensors() {
            let (_, _, got) = dequant(&f, &gguf_name(&hf));
            let want: Vec<f32> = to_f32(&view)
                .iter()
                .map(|x| bf16::from_f32(*x).to_f32())
                .collect();
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{hf} ({ty})"
            );
        }
        if ty == "bf16" {
            let lm = f.tensor("output.weight").unwrap();
            assert_eq!(lm.ty, GgmlType::BF16);
        }
        std::fs::remove_file(&out).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dry_run_writes_nothing() {
    let Some(src) = common::model_dir("qwen1-tiny") else {
        return;
    };
    let out = common::unique_path("dry", "gguf");
    let mut opts = ConvertOptions::new(&src, &out);
    opts.dry_run = true;
    opts.out_type = OutType::parse("q8_0").unwrap();
    let report = convert(&opts, &mut |_| {}).unwrap();
    assert!(!out.exists());
    assert!(report.output.is_none());
    assert_eq!(report.arch, "qwen");
    assert_eq!(report.n_tokens, 151936);
    let embd = report
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    assert_eq!(embd.ty, GgmlType::Q8_0);
    assert_eq!(embd.dims, vec![64, 151936]);
    assert_eq!(embd.bytes, 151936 * 2 * 34);
}
