//! Bad inputs give errors that name the file and tensor, never a panic, and never leave a file
//! at the output path.

mod common;

use common::Synthetic;
use qwen::convert::{convert, ConvertOptions, ConvertReport, OutType};
use qwen::Error;
use std::path::{Path, PathBuf};

fn scratch(stem: &str) -> PathBuf {
    let dir = common::unique_path(stem, "d");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(src: &Path, f: impl FnOnce(&mut ConvertOptions)) -> (Result<ConvertReport, Error>, PathBuf) {
    let out = common::unique_path("err-out", "gguf");
    let mut opts = ConvertOptions::new(src, &out);
    f(&mut opts);
    (convert(&opts, &mut |_| {}), out)
}

/// Converts, expects an error containing every `needle`, and checks nothing was written.
fn expect_err(src: &Path, f: impl FnOnce(&mut ConvertOptions), needles: &[&str]) -> Error {
    let (res, out) = run(src, f);
    let e = match res {
        Ok(_) => panic!("expected an error mentioning {needles:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error `{msg}` does not mention `{n}`");
    }
    assert!(!out.exists(), "a failed conversion left {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(out.file_name().unwrap().to_str().unwrap())
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    eprintln!("ok: {msg}");
    e
}

#[test]
fn missing_input_and_files() {
    let dir = scratch("missing");
    expect_err(&dir.join("nope"), |_| {}, &["nope"]);
    expect_err(&dir, |_| {}, &["config.json"]);
    std::fs::write(
        dir.join("config.json"),
        Synthetic::default().config().to_string(),
    )
    .unwrap();
    expect_err(&dir, |_| {}, &["model.safetensors"]);
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        r#"{"weight_map": {"lm_head.weight": "model-00002.safetensors"}}"#,
    )
    .unwrap();
    expect_err(&dir, |_| {}, &["model-00002.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_json_and_unknown_architecture() {
    let dir = scratch("arch");
    Synthetic::default().write(&dir);
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    expect_err(&dir, |_| {}, &["config.json", "invalid JSON"]);
    let mut cfg = Synthetic::default().config();
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    cfg["model_type"] = serde_json::json!("llama");
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = expect_err(&dir, |_| {}, &["LlamaForCausalLM", "Qwen2ForCausalLM"]);
    assert!(matches!(e, Error::Unsupported(_)));
    let mut cfg = Synthetic::default().config();
    cfg["num_attention_heads"] = serde_json::json!(3);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    expect_err(&dir, |_| {}, &["num_attention_heads"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_extra_and_mismatched_tensors() {
    let s = Synthetic::default();
    let dir = scratch("tensors");
    let mut values = s.values();
    values.retain(|(n, _, _)| n != "model.layers.1.mlp.up_proj.weight");
    s.write_with(&dir, values);
    expect_err(
        &dir,
        |_| {},
        &["model.layers.1.mlp.up_proj.weight", "missing"],
    );

    let mut values = s.values();
    values.push((
        "model.layers.2.mlp.up_proj.weight".into(),
        vec![4, 4],
        vec![0.0; 16],
    ));
    s.write_with(&dir, values);
    expect_err(
        &dir,
        |_| {},
        &[
            "model.layers.2.mlp.up_proj.weight",
            "unexpected",
            "model.safetensors",
        ],
    );

    let mut values = s.values();
    let t = values
        .iter_mut()
        .find(|(n, _, _)| n == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    t.1 = vec![256, 128];
    s.write_with(&dir, values);
    expect_err(
        &dir,
        |_| {},
        &[
            "model.layers.0.self_attn.k_proj.weight",
            "[256, 128]",
            "[128, 256]",
        ],
    );

    // A config that disagrees with the weights: vocab_size.
    s.write(&dir);
    let mut cfg = s.config();
    cfg["vocab_size"] = serde_json::json!(1000);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    expect_err(&dir, |_| {}, &["model.embed_tokens.weight", "[1000, 256]"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_dtype() {
    let s = Synthetic::default();
    let dir = scratch("dtype");
    s.write(&dir);
    // Re-write one tensor as I32 with the right shape.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = if name == "model.norm.weight" {
            safetensors::Dtype::I32
        } else {
            view.dtype()
        };
        let v = safetensors::tensor::TensorView::new(dtype, view.shape().to_vec(), view.data())
            .unwrap();
        views.push((name, v));
    }
    let path = dir.join("model2.safetensors");
    safetensors::serialize_to_file(views, &None, &path).unwrap();
    std::fs::rename(&path, dir.join("model.safetensors")).unwrap();
    expect_err(&dir, |_| {}, &["model.norm.weight", "I32"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn corrupt_safetensors_never_panics() {
    let dir = scratch("corrupt");
    Synthetic::default().write(&dir);
    let good = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated data", good[..good.len() - 100].to_vec()),
        ("truncated header", good[..8 + header_len / 2].to_vec()),
        (
            "huge header length",
            [u64::MAX.to_le_bytes().to_vec(), good[8..].to_vec()].concat(),
        ),
        (
            "garbage",
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
    ];
    for (what, bytes) in cases {
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        let e = expect_err(&dir, |_| {}, &["model.safetensors"]);
        eprintln!("{what}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_options() {
    assert!(matches!(
        OutType::parse("q3_k_s"),
        Err(Error::InvalidArgument(_))
    ));
    let dir = scratch("opts");
    Synthetic::default().write(&dir);
    expect_err(
        &dir,
        |o| o.tokenizer = Some(dir.join("missing.tiktoken")),
        &["missing.tiktoken"],
    );
    std::fs::write(dir.join("bad.tiktoken"), "IQ== 0\nnot-base64!! 1\n").unwrap();
    expect_err(
        &dir,
        |o| o.tokenizer = Some(dir.join("bad.tiktoken")),
        &["bad.tiktoken:2"],
    );
    // The output directory does not exist: the writer's error, nothing created.
    let (res, _) = run(&dir, |o| o.output = dir.join("no/such/dir/out.gguf"));
    assert!(res.unwrap_err().to_string().contains("no/such/dir"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Real Qwen-1 configs say `"use_flash_attn": "auto"` and carry keys we do not know.
#[test]
fn qwen1_config_quirks_are_accepted() {
    let Some(src) = common::model_dir("qwen1-tiny") else {
        return;
    };
    let dir = scratch("qwen1-auto");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    cfg["use_flash_attn"] = "auto".into();
    cfg["a_key_from_the_future"] = serde_json::json!([1, 2]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    for f in ["model.safetensors", "qwen.tiktoken"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    let (res, _) = run(&dir, |o| o.dry_run = true);
    assert_eq!(res.unwrap().arch, "qwen");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lora_for_another_base_model() {
    let Some(lora) = common::model_dir("qwen1-tiny-lora") else {
        return;
    };
    let base = common::model_dir("qwen1-tiny").unwrap();
    // A Qwen-1 adapter on a Qwen-2 model: its modules do not exist there.
    let dir = scratch("lora-other");
    Synthetic::default().write(&dir);
    expect_err(
        &dir,
        |o| o.lora = Some(lora.clone()),
        &["transformer.h.0.attn.c_attn", "another base model"],
    );
    // Same module names, wrong shapes: an adapter for a wider model.
    let adapter = scratch("lora-wide");
    std::fs::copy(
        lora.join("adapter_config.json"),
        adapter.join("adapter_config.json"),
    )
    .unwrap();
    let tensors = vec![
        (
            "base_model.model.transformer.h.0.mlp.w1.lora_A.weight".to_string(),
            vec![4, 128],
            vec![0.1; 512],
        ),
        (
            "base_model.model.transformer.h.0.mlp.w1.lora_B.weight".to_string(),
            vec![256, 4],
            vec![0.1; 1024],
        ),
    ];
    common::write_safetensors(&adapter.join("adapter_model.safetensors"), &tensors);
    expect_err(
        &base,
        |o| o.lora = Some(adapter.clone()),
        &["transformer.h.0.mlp.w1.lora_A.weight", "another base model"],
    );
    // Not an adapter at all.
    expect_err(
        &base,
        |o| o.lora = Some(dir.clone()),
        &["adapter_config.json"],
    );
    // LoRA needs the HF checkpoint.
    if let Some(gguf) = common::tiny_gguf("qwen1-tiny", "f32") {
        let e = expect_err(&gguf, |o| o.lora = Some(lora.clone()), &["LoRA"]);
        assert!(matches!(e, Error::Unsupported(_)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&adapter).unwrap();
}

#[test]
fn gguf_input_that_is_not_gguf() {
    let dir = scratch("notgguf");
    let f = dir.join("model.gguf");
    std::fs::write(&f, b"GGUF but not really").unwrap();
    expect_err(&f, |_| {}, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
}
