//! YaRN RoPE scaling for `qwen2`: the runtime's frequency and cos/sin tables against a float64
//! reference written here from the paper (arXiv:2309.00071) and Hugging Face's
//! `_compute_yarn_parameters`; the converter recording `rope_scaling`; end to end on the tiny
//! Qwen-2 model (YaRN changes the logits, the CLI override equals the file's metadata, and a file
//! without scaling metadata runs exactly as before); and clear errors for bad values.

mod common;

use qwen::backend::cpu::ops;
use qwen::convert::{convert, ConvertOptions, OutType};
use qwen::gguf::{write_gguf, GgmlType, GgufFile, MetadataValue};
use qwen::model::{Model, ModelConfig, RopeScaling, Yarn};
use qwen::session::{Session, SessionParams};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The reference: HF's `_compute_yarn_parameters` in float64, from its definition.
struct Reference {
    inv_freq: Vec<f64>,
    attention_factor: f64,
}

fn reference(head_dim: usize, base: f64, y: &Yarn) -> Reference {
    let dim = head_dim as f64;
    // find_correction_dim: the dimension whose wavelength turns `r` times over the original
    // context, dim * ln(L / (2 pi r)) / (2 ln base).
    let correction_dim =
        |r: f64| dim * (y.original_context as f64 / (r * 2.0 * PI)).ln() / (2.0 * base.ln());
    let low = correction_dim(y.beta_fast).floor().max(0.0);
    let mut high = correction_dim(y.beta_slow).ceil().min(dim - 1.0);
    if low == high {
        high += 0.001;
    }
    let inv_freq = (0..head_dim / 2)
        .map(|i| {
            let pos_freq = base.powf((2 * i) as f64 / dim);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (y.factor * pos_freq);
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_factor = (1.0 - ramp) * y.ext_factor;
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    let attention_factor = y.attn_factor.unwrap_or(if y.factor > 1.0 {
        0.1 * y.factor.ln() + 1.0
    } else {
        1.0
    });
    Reference {
        inv_freq,
        attention_factor,
    }
}

/// The tiny Qwen-2 model's hyperparameters (any loaded config will do as a base).
fn base_config() -> Option<ModelConfig> {
    let path = common::tiny_gguf("qwen2-tiny", "f32")?;
    Some(Model::load(path).unwrap().config)
}

/// Head sizes, bases and contexts of the tiny model and the real Qwen2.5 models, plus one with
/// every optional YaRN value set.
fn cases(base: &ModelConfig) -> Vec<ModelConfig> {
    let with = |head_dim: usize, rope_base: f32, y: Yarn| ModelConfig {
        head_dim,
        rope_base,
        rope_scaling: RopeScaling::Yarn(y),
        ..base.clone()
    };
    vec![
        with(16, 1e6, Yarn::new(4.0, 16)),
        with(64, 1e6, Yarn::new(4.0, 32768)),
        with(128, 1e6, Yarn::new(4.0, 32768)),
        with(64, 1e4, Yarn::new(8.0, 2048)),
        with(
            64,
            1e4,
            Yarn {
                beta_fast: 16.0,
                beta_slow: 2.0,
                ext_factor: 0.5,
                attn_factor: Some(1.25),
                ..Yarn::new(2.5, 4096)
            },
        ),
    ]
}

fn yarn_of(c: &ModelConfig) -> &Yarn {
    match &c.rope_scaling {
        RopeScaling::Yarn(y) => y,
        other => panic!("not yarn: {other:?}"),
    }
}

#[test]
fn correction_range_of_qwen25_is_what_the_formula_gives_by_hand() {
    // Qwen2.5-0.5B: head_dim 64, base 1e6, original context 32768.
    // low  = floor(64 ln(32768 / (2 pi 32)) / (2 ln 1e6)) = floor(11.80) = 11
    // high = ceil(64 ln(32768 / (2 pi))      / (2 ln 1e6)) = ceil(19.83)  = 20
    assert_eq!(
        Yarn::new(4.0, 32768).correction_range(64, 1e6),
        (11.0, 20.0)
    );
    // The tiny model with a 16-token original context: only pair 0 turns often enough to keep
    // its frequency.
    assert_eq!(Yarn::new(4.0, 16).correction_range(16, 1e6), (0.0, 1.0));
}

#[test]
fn inv_freq_and_attention_factor_match_the_f64_reference() {
    let Some(base) = base_config() else { return };
    let mut worst = 0.0f64;
    for c in cases(&base) {
        let y = yarn_of(&c);
        let r = reference(c.head_dim, c.rope_base as f64, y);
        let mut got = vec![0.0f32; c.head_dim / 2];
        c.rope_inv_freq(1.0, &mut got);
        for (i, (&g, &want)) in got.iter().zip(&r.inv_freq).enumerate() {
            let rel = (g as f64 - want).abs() / want;
            worst = worst.max(rel);
            assert!(rel <= 1e-6, "{c:?} pair {i}: {g} vs {want} (rel {rel:e})");
        }
        let mscale = c.rope_attn_factor() as f64;
        assert!(
            (mscale - r.attention_factor).abs() <= 1e-6,
            "attention factor {mscale} vs {}",
            r.attention_factor
        );
        // The blend is real: with the default ext_factor, pairs below the ramp keep RoPE's
        // frequency, pairs past it are divided by the factor.
        if y.ext_factor == 1.0 {
            let (low, high) = y.correction_range(c.head_dim, c.rope_base as f64);
            let plain =
                |i: usize| 1.0 / (c.rope_base as f64).powf((2 * i) as f64 / c.head_dim as f64);
            let first = 0;
            assert!(((got[first] as f64) - plain(first)).abs() / plain(first) < 1e-6);
            let last = c.head_dim / 2 - 1;
            if (last as f64) >= high {
                let want = plain(last) / y.factor;
                assert!(((got[last] as f64) - want).abs() / want < 1e-6, "{c:?}");
            }
            assert!(low <= high);
        }
    }
    eprintln!("inv_freq: worst relative error vs f64 {worst:e}");
}

/// cos/sin tables and rotated heads at positions inside and beyond the original context. The
/// runtime works in f32 (angle = pos * inv_freq rounded to f32), so the bound grows with the
/// angle: |error| <= 1e-6 + 2^-22 * |angle| (both roundings of the angle, with room for cos).
#[test]
fn rope_tables_and_rotated_heads_match_the_f64_reference() {
    let Some(base) = base_config() else { return };
    let (mut worst_table, mut worst_table_small, mut worst_rot) = (0.0f64, 0.0f64, 0.0f64);
    for c in cases(&base) {
        let y = yarn_of(&c);
        let r = reference(c.head_dim, c.rope_base as f64, y);
        let half = c.head_dim / 2;
        let mut inv = vec![0.0f32; half];
        c.rope_inv_freq(1.0, &mut inv);
        let mscale = c.rope_attn_factor();
        let head = common::pseudo_random(c.head_dim, c.head_dim as u64, 2.0);
        let orig = y.original_context;
        for pos in [
            0,
            1,
            2,
            3,
            7,
            orig - 1,
            orig,
            orig + 1,
            2 * orig + 3,
            4 * orig - 1,
        ] {
            let (mut cos, mut sin) = (vec![0.0f32; half], vec![0.0f32; half]);
            ops::rope_table(pos, &inv, mscale, &mut cos, &mut sin);
            let mut rotated = head.clone();
            ops::rope_neox(&mut rotated, &cos, &sin);
            for i in 0..half {
                let angle = pos as f64 * r.inv_freq[i];
                let (wc, ws) = (
                    angle.cos() * r.attention_factor,
                    angle.sin() * r.attention_factor,
                );
                let tol = 1e-6 + angle.abs() * 2f64.powi(-22);
                let err = (cos[i] as f64 - wc).abs().max((sin[i] as f64 - ws).abs());
                worst_table = worst_table.max(err);
                if angle.abs() <= 4.0 {
                    worst_table_small = worst_table_small.max(err);
                }
                assert!(
                    err <= tol,
                    "{c:?} pos {pos} pair {i}: err {err:e} > {tol:e}"
                );
                // Rotate-half: (x_i, x_{i+d/2}) -> (x_i cos - x_j sin, x_j cos + x_i sin).
                let (x0, x1) = (head[i] as f64, head[i + half] as f64);
                let want0 = x0 * wc - x1 * ws;
                let want1 = x1 * wc + x0 * ws;
                let err = (rotated[i] as f64 - want0)
                    .abs()
                    .max((rotated[i + half] as f64 - want1).abs());
                worst_rot = worst_rot.max(err);
                let tol = (x0.abs() + x1.abs()) * tol + 1e-6;
                assert!(err <= tol, "{c:?} pos {pos} pair {i}: rotated err {err:e}");
            }
        }
    }
    eprintln!(
        "cos/sin: worst abs error vs f64 {worst_table:e} ({worst_table_small:e} where |angle| <= 4); \
         rotated heads: {worst_rot:e}"
    );
}

/// A copy of the tiny Qwen-2 checkpoint whose config.json carries `rope_scaling` (the weights
/// are linked, not copied).
fn checkpoint_with_rope_scaling(tag: &str, rope_scaling: serde_json::Value) -> Option<PathBuf> {
    let src = common::model_dir("qwen2-tiny")?;
    let dir = common::unique_path(&format!("qwen2-tiny-{tag}"), "d");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["rope_scaling"] = rope_scaling;
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    for f in ["generation_config.json", "model.safetensors"] {
        let (from, to) = (src.join(f), dir.join(f));
        #[cfg(unix)]
        std::os::unix::fs::symlink(&from, &to).unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&from, &to).unwrap();
    }
    Some(dir)
}

fn convert_dir(dir: &Path, tag: &str) -> qwen::Result<PathBuf> {
    let out = common::unique_path(&format!("qwen2-tiny-{tag}"), "gguf");
    let mut opts = ConvertOptions::new(dir, &out);
    opts.out_type = OutType::parse("f32").unwrap();
    opts.tokenizer = Some(
        common::testdata()
            .unwrap()
            .join("models/qwen1-tiny/qwen.tiktoken"),
    );
    convert(&opts, &mut |_| {})?;
    Ok(out)
}

/// Logits at every position of `ids` (F32 cache, 2 threads).
fn all_logits(model: Model, ids: &[u32]) -> Vec<f32> {
    let params = SessionParams {
        n_ctx: 128,
        n_threads: 2,
        max_batch: 32,
    };
    let mut s = Session::new(Arc::new(model), &params).unwrap();
    s.eval_all_logits(ids).unwrap()
}

fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7919) % 150_000 + 10).collect()
}

#[test]
fn tiny_qwen2_end_to_end_with_yarn_from_config_json() {
    let Some(plain_path) = common::tiny_gguf("qwen2-tiny", "f32") else {
        return;
    };
    let dir = checkpoint_with_rope_scaling(
        "yarn",
        serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    )
    .unwrap();
    let yarn_path = convert_dir(&dir, "yarn").unwrap();
    let f = GgufFile::open(&yarn_path).unwrap();
    assert_eq!(f.get_str("qwen2.rope.scaling.type").unwrap(), "yarn");
    assert_eq!(f.get_f32("qwen2.rope.scaling.factor").unwrap(), 4.0);
    assert_eq!(
        f.get_u32("qwen2.rope.scaling.original_context_length")
            .unwrap(),
        16
    );
    let yarn = Model::load(&yarn_path).unwrap();
    assert_eq!(
        yarn.config.rope_scaling,
        RopeScaling::Yarn(Yarn::new(4.0, 16))
    );
    assert_eq!(
        yarn.config.rope_attn_factor(),
        (0.1 * 4f64.ln() + 1.0) as f32
    );

    // 48 tokens: three times the original context.
    let ids = prompt(48);
    let with_yarn = all_logits(yarn, &ids);
    let plain = all_logits(Model::load(&plain_path).unwrap(), &ids);
    assert!(with_yarn.iter().all(|x| x.is_finite()));
    let v = with_yarn.len() / ids.len();
    let max_diff = |from: usize, to: usize| {
        with_yarn[from * v..to * v]
            .iter()
            .zip(&plain[from * v..to * v])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    // Position 0 has angle 0 everywhere, so only the attention factor acts there (and the
    // softmax over one key ignores it): the first token's logits are identical.
    assert_eq!(max_diff(0, 1), 0.0);
    let (inside, beyond) = (max_diff(1, 16), max_diff(16, 48));
    eprintln!("yarn vs plain logits: max |diff| {inside} (positions 1..16), {beyond} (16..48)");
    assert!(inside > 1e-3 && beyond > 1e-3, "{inside} {beyond}");

    // Turning the scaling off on the YaRN file gives the plain file's logits bit for bit.
    let mut off = Model::load(&yarn_path).unwrap();
    off.config.rope_scaling = RopeScaling::None;
    assert_eq!(all_logits(off, &ids), plain);

    // The CLI override on the plain file equals the file's metadata, bit for bit.
    let cli = |path: &Path, extra: &[&str]| -> String {
        let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen"))
            .args([
                "logits",
                "-t",
                "2",
                "-c",
                "64",
                "--all",
                "--ids",
                &ids.join(","),
            ])
            .arg("-m")
            .arg(path)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from_file = cli(&yarn_path, &[]);
    let from_flags = cli(
        &plain_path,
        &[
            "--rope-scaling",
            "yarn",
            "--rope-scale",
            "4",
            "--yarn-orig-ctx",
            "16",
        ],
    );
    assert!(
        from_file == from_flags,
        "CLI override differs from metadata"
    );
    assert!(cli(&yarn_path, &["--rope-scaling", "none"]) == cli(&plain_path, &[]));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&yarn_path).unwrap();
}

/// The tiny model's GGUF with `extra` metadata added (replacing keys of the same name).
fn with_metadata(tag: &str, extra: &[(&str, MetadataValue)]) -> Option<PathBuf> {
    let src = GgufFile::open(common::tiny_gguf("qwen2-tiny", "f32")?).unwrap();
    let mut meta: Vec<(String, MetadataValue)> = src
        .metadata()
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .cloned()
        .collect();
    meta.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let tensors: Vec<(&str, GgmlType, &[usize], &[u8])> = src
        .tensors()
        .map(|t| (t.name, t.ty, t.dims, t.data))
        .collect();
    let out = common::unique_path(&format!("qwen2-tiny-meta-{tag}"), "gguf");
    write_gguf(&out, &meta, &tensors).unwrap();
    Some(out)
}

#[test]
fn a_file_without_scaling_runs_plain_rope_exactly() {
    let Some(plain_path) = common::tiny_gguf("qwen2-tiny", "f32") else {
        return;
    };
    let plain = Model::load(&plain_path).unwrap();
    assert_eq!(plain.config.rope_scaling, RopeScaling::None);
    assert_eq!(plain.config.rope_attn_factor(), 1.0);
    // Plain RoPE's frequencies are the reference's fp32 `1 / base ** (arange(0, d, 2) / d)`.
    let mut inv = vec![0.0f32; plain.config.head_dim / 2];
    plain.config.rope_inv_freq(1.0, &mut inv);
    for (i, &f) in inv.iter().enumerate() {
        let e = (2 * i) as f32 / plain.config.head_dim as f32;
        assert_eq!(f, 1.0 / plain.config.rope_base.powf(e));
    }
    // An explicit `none` reads as no scaling and runs identically.
    let ids = prompt(40);
    let none_path = with_metadata(
        "none",
        &[("qwen2.rope.scaling.type", MetadataValue::from("none"))],
    )
    .unwrap();
    let none = Model::load(&none_path).unwrap();
    assert_eq!(none.config.rope_scaling, RopeScaling::None);
    assert_eq!(all_logits(none, &ids), all_logits(plain, &ids));
    std::fs::remove_file(none_path).unwrap();
}

#[test]
fn linear_scaling_divides_every_frequency() {
    let Some(path) = with_metadata(
        "linear",
        &[
            ("qwen2.rope.scaling.type", MetadataValue::from("linear")),
            ("qwen2.rope.scaling.factor", MetadataValue::F32(2.0)),
        ],
    ) else {
        return;
    };
    let m = Model::load(&path).unwrap();
    assert_eq!(m.config.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    assert_eq!(m.config.rope_attn_factor(), 1.0);
    let mut plain = m.config.clone();
    plain.rope_scaling = RopeScaling::None;
    let (mut a, mut b) = (vec![0.0f32; 8], vec![0.0f32; 8]);
    m.config.rope_inv_freq(1.0, &mut a);
    plain.rope_inv_freq(1.0, &mut b);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(*x, y / 2.0);
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn optional_yarn_keys_are_read() {
    let Some(path) = with_metadata(
        "yarn-extras",
        &[
            ("qwen2.rope.scaling.type", MetadataValue::from("yarn")),
            ("qwen2.rope.scaling.factor", MetadataValue::F32(4.0)),
            (
                "qwen2.rope.scaling.yarn_beta_fast",
                MetadataValue::F32(16.0),
            ),
            ("qwen2.rope.scaling.yarn_beta_slow", MetadataValue::F32(2.0)),
            (
                "qwen2.rope.scaling.yarn_ext_factor",
                MetadataValue::F32(0.5),
            ),
            (
                "qwen2.rope.scaling.yarn_attn_factor",
                MetadataValue::F32(1.5),
            ),
        ],
    ) else {
        return;
    };
    let m = Model::load(&path).unwrap();
    // Without original_context_length the training context stands in (as in llama.cpp).
    let want = Yarn {
        beta_fast: 16.0,
        beta_slow: 2.0,
        ext_factor: 0.5,
        attn_factor: Some(1.5),
        ..Yarn::new(4.0, m.config.n_ctx_train)
    };
    assert_eq!(m.config.rope_scaling, RopeScaling::Yarn(want));
    assert_eq!(m.config.rope_attn_factor(), 1.5);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn bad_scaling_metadata_is_a_clear_error() {
    let s = |v: &str| MetadataValue::from(v);
    type Case = (
        &'static str,
        Vec<(&'static str, MetadataValue)>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown-type",
            vec![("qwen2.rope.scaling.type", s("longrope"))],
            "longrope",
        ),
        (
            "no-factor",
            vec![("qwen2.rope.scaling.type", s("yarn"))],
            "qwen2.rope.scaling.factor",
        ),
        (
            "zero-factor",
            vec![
                ("qwen2.rope.scaling.type", s("linear")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(0.0)),
            ],
            "factor",
        ),
        (
            "nan-factor",
            vec![
                ("qwen2.rope.scaling.type", s("yarn")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(f32::NAN)),
            ],
            "factor",
        ),
        (
            "small-yarn-factor",
            vec![
                ("qwen2.rope.scaling.type", s("yarn")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(0.5)),
            ],
            "factor",
        ),
        (
            "orig-ctx",
            vec![
                ("qwen2.rope.scaling.type", s("yarn")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(4.0)),
                (
                    "qwen2.rope.scaling.original_context_length",
                    MetadataValue::U32(1),
                ),
            ],
            "original context",
        ),
        (
            "betas",
            vec![
                ("qwen2.rope.scaling.type", s("yarn")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(4.0)),
                ("qwen2.rope.scaling.yarn_beta_fast", MetadataValue::F32(0.5)),
            ],
            "beta_fast",
        ),
        (
            "ext",
            vec![
                ("qwen2.rope.scaling.type", s("yarn")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(4.0)),
                (
                    "qwen2.rope.scaling.yarn_ext_factor",
                    MetadataValue::F32(2.0),
                ),
            ],
            "ext_factor",
        ),
        (
            "attn",
            vec![
                ("qwen2.rope.scaling.type", s("yarn")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(4.0)),
                (
                    "qwen2.rope.scaling.yarn_attn_factor",
                    MetadataValue::F32(-1.0),
                ),
            ],
            "attention factor",
        ),
        (
            "log-mul",
            vec![
                ("qwen2.rope.scaling.type", s("yarn")),
                ("qwen2.rope.scaling.factor", MetadataValue::F32(4.0)),
                (
                    "qwen2.rope.scaling.yarn_log_multiplier",
                    MetadataValue::F32(0.1),
                ),
            ],
            "yarn_log_multiplier",
        ),
        (
            "type-not-string",
            vec![("qwen2.rope.scaling.type", MetadataValue::U32(2))],
            "qwen2.rope.scaling.type",
        ),
    ];
    for (tag, meta, want) in cases {
        let Some(path) = with_metadata(tag, &meta) else {
            return;
        };
        let e = match Model::load(&path) {
            Ok(_) => panic!("{tag}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{tag}: {e}");
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn converter_refuses_what_the_runtime_cannot_run() {
    let cases = [
        (
            serde_json::json!({"type": "dynamic", "factor": 2.0}),
            "dynamic",
        ),
        (serde_json::json!({"type": "yarn"}), "factor"),
        (
            serde_json::json!({"rope_type": "yarn", "factor": 0.0, "original_max_position_embeddings": 16}),
            "factor",
        ),
        (
            serde_json::json!({"type": "yarn", "factor": 4.0, "mscale_all_dim": 0.707}),
            "mscale_all_dim",
        ),
    ];
    for (i, (rs, want)) in cases.into_iter().enumerate() {
        let Some(dir) = checkpoint_with_rope_scaling(&format!("bad{i}"), rs) else {
            return;
        };
        let e = convert_dir(&dir, &format!("bad{i}")).expect_err("converted");
        assert!(e.to_string().contains(want), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // `rope_type` (newer transformers) and optional values are recorded under llama.cpp's keys.
    let dir = checkpoint_with_rope_scaling(
        "extras",
        serde_json::json!({"rope_type": "yarn", "factor": 2.0, "beta_fast": 8.0, "attention_factor": 1.1}),
    )
    .unwrap();
    let out = convert_dir(&dir, "extras").unwrap();
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(f.get_f32("qwen2.rope.scaling.yarn_beta_fast").unwrap(), 8.0);
    assert_eq!(
        f.get_f32("qwen2.rope.scaling.yarn_attn_factor").unwrap(),
        1.1
    );
    assert!(f.get("qwen2.rope.scaling.yarn_beta_slow").is_none());
    // No original_max_position_embeddings: max_position_embeddings (32768) stands in.
    assert_eq!(
        f.get_u32("qwen2.rope.scaling.original_context_length")
            .unwrap(),
        32768
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(out).unwrap();
}

#[test]
fn qwen1_dynamic_ntk_and_yarn_exclude_each_other() {
    let Some(path) = common::tiny_gguf("qwen1-tiny", "f32") else {
        return;
    };
    let mut m = Model::load(&path).unwrap();
    assert!(m.config.use_dynamic_ntk);
    m.config.rope_scaling = RopeScaling::Yarn(Yarn::new(4.0, 64));
    let e = m.config.check_rope().unwrap_err().to_string();
    assert!(e.contains("dynamic NTK"), "{e}");
    let e = Session::new(Arc::new(m), &SessionParams::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dynamic NTK"), "{e}");
}
