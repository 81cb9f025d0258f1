//! Qwen-1.5/2/2.5 tokenizer files (`vocab.json` + `merges.txt`, `tokenizer.json`) give the same
//! GGUF vocabulary as the equivalent `qwen.tiktoken`. The files are made from the tiktoken
//! conversion's own output, in the shapes Hugging Face writes them.

mod common;

use qwen::convert::{convert, ConvertOptions, OutType};
use qwen::gguf::GgufFile;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

const N_RANKS: usize = 151643;

/// A qwen2-tiny checkpoint directory (links to the weights) to which tokenizer files are added.
fn qwen2_dir(stem: &str) -> Option<PathBuf> {
    let src = common::model_dir("qwen2-tiny")?;
    let dir = common::unique_path(stem, "d");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::os::unix::fs::symlink(src.join(f), dir.join(f)).unwrap();
    }
    Some(dir)
}

fn specials() -> Vec<(usize, &'static str)> {
    vec![
        (151643, "<|endoftext|>"),
        (151644, "<|im_start|>"),
        (151645, "<|im_end|>"),
    ]
}

fn convert_dry(dir: &Path) -> PathBuf {
    let out = common::unique_path("vocab", "gguf");
    let mut opts = ConvertOptions::new(dir, &out);
    opts.out_type = OutType::parse("f32").unwrap();
    convert(&opts, &mut |_| {}).unwrap();
    out
}

/// The converted file's vocabulary equals the tiktoken one for the ranks and the three control
/// tokens; the rest of the embedding rows are padding.
fn check_same_vocab(got: &GgufFile, reference: &GgufFile) {
    let g = got.get_str_array("tokenizer.ggml.tokens").unwrap();
    let r = reference.get_str_array("tokenizer.ggml.tokens").unwrap();
    let gt = got.get_i32_array("tokenizer.ggml.token_type").unwrap();
    let rt = reference
        .get_i32_array("tokenizer.ggml.token_type")
        .unwrap();
    assert_eq!(g.len(), r.len());
    assert!(g[..N_RANKS + 3] == r[..N_RANKS + 3], "tokens differ");
    assert!(gt[..N_RANKS + 3] == rt[..N_RANKS + 3], "token types differ");
    assert_eq!(g[N_RANKS + 3], format!("[PAD{}]", N_RANKS + 3));
    assert_eq!(gt[N_RANKS + 3], 5);
    assert_eq!(
        got.get_str_array("tokenizer.ggml.merges").unwrap(),
        reference.get_str_array("tokenizer.ggml.merges").unwrap()
    );
    assert_eq!(
        got.get_str("tokenizer.chat_template").unwrap(),
        "{{ custom }}"
    );
}

fn reference() -> Option<GgufFile> {
    Some(GgufFile::open(common::tiny_gguf("qwen1-tiny", "f32")?).unwrap())
}

#[test]
fn vocab_json_and_merges_txt() {
    let (Some(reference), Some(dir)) = (reference(), qwen2_dir("vocab-json")) else {
        return;
    };
    let tokens = reference.get_str_array("tokenizer.ggml.tokens").unwrap();
    let vocab: Map<String, Value> = tokens[..N_RANKS]
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    std::fs::write(dir.join("vocab.json"), Value::Object(vocab).to_string()).unwrap();
    let merges = reference.get_str_array("tokenizer.ggml.merges").unwrap();
    std::fs::write(
        dir.join("merges.txt"),
        format!("#version: 0.2\n{}\n", merges.join("\n")),
    )
    .unwrap();
    let decoder: Map<String, Value> = specials()
        .into_iter()
        .map(|(id, t)| (id.to_string(), json!({"content": t, "special": true})))
        .collect();
    let config = json!({"added_tokens_decoder": decoder, "chat_template": "{{ custom }}"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let out = convert_dry(&dir);
    check_same_vocab(&GgufFile::open(&out).unwrap(), &reference);
    std::fs::remove_file(out).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tokenizer_json_with_pair_merges() {
    let (Some(reference), Some(dir)) = (reference(), qwen2_dir("tokenizer-json")) else {
        return;
    };
    let tokens = reference.get_str_array("tokenizer.ggml.tokens").unwrap();
    let vocab: Map<String, Value> = tokens[..N_RANKS]
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let merges: Vec<Value> = reference
        .get_str_array("tokenizer.ggml.merges")
        .unwrap()
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            json!([a, b])
        })
        .collect();
    let added: Vec<Value> = specials()
        .into_iter()
        .map(|(id, t)| json!({"id": id, "content": t, "special": true}))
        .collect();
    let tj = json!({"version": "1.0", "added_tokens": added, "model": {"type": "BPE", "vocab": vocab, "merges": merges}});
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"chat_template": "{{ custom }}"}).to_string(),
    )
    .unwrap();
    let out = convert_dry(&dir);
    check_same_vocab(&GgufFile::open(&out).unwrap(), &reference);
    std::fs::remove_file(out).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn no_tokenizer_is_a_warning_not_an_error() {
    let Some(dir) = qwen2_dir("no-tokenizer") else {
        return;
    };
    let mut opts = ConvertOptions::new(&dir, common::unique_path("unused", "gguf"));
    opts.dry_run = true;
    let report = convert(&opts, &mut |_| {}).unwrap();
    assert_eq!(report.n_tokens, 0);
    assert!(
        report.warnings.iter().any(|w| w.contains("--tokenizer")),
        "{:?}",
        report.warnings
    );
    std::fs::remove_dir_all(dir).unwrap();
}
