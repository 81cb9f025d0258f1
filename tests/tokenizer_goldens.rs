//! The tokenizer against reference outputs of Qwen's Python tokenizer
//! (`public/tokenizer_goldens.json`, see the test data README §7).
//!
//! Test data: `$QWEN_TESTDATA`, else `../shared/testdata` next to the crate. Missing data skips
//! the tests with a visible message, or fails them when `CI` is set.

use qwen::tokenizer::{bytes_to_unicode, EncodeMode, StreamDecoder, Tokenizer};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Deserialize)]
struct Goldens {
    pat_str: String,
    n_mergeable_ranks: usize,
    tokenizer_vocab_size: usize,
    model_vocab_size_padded: usize,
    special_tokens: Vec<SpecialToken>,
    decode_cases: Vec<DecodeCase>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct SpecialToken {
    id: u32,
    token: String,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    decode_errors_replace: String,
    decode_skip_special_tokens: String,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    text: String,
    ids_allowed_special_all: Vec<u32>,
    ids_no_special: Vec<u32>,
    decode_ids_allowed_special_all: String,
    decode_ids_no_special: String,
    roundtrip_equals_nfc_text: bool,
}

fn testdata_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QWEN_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"));
    if dir.join("public/tokenizer_goldens.json").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("tokenizer test data missing under {}", dir.display());
    }
    eprintln!("SKIP: tokenizer test data missing under {}", dir.display());
    None
}

/// Goldens and the Qwen-1 tokenizer, loaded once for all tests of this binary.
struct Data {
    dir: PathBuf,
    goldens: Goldens,
    qwen1: Tokenizer,
}

fn data() -> Option<&'static Data> {
    static DATA: OnceLock<Option<Data>> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = testdata_dir()?;
        let json = std::fs::read_to_string(dir.join("public/tokenizer_goldens.json")).unwrap();
        let goldens: Goldens = serde_json::from_str(&json).unwrap();
        let start = Instant::now();
        let qwen1 =
            Tokenizer::from_tiktoken_file(dir.join("models/qwen1-tiny/qwen.tiktoken")).unwrap();
        eprintln!("from_tiktoken_file: {:?}", start.elapsed());
        Some(Data {
            dir,
            goldens,
            qwen1,
        })
    })
    .as_ref()
}

/// Compares `got` with `want`, recording a mismatch instead of stopping at the first one.
fn check<T: PartialEq + std::fmt::Debug>(
    failures: &mut Vec<String>,
    what: String,
    got: T,
    want: T,
) {
    if got != want {
        failures.push(format!("{what}: got {got:?}, want {want:?}"));
    }
}

fn assert_no_failures(name: &str, checked: usize, failures: &[String]) {
    eprintln!(
        "{name}: {} of {checked} checks passed",
        checked - failures.len()
    );
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

/// Encodes and decodes every case in both modes; returns (checks run, failures).
fn check_cases<'a>(tok: &Tokenizer, cases: impl Iterator<Item = &'a Case>) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for c in cases {
        let trusted = tok.encode(&c.text, EncodeMode::Trusted);
        check(
            &mut failures,
            format!("{} Trusted", c.id),
            &trusted,
            &c.ids_allowed_special_all,
        );
        let text = tok.encode(&c.text, EncodeMode::Text);
        check(
            &mut failures,
            format!("{} Text", c.id),
            &text,
            &c.ids_no_special,
        );
        let decoded = tok.decode(&c.ids_allowed_special_all);
        check(
            &mut failures,
            format!("{} decode", c.id),
            &decoded,
            &c.decode_ids_allowed_special_all,
        );
        let decoded = tok.decode(&c.ids_no_special);
        check(
            &mut failures,
            format!("{} decode Text ids", c.id),
            &decoded,
            &c.decode_ids_no_special,
        );
        checked += 4;
    }
    (checked, failures)
}

#[test]
fn the_goldens_use_our_pattern_and_sizes() {
    let Some(d) = data() else { return };
    assert_eq!(d.goldens.pat_str, qwen::tokenizer::QWEN_PATTERN);
    assert_eq!(d.qwen1.n_vocab(), d.goldens.tokenizer_vocab_size);
    assert_eq!(d.goldens.n_mergeable_ranks, 151643);
    for s in &d.goldens.special_tokens {
        assert_eq!(d.qwen1.special_id(&s.token), Some(s.id), "{}", s.token);
        assert!(d.qwen1.is_special(s.id));
        assert_eq!(d.qwen1.token_bytes(s.id), Some(s.token.as_bytes()));
    }
    assert!(!d.qwen1.is_special(151642));
    assert_eq!(
        d.qwen1
            .token_bytes(d.goldens.model_vocab_size_padded as u32 - 1),
        None
    );
}

#[test]
fn qwen1_tiktoken_matches_every_golden_case() {
    let Some(d) = data() else { return };
    let (checked, failures) = check_cases(&d.qwen1, d.goldens.cases.iter());
    assert_no_failures("qwen.tiktoken cases", checked, &failures);
}

#[test]
fn qwen1_tiktoken_matches_decode_cases() {
    let Some(d) = data() else { return };
    let mut failures = Vec::new();
    for (i, c) in d.goldens.decode_cases.iter().enumerate() {
        let got = d.qwen1.decode(&c.ids);
        check(
            &mut failures,
            format!("decode_cases[{i}]"),
            &got,
            &c.decode_errors_replace,
        );
        let got = d.qwen1.decode_skip_special(&c.ids);
        let want = &c.decode_skip_special_tokens;
        check(
            &mut failures,
            format!("decode_cases[{i}] skip special"),
            &got,
            want,
        );
    }
    assert_no_failures("decode_cases", 2 * d.goldens.decode_cases.len(), &failures);
}

#[test]
fn user_text_cannot_spell_control_tokens() {
    let Some(d) = data() else { return };
    let tok = &d.qwen1;
    assert_eq!(
        tok.encode("<|im_start|>", EncodeMode::Text),
        [27, 91, 318, 4906, 91, 29]
    );
    assert_eq!(tok.encode("<|im_start|>", EncodeMode::Trusted), [151644]);
    // Ids past the tokenizer's vocabulary (the model's padding rows) decode to nothing.
    assert_eq!(
        tok.decode(&[151644, 151851, 151935, u32::MAX]),
        "<|im_start|>"
    );
}

/// Qwen2.5-style GGUF vocabulary built from `qwen.tiktoken`: normal tokens in GPT-2
/// byte-to-unicode form, Qwen2.5's first three control tokens, then `[PAD{id}]` rows up to the
/// model's 151936 (typed unused, control and user-defined in turn, as different converters do).
fn gguf_vocab(qwen1: &Tokenizer) -> (Vec<String>, Vec<i32>) {
    let (mut tokens, mut types) = (Vec::new(), Vec::new());
    for id in 0..151643 {
        tokens.push(bytes_to_unicode(qwen1.token_bytes(id).unwrap()));
        types.push(1);
    }
    for special in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(special.to_string());
        types.push(3);
    }
    for id in 151646..151936 {
        tokens.push(format!("[PAD{id}]"));
        types.push([5, 3, 4][id % 3]);
    }
    (tokens, types)
}

fn gguf_tokenizer(qwen1: &Tokenizer) -> Tokenizer {
    let (tokens, types) = gguf_vocab(qwen1);
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let start = Instant::now();
    let tok = Tokenizer::from_gguf_vocab(&tokens, &types).unwrap();
    eprintln!("from_gguf_vocab: {:?}", start.elapsed());
    tok
}

#[test]
fn gguf_vocab_matches_golden_cases_without_qwen1_extras() {
    let Some(d) = data() else { return };
    let tok = gguf_tokenizer(&d.qwen1);
    assert_eq!(tok.n_vocab(), 151646);
    let max_id = |c: &&Case| {
        let ids = c.ids_allowed_special_all.iter().chain(&c.ids_no_special);
        ids.copied().max().unwrap_or(0)
    };
    let cases: Vec<&Case> = d
        .goldens
        .cases
        .iter()
        .filter(|c| max_id(c) <= 151645)
        .collect();
    assert!(cases.len() > 200, "only {} cases usable", cases.len());
    let (checked, failures) = check_cases(&tok, cases.into_iter());
    assert_no_failures("GGUF vocabulary cases", checked, &failures);
    // Padding rows have ids but no token: not typeable, not decodable.
    let pad = tok.encode("[PAD151935]", EncodeMode::Trusted);
    assert_eq!(pad, d.qwen1.encode("[PAD151935]", EncodeMode::Text));
    assert_eq!(tok.decode(&[151646, 151647, 151648, 151935]), "");
    assert!(!tok.is_special(151935));
}

#[test]
fn gguf_user_defined_tokens_are_typed_only_in_trusted_text() {
    let Some(d) = data() else { return };
    let (mut tokens, mut types) = gguf_vocab(&d.qwen1);
    // Qwen2.5's tool-call markers are user-defined tokens at 151657/151658.
    tokens[151657] = "<tool_call>".into();
    tokens[151658] = "</tool_call>".into();
    types[151657] = 4;
    types[151658] = 4;
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let tok = Tokenizer::from_gguf_vocab(&tokens, &types).unwrap();
    let text = "<tool_call>\n{}\n</tool_call><|im_end|>";
    let ids = tok.encode(text, EncodeMode::Trusted);
    assert_eq!(ids[0], 151657);
    assert_eq!(ids[ids.len() - 2..], [151658, 151645]);
    assert!(!tok
        .encode(text, EncodeMode::Text)
        .iter()
        .any(|&id| id > 151642));
    assert!(tok.is_special(151657) && tok.is_control(151645) && !tok.is_control(151657));
    assert_eq!(
        tok.decode_skip_special(&ids),
        "<tool_call>\n{}\n</tool_call>"
    );
    assert_eq!(tok.decode(&ids), text);
}

/// Streams `ids` one at a time; returns the pieces and the final flush.
fn stream(tok: &Tokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let mut decoder = StreamDecoder::new();
    let pieces = ids.iter().map(|&id| decoder.push(tok, id)).collect();
    (pieces, decoder.finish())
}

#[test]
fn stream_decoder_matches_decode() {
    let Some(d) = data() else { return };
    let tok = &d.qwen1;
    let mut failures = Vec::new();
    let mut checked = 0;
    for c in &d.goldens.cases {
        // Texts that round-trip and hold no U+FFFD are valid UTF-8 at the end, so no piece
        // may contain a replacement character: a split character must be held back whole.
        let clean = c.roundtrip_equals_nfc_text && !c.text.contains('\u{FFFD}');
        for ids in [&c.ids_allowed_special_all, &c.ids_no_special] {
            let (pieces, rest) = stream(tok, ids);
            let joined = pieces.concat() + &rest;
            check(
                &mut failures,
                format!("{} stream", c.id),
                &joined,
                &tok.decode(ids),
            );
            if clean {
                let bad = pieces.iter().any(|p| p.contains('\u{FFFD}')) || !rest.is_empty();
                check(&mut failures, format!("{} clean pieces", c.id), bad, false);
            }
            checked += 1 + usize::from(clean);
        }
    }
    for (i, c) in d.goldens.decode_cases.iter().enumerate() {
        let (pieces, rest) = stream(tok, &c.ids);
        let joined = pieces.concat() + &rest;
        check(
            &mut failures,
            format!("decode_cases[{i}] stream"),
            &joined,
            &c.decode_errors_replace,
        );
        checked += 1;
    }
    assert_no_failures("stream decoder", checked, &failures);
}

#[test]
fn stream_decoder_holds_a_split_emoji() {
    let Some(d) = data() else { return };
    let tok = &d.qwen1;
    // The zero-width joiner is split over two tokens (378, 235 in decode_cases).
    let ids = tok.encode("👨‍👩‍👧 你好", EncodeMode::Text);
    let (pieces, rest) = stream(tok, &ids);
    assert!(
        pieces.iter().any(String::is_empty),
        "some token must be held back"
    );
    assert_eq!(pieces.concat(), "👨‍👩‍👧 你好");
    assert_eq!(rest, "");
}

#[test]
fn ppl_text_has_the_reference_token_count() {
    let Some(d) = data() else { return };
    let text = std::fs::read_to_string(d.dir.join("ppl/gpl3-apache2.txt")).unwrap();
    let start = Instant::now();
    let ids = d.qwen1.encode(&text, EncodeMode::Text);
    eprintln!("encode {} bytes: {:?}", text.len(), start.elapsed());
    assert_eq!(ids.len(), 9758);
    assert_eq!(d.qwen1.decode(&ids), text);
}
