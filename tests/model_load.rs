//! Loading and running small synthetic `qwen2` models written with the GGUF writer: the forward
//! pass is consistent with itself (chunked prefill, cached decode, quantized weights), and files
//! with the wrong tensors or metadata for their architecture give clear errors.

use qwen::gguf::{write_gguf, GgmlType, MetadataValue};
use qwen::model::Model;
use qwen::session::{Session, SessionParams};
use std::path::PathBuf;
use std::sync::Arc;

const D: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FF: usize = 128;
const VOCAB: usize = 320;
const LAYERS: usize = 2;

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

/// One tensor of the synthetic model: name, dims (ggml order) and f32 values.
struct T {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

fn tensors() -> Vec<T> {
    let mut r = Rng(0x9E3779B97F4A7C15);
    let kv = KV_HEADS * D / HEADS;
    let mut out = Vec::new();
    let mut add = |name: String, dims: Vec<usize>, scale: f32, offset: f32, r: &mut Rng| {
        let n = dims.iter().product();
        let data = r.vec(n, scale).into_iter().map(|v| v + offset).collect();
        out.push(T { name, dims, data });
    };
    add("token_embd.weight".into(), vec![D, VOCAB], 1.0, 0.0, &mut r);
    for i in 0..LAYERS {
        let s = 1.0 / (D as f32).sqrt();
        add(
            format!("blk.{i}.attn_norm.weight"),
            vec![D],
            0.2,
            1.0,
            &mut r,
        );
        add(
            format!("blk.{i}.attn_q.weight"),
            vec![D, D],
            3.0 * s,
            0.0,
            &mut r,
        );
        add(format!("blk.{i}.attn_q.bias"), vec![D], 0.2, 0.0, &mut r);
        add(
            format!("blk.{i}.attn_k.weight"),
            vec![D, kv],
            3.0 * s,
            0.0,
            &mut r,
        );
        add(format!("blk.{i}.attn_k.bias"), vec![kv], 0.2, 0.0, &mut r);
        add(
            format!("blk.{i}.attn_v.weight"),
            vec![D, kv],
            s,
            0.0,
            &mut r,
        );
        add(format!("blk.{i}.attn_v.bias"), vec![kv], 0.2, 0.0, &mut r);
        add(
            format!("blk.{i}.attn_output.weight"),
            vec![D, D],
            s,
            0.0,
            &mut r,
        );
        add(
            format!("blk.{i}.ffn_norm.weight"),
            vec![D],
            0.2,
            1.0,
            &mut r,
        );
        add(
            format!("blk.{i}.ffn_gate.weight"),
            vec![D, FF],
            s,
            0.0,
            &mut r,
        );
        add(
            format!("blk.{i}.ffn_up.weight"),
            vec![D, FF],
            s,
            0.0,
            &mut r,
        );
        add(
            format!("blk.{i}.ffn_down.weight"),
            vec![FF, D],
            1.0 / (FF as f32).sqrt(),
            0.0,
            &mut r,
        );
    }
    add("output_norm.weight".into(), vec![D], 0.2, 1.0, &mut r);
    out
}

fn metadata(arch: &str) -> Vec<(String, MetadataValue)> {
    let k = |s: &str| format!("{arch}.{s}");
    vec![
        ("general.architecture".into(), arch.into()),
        (k("context_length"), 4096u32.into()),
        (k("embedding_length"), (D as u32).into()),
        (k("block_count"), (LAYERS as u32).into()),
        (k("feed_forward_length"), (FF as u32).into()),
        (k("attention.head_count"), (HEADS as u32).into()),
        (k("attention.head_count_kv"), (KV_HEADS as u32).into()),
        (k("rope.freq_base"), 10000f32.into()),
        (k("attention.layer_norm_rms_epsilon"), 1e-6f32.into()),
    ]
}

/// Writes the model; `matrix_type` applies to 2-D tensors (1-D stay F32).
fn write(
    name: &str,
    meta: &[(String, MetadataValue)],
    tensors: &[T],
    matrix_type: GgmlType,
) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("model_load");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    let encoded: Vec<(GgmlType, Vec<u8>)> = tensors
        .iter()
        .map(|t| {
            let ty = if t.dims.len() == 2 {
                matrix_type
            } else {
                GgmlType::F32
            };
            let mut bytes = vec![0u8; ty.row_bytes(t.dims[0]).unwrap() * t.data.len() / t.dims[0]];
            let rb = bytes.len() / (t.data.len() / t.dims[0]);
            for (row, out) in t.data.chunks(t.dims[0]).zip(bytes.chunks_mut(rb)) {
                qwen::quant::quantize_row(ty, row, out).unwrap();
            }
            (ty, bytes)
        })
        .collect();
    let list: Vec<(&str, GgmlType, &[usize], &[u8])> = tensors
        .iter()
        .zip(&encoded)
        .map(|(t, (ty, b))| (t.name.as_str(), *ty, t.dims.as_slice(), b.as_slice()))
        .collect();
    write_gguf(&path, meta, &list).unwrap();
    path
}

fn session(model: &Arc<Model>, max_batch: usize) -> Session {
    Session::new(
        Arc::clone(model),
        &SessionParams {
            n_ctx: 64,
            n_threads: 2,
            max_batch,
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const PROMPT: [u32; 11] = [5, 17, 300, 2, 2, 99, 150, 7, 8, 250, 1];

#[test]
fn chunked_prefill_and_cached_decode_agree_with_one_pass() {
    let model = Arc::new(
        Model::load(write(
            "ok_f32",
            &metadata("qwen2"),
            &tensors(),
            GgmlType::F32,
        ))
        .unwrap(),
    );
    assert!(model.tokenizer.is_none());
    let v = model.config.n_vocab;
    // Reference: every position's logits from one batch.
    let all = session(&model, 64).eval_all_logits(&PROMPT).unwrap();
    assert!(all.iter().all(|x| x.is_finite()));
    // Prefill in chunks of 3.
    let mut s = session(&model, 3);
    let last = s.eval(&PROMPT).unwrap().to_vec();
    assert!(max_abs_diff(&last, &all[(PROMPT.len() - 1) * v..]) < 1e-4);
    // One token at a time through the cache.
    let mut s = session(&model, 64);
    for (i, &t) in PROMPT.iter().enumerate() {
        let l = s.eval(&[t]).unwrap();
        let d = max_abs_diff(l, &all[i * v..(i + 1) * v]);
        assert!(d < 1e-4, "position {i}: {d}");
    }
}

#[test]
fn quantized_weights_stay_close_to_f32() {
    let ts = tensors();
    let f32_model =
        Arc::new(Model::load(write("ref_f32", &metadata("qwen2"), &ts, GgmlType::F32)).unwrap());
    let want = session(&f32_model, 64).eval(&PROMPT).unwrap().to_vec();
    let std = (want.iter().map(|x| x * x).sum::<f32>() / want.len() as f32).sqrt();
    // This model's sharp attention amplifies weight error (Q5_0 ~ 8x Q8_0, as 2^(8-5)); the
    // bounds catch a wrong block layout, which gives errors of the logits' own size.
    let mut errors = Vec::new();
    for (ty, bound) in [
        (GgmlType::F16, 0.01),
        (GgmlType::BF16, 0.05),
        (GgmlType::Q8_0, 0.06),
        (GgmlType::Q5_0, 0.4),
        (GgmlType::Q4_0, 0.8),
    ] {
        let m = Arc::new(
            Model::load(write(
                &format!("q_{}", ty.name()),
                &metadata("qwen2"),
                &ts,
                ty,
            ))
            .unwrap(),
        );
        let got = session(&m, 64).eval(&PROMPT).unwrap().to_vec();
        let d = max_abs_diff(&got, &want);
        eprintln!("{ty}: max |Δlogit| {d:.4} (logit rms {std:.3})");
        assert!(d < bound * std, "{ty}: {d} vs rms {std}");
        errors.push(d);
    }
    assert!(
        errors[2] < errors[3] && errors[3] < errors[4],
        "fewer bits, larger error: {errors:?}"
    );
}

fn load_err(name: &str, meta: &[(String, MetadataValue)], ts: &[T]) -> String {
    match Model::load(write(name, meta, ts, GgmlType::F32)) {
        Ok(_) => panic!("{name}: loaded a broken model"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn wrong_tensor_shape_names_the_tensor() {
    let mut ts = tensors();
    let q = ts
        .iter_mut()
        .find(|t| t.name == "blk.1.attn_q.weight")
        .unwrap();
    q.dims = vec![D, D / 2];
    q.data.truncate(D * D / 2);
    let e = load_err("bad_shape", &metadata("qwen2"), &ts);
    assert!(
        e.contains("blk.1.attn_q.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn missing_tensor_names_the_tensor() {
    let ts: Vec<T> = tensors()
        .into_iter()
        .filter(|t| t.name != "blk.0.ffn_down.weight")
        .collect();
    let e = load_err("missing_tensor", &metadata("qwen2"), &ts);
    assert!(
        e.contains("blk.0.ffn_down.weight") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_is_refused() {
    let e = load_err("llama", &metadata("llama"), &tensors());
    assert!(e.contains("architecture") && e.contains("llama"), "{e}");
}

#[test]
fn missing_hyperparameter_names_the_key() {
    let meta: Vec<_> = metadata("qwen2")
        .into_iter()
        .filter(|(k, _)| k != "qwen2.block_count")
        .collect();
    let e = load_err("no_blocks", &meta, &tensors());
    assert!(e.contains("qwen2.block_count"), "{e}");
}

#[test]
fn heads_that_do_not_divide_are_refused() {
    let mut meta = metadata("qwen2");
    meta.retain(|(k, _)| k != "qwen2.attention.head_count_kv");
    meta.push(("qwen2.attention.head_count_kv".into(), 3u32.into()));
    let e = load_err("bad_heads", &meta, &tensors());
    assert!(e.contains("head"), "{e}");
}

#[test]
fn bad_token_ids_and_oversized_prompts_are_errors() {
    let model = Arc::new(
        Model::load(write(
            "ok_f32_b",
            &metadata("qwen2"),
            &tensors(),
            GgmlType::F32,
        ))
        .unwrap(),
    );
    let mut s = session(&model, 8);
    let e = s.eval(&[1, VOCAB as u32]).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    assert!(
        s.tokens().is_empty(),
        "a rejected batch must not change the cache"
    );
    let long = vec![1u32; 65];
    let e = s.eval(&long).unwrap_err().to_string();
    assert!(e.contains("context"), "{e}");
    assert!(s.eval(&[]).is_err());
    // The session still works after the errors.
    assert!(s.eval(&[1, 2, 3]).is_ok());
}
