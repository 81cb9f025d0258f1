//! The tokenizer built from the real Qwen2.5 GGUF's embedded vocabulary against the Qwen
//! tokenizer goldens. Qwen2.5 gives the ids above 151645 other meanings than Qwen-1, so cases
//! that involve such ids, or whose text contains one of Qwen2.5's own control strings, are left
//! out (and counted).

mod common;

use qwen::gguf::GgufFile;
use qwen::tokenizer::{EncodeMode, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;

fn find(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} missing at {}", path.display());
    }
    eprintln!("SKIP: {what} missing at {}", path.display());
    None
}

#[test]
fn gguf_vocabulary_matches_the_reference_tokenizer() {
    let data = std::env::var_os("QWEN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"));
    let models = common::models_dir();
    let Some(goldens) = find(
        data.join("public/tokenizer_goldens.json"),
        "tokenizer goldens",
    ) else {
        return;
    };
    let Some(model) = find(
        models.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        "Qwen2.5 0.5B GGUF",
    ) else {
        return;
    };
    let file = GgufFile::open(model).unwrap();
    let tokens = file.get_str_array("tokenizer.ggml.tokens").unwrap();
    let types = file.get_i32_array("tokenizer.ggml.token_type").unwrap();
    let tok = Tokenizer::from_gguf_vocab(&tokens, &types).unwrap();
    // Control tokens come from the file's token types, not from a Qwen-1 table.
    assert_eq!(tok.special_id("<|im_start|>"), Some(151644));
    assert_eq!(tok.special_id("<|im_end|>"), Some(151645));
    assert_eq!(tok.special_id("<|extra_0|>"), None);
    let qwen25_only: Vec<&str> = (151646..tokens.len() as u32)
        .filter(|&id| tok.is_special(id))
        .map(|id| tokens[id as usize])
        .collect();

    let goldens: Value = serde_json::from_slice(&std::fs::read(goldens).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (mut checked, mut left_out) = (0, 0);
    for case in goldens["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let trusted = ids(&case["ids_allowed_special_all"]);
        let plain = ids(&case["ids_no_special"]);
        let qwen1_only = trusted.iter().chain(&plain).any(|&id| id > 151645);
        if qwen1_only || qwen25_only.iter().any(|s| text.contains(s)) {
            left_out += 1;
            continue;
        }
        let name = case["id"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, EncodeMode::Trusted),
            trusted,
            "{name}: trusted encode"
        );
        assert_eq!(
            tok.encode(text, EncodeMode::Text),
            plain,
            "{name}: text encode"
        );
        assert_eq!(
            tok.decode(&trusted),
            case["decode_ids_allowed_special_all"].as_str().unwrap(),
            "{name}: decode"
        );
        assert_eq!(
            tok.decode(&plain),
            case["decode_ids_no_special"].as_str().unwrap(),
            "{name}: decode plain"
        );
        checked += 1;
    }
    eprintln!("GGUF vocabulary: {checked} cases equal, {left_out} left out (Qwen-1-only ids)");
    assert!(checked > 150, "too few cases checked: {checked}");
}
