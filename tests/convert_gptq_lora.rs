//! GPTQ and LoRA fixtures (testdata `gptq_lora/`): GPTQ int4/int8 map onto Q4_0/Q8_0 bit for
//! bit and reproduce the reference dequantized weights exactly; converted models reproduce the
//! reference logits; LoRA adapters merge at scale 1 and 0.5.

mod common;

use qwen::convert::{convert, ConvertOptions, OutType};
use qwen::gguf::{GgmlType, GgufFile};
use qwen::model::Model;
use qwen::quant::dequantize_row;
use qwen::sampler::{Sampler, SamplingParams};
use qwen::session::{Session, SessionParams};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The fp32 runtime tolerance the fixtures' README suggests for exactly dequantized weights.
const TOL: f32 = 1e-4;

fn goldens() -> Option<(PathBuf, Value)> {
    let dir = common::testdata()?.join("gptq_lora");
    let v = serde_json::from_slice(&std::fs::read(dir.join("gptq_lora_goldens.json")).unwrap())
        .unwrap();
    Some((dir, v))
}

fn read_npy(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn convert_to(src: &Path, ty: &str, lora: Option<(&Path, f64)>) -> PathBuf {
    let out = common::unique_path(src.file_name().unwrap().to_str().unwrap(), "gguf");
    let mut opts = ConvertOptions::new(src, &out);
    opts.out_type = OutType::parse(ty).unwrap();
    if let Some((dir, scale)) = lora {
        opts.lora = Some(dir.to_path_buf());
        opts.lora_scale = scale;
    }
    convert(&opts, &mut |_| {}).unwrap();
    out
}

/// Last-position logits of every golden prompt against `npy` rows; max-abs difference.
fn logits_diff(gguf: &Path, goldens: &Value, npy: &Path) -> f32 {
    let model = Arc::new(Model::load(gguf).unwrap());
    let v = model.config.n_vocab;
    let want = read_npy(npy);
    let mut worst = 0f32;
    for (row, p) in goldens["prompts"].as_array().unwrap().iter().enumerate() {
        let params = SessionParams {
            n_ctx: 128,
            n_threads: 2,
            max_batch: 64,
        };
        let mut s = Session::new(Arc::clone(&model), &params).unwrap();
        let got = s.eval(&ids(&p["input_ids"])).unwrap();
        let w = &want[row * v..(row + 1) * v];
        worst = worst.max(
            got.iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max),
        );
    }
    worst
}

fn greedy(gguf: &Path, goldens: &Value) -> Vec<u32> {
    let model = Arc::new(Model::load(gguf).unwrap());
    let name = goldens["greedy_prompt"].as_str().unwrap();
    let p = goldens["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap();
    let params = SessionParams {
        n_ctx: 128,
        n_threads: 2,
        max_batch: 64,
    };
    let mut s = Session::new(model, &params).unwrap();
    s.eval(&ids(&p["input_ids"])).unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    s.generate(
        &mut sampler,
        goldens["n_greedy"].as_u64().unwrap() as usize,
        &[],
        |_| true,
    )
    .unwrap()
    .0
}

fn gguf_layer_name(hf: &str) -> String {
    let rest = hf.strip_prefix("transformer.h.").unwrap();
    let (layer, local) = rest.split_once('.').unwrap();
    let g = match local {
        "attn.c_attn.weight" => "attn_qkv.weight",
        "attn.c_proj.weight" => "attn_output.weight",
        "mlp.w1.weight" => "ffn_up.weight",
        "mlp.w2.weight" => "ffn_gate.weight",
        "mlp.c_proj.weight" => "ffn_down.weight",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{g}")
}

/// Every GPTQ layer in the GGUF dequantizes to the reference matrix bit for bit.
fn check_dequantized_reference(gguf: &Path, reference: &Path, want_ty: GgmlType) {
    let f = GgufFile::open(gguf).unwrap();
    let bytes = std::fs::read(reference).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 10);
    for (name, view) in st.tensors() {
        let t = f.tensor(&gguf_layer_name(&name)).unwrap();
        assert_eq!(t.ty, want_ty, "{name}");
        let want: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut got = vec![0f32; want.len()];
        dequantize_row(t.ty, t.data, &mut got).unwrap();
        let bad = want
            .iter()
            .zip(&got)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(
            bad.is_none(),
            "{name}: element {bad:?} differs from the reference"
        );
    }
}

#[test]
fn gptq_maps_exactly_and_reproduces_the_reference() {
    let Some((dir, g)) = goldens() else { return };
    let models = dir.join("../models");
    for variant in g["gptq"].as_array().unwrap() {
        let name = variant["name"].as_str().unwrap();
        let src = models.join(name);
        if !src.exists() {
            eprintln!("SKIP {name}: not shipped");
            continue;
        }
        let bits = variant["bits"].as_u64().unwrap();
        let native = if bits == 4 {
            GgmlType::Q4_0
        } else {
            GgmlType::Q8_0
        };
        let reference = dir.join(
            variant["dequantized_reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("goldens/"),
        );
        let npy = dir.join(
            variant["npy"]
                .as_str()
                .unwrap()
                .trim_start_matches("goldens/"),
        );

        // Default conversion: the GPTQ codes become Q4_0 / Q8_0 blocks, bit for bit.
        let mut opts = ConvertOptions::new(&src, common::unique_path(name, "gguf"));
        opts.dry_run = true;
        let report = convert(&opts, &mut |_| {}).unwrap();
        assert!(
            report.info.iter().any(|l| l.contains("bit for bit")),
            "{:?}",
            report.info
        );
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let quantized = convert_to(&src, "f16", None);
        check_dequantized_reference(&quantized, &reference, native);
        // The runtime quantizes activations to Q8 for these matrices: close, not 1e-4.
        let diff = logits_diff(&quantized, &g, &npy);
        eprintln!("{name} as {native}: max |Δlogit| vs reference {diff:.2e}");
        assert!(diff < 0.15, "{name} {native}: {diff}");

        // --type f32 dequantizes exactly: the fp32 tolerance and identical greedy ids.
        let exact = convert_to(&src, "f32", None);
        check_dequantized_reference(&exact, &reference, GgmlType::F32);
        let diff = logits_diff(&exact, &g, &npy);
        eprintln!("{name} as F32: max |Δlogit| vs reference {diff:.2e}");
        assert!(diff < TOL, "{name} f32: {diff}");
        assert_eq!(
            greedy(&exact, &g),
            ids(&variant["greedy"]["new_token_ids"]),
            "{name} greedy"
        );
        for p in [quantized, exact] {
            std::fs::remove_file(p).unwrap();
        }
    }
}

#[test]
fn lora_merges_at_scale_1_and_half() {
    let Some((dir, g)) = goldens() else { return };
    let models = dir.join("../models");
    let adapter = models.join("qwen1-tiny-lora");
    for variant in g["lora"]["variants"].as_array().unwrap() {
        let scale = variant["scale"].as_f64().unwrap();
        let out = convert_to(&models.join("qwen1-tiny"), "f32", Some((&adapter, scale)));
        let npy = dir.join(
            variant["npy"]
                .as_str()
                .unwrap()
                .trim_start_matches("goldens/"),
        );
        let diff = logits_diff(&out, &g, &npy);
        eprintln!("LoRA scale {scale}: max |Δlogit| vs reference {diff:.2e}");
        assert!(diff < TOL, "scale {scale}: {diff}");
        assert_eq!(
            greedy(&out, &g),
            ids(&variant["greedy"]["new_token_ids"]),
            "scale {scale} greedy"
        );
        std::fs::remove_file(out).unwrap();
    }
}

/// LoRA on top of a quantized output: merged first, then quantized (Q8_0 error only).
#[test]
fn lora_then_quantize() {
    let Some((dir, g)) = goldens() else { return };
    let models = dir.join("../models");
    let out = convert_to(
        &models.join("qwen1-tiny"),
        "q8_0",
        Some((&models.join("qwen1-tiny-lora"), 1.0)),
    );
    let diff = logits_diff(
        &out,
        &g,
        &dir.join("qwen1-tiny-lora/last_logits_scale1.npy"),
    );
    eprintln!("LoRA scale 1 as Q8_0: max |Δlogit| vs reference {diff:.2e}");
    assert!(diff < 0.3, "{diff}");
    std::fs::remove_file(out).unwrap();
}

/// Copies the int4-g32 checkpoint with some tensors' bytes replaced.
fn patched_gptq(src: &Path, patch: impl Fn(&str, &[u8]) -> Option<Vec<u8>>) -> PathBuf {
    let dir = common::unique_path("gptq-patched", "d");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "quantize_config.json", "qwen.tiktoken"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st.tensors();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(n, v)| patch(n, v.data()).unwrap_or_else(|| v.data().to_vec()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|((n, v), d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(v.dtype(), v.shape().to_vec(), d).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, &None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Layouts that cannot map exactly (asymmetric zeros, act-order g_idx) are dequantized exactly
/// and re-quantized, with a warning: never silently wrong.
#[test]
fn inexact_gptq_is_requantized_with_a_warning() {
    let Some((dir, _)) = goldens() else { return };
    let src = dir.join("../models/qwen1-tiny-gptq-int4-g32");
    let reference_bytes =
        std::fs::read(dir.join("qwen1-tiny-gptq-int4-g32/dequantized_reference.safetensors"))
            .unwrap();
    let reference = SafeTensors::deserialize(&reference_bytes).unwrap();
    let ckpt_bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let ckpt = SafeTensors::deserialize(&ckpt_bytes).unwrap();
    let scales = |layer: &str| -> Vec<f32> {
        let t = ckpt.tensor(&format!("{layer}.scales")).unwrap();
        t.data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()
    };
    let asym = "transformer.h.0.mlp.w1";
    let reordered = "transformer.h.1.attn.c_proj";
    let patched = patched_gptq(&src, |name, data| {
        if name == format!("{asym}.qzeros") {
            // Stored zero 6 → zero point 7 instead of the symmetric 8.
            return Some(data.iter().map(|_| 0x66).collect());
        }
        if name == format!("{reordered}.g_idx") {
            // Act-order style: input k belongs to group k % 2.
            return Some((0..64i32).flat_map(|k| (k % 2).to_le_bytes()).collect());
        }
        None
    });

    let mut opts = ConvertOptions::new(&patched, common::unique_path("unused", "gguf"));
    opts.dry_run = true;
    let report = convert(&opts, &mut |_| {}).unwrap();
    let note = |n: &str| {
        report
            .tensors
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .note
            .clone()
            .unwrap()
    };
    assert!(
        note("blk.0.ffn_up.weight").contains("re-quantized to Q4_0: zero points"),
        "{}",
        note("blk.0.ffn_up.weight")
    );
    assert!(note("blk.1.attn_output.weight").contains("act-order"));
    assert!(note("blk.0.attn_qkv.weight").contains("exactly"));
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);

    // Exact dequantization shows the codes were read with the right zero and groups.
    let out = convert_to(&patched, "f32", None);
    let f = GgufFile::open(&out).unwrap();
    let got = |n: &str| {
        let t = f.tensor(n).unwrap();
        f32s(t.data)
    };
    let want_plain =
        |layer: &str| f32s(reference.tensor(&format!("{layer}.weight")).unwrap().data());
    // Zero 7: w = s·(q − 7) = reference + s.
    let (s, r, g) = (scales(asym), want_plain(asym), got("blk.0.ffn_up.weight"));
    for o in 0..128 {
        for k in 0..64 {
            assert_eq!(
                g[o * 64 + k],
                r[o * 64 + k] + s[(k / 32) * 128 + o],
                "asym [{o}, {k}]"
            );
        }
    }
    // Group k % 2: w = s[k % 2]·(q − 8) = reference / s[k / 32] · s[k % 2].
    let (s, r, g) = (
        scales(reordered),
        want_plain(reordered),
        got("blk.1.attn_output.weight"),
    );
    for o in 0..64 {
        for k in 0..64 {
            let q = r[o * 64 + k] / s[(k / 32) * 64 + o];
            assert_eq!(g[o * 64 + k], q * s[(k % 2) * 64 + o], "g_idx [{o}, {k}]");
        }
    }
    std::fs::remove_file(out).unwrap();
    std::fs::remove_dir_all(patched).unwrap();
}
