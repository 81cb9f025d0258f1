//! ChatML against the reference (`public/chatml_goldens.json`): `make_context` ids with window
//! truncation, `raw_text`, `decode_tokens` with its quirks and `get_stop_words_ids`, in the
//! library and through `qwen run --chat --history H.json --max-window-size N -n 0 --json`.

mod common;

use qwen::chat::{
    decode_tokens, make_context_for, raw_text, stop_words_ids, ChatFormat, ChatTokens,
    Conversation, Turn,
};
use qwen::tokenizer::Tokenizer;
use serde_json::Value;
use std::process::Command;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn history(case: &Value) -> Vec<Turn> {
    case["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Turn {
            user: t[0].as_str().unwrap().into(),
            assistant: t[1].as_str().unwrap().into(),
        })
        .collect()
}

fn format(case: &Value) -> ChatFormat {
    ChatFormat::parse(case["chat_format"].as_str().unwrap()).unwrap()
}

fn load() -> Option<(Tokenizer, ChatTokens, Value)> {
    let data = common::testdata()?;
    let tok = Tokenizer::from_tiktoken_file(data.join("models/qwen1-tiny/qwen.tiktoken")).unwrap();
    let ct = ChatTokens::from_tokenizer(&tok).unwrap();
    let goldens: Value =
        serde_json::from_slice(&std::fs::read(data.join("public/chatml_goldens.json")).unwrap())
            .unwrap();
    Some((tok, ct, goldens))
}

#[test]
fn make_context_matches_every_case() {
    let Some((tok, ct, goldens)) = load() else {
        return;
    };
    let cases = goldens["cases"].as_array().unwrap();
    assert!(cases.len() >= 12);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let hist = history(case);
        let (system, query) = (
            case["system"].as_str().unwrap(),
            case["query"].as_str().unwrap(),
        );
        let window = case["max_window_size"].as_u64().unwrap() as usize;
        let ctx = make_context_for(&tok, &ct, format(case), system, &hist, query, window);
        assert_eq!(ctx.ids, ids(&case["context_ids"]), "{id}: context ids");
        assert_eq!(
            ctx.ids.len() as u64,
            case["n_context_tokens"].as_u64().unwrap()
        );
        assert_eq!(
            ctx.turns_kept as u64,
            case["history_turns_kept"].as_u64().unwrap(),
            "{id}: turns kept"
        );
        let kept = &hist[hist.len() - ctx.turns_kept..];
        assert_eq!(
            raw_text(format(case), system, kept, query),
            case["raw_text"].as_str().unwrap(),
            "{id}: raw_text"
        );
        // The same through the Conversation object.
        let conv = Conversation {
            system: system.into(),
            history: hist.clone(),
            max_window_size: window,
            format: format(case),
        };
        assert_eq!(conv.context(&tok, &ct, query, usize::MAX), ctx, "{id}");
        assert_eq!(
            conv.raw_text(query, ctx.turns_kept),
            case["raw_text"].as_str().unwrap()
        );
        // The decoded context reads as raw_text (what decode_tokens relies on).
        if format(case) == ChatFormat::ChatMl {
            assert_eq!(tok.decode(&ctx.ids), case["raw_text"].as_str().unwrap());
        }
    }
}

#[test]
fn decode_tokens_matches_every_case_with_its_quirks() {
    let Some((tok, ct, goldens)) = load() else {
        return;
    };
    let cases = goldens["cases"].as_array().unwrap();
    let cases_checked = goldens["decode_tokens"].as_array().unwrap();
    assert!(cases_checked.len() >= 8);
    for d in cases_checked {
        let name = d["name"].as_str().unwrap();
        let case = cases.iter().find(|c| c["id"] == d["context_case"]).unwrap();
        let ctx = ids(&case["context_ids"]);
        let mut all = ctx.clone();
        all.extend(ids(&d["generated_ids"]));
        let got = decode_tokens(
            &tok,
            &ct,
            ChatFormat::parse(d["chat_format"].as_str().unwrap()).unwrap(),
            &all,
            ctx.len(),
            case["raw_text"].as_str().unwrap(),
        );
        assert_eq!(got.response, d["response"].as_str().unwrap(), "{name}");
        assert_eq!(got.end_reason, d["end_reason"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn stop_words_ids_match() {
    let Some((tok, ct, goldens)) = load() else {
        return;
    };
    let want = &goldens["get_stop_words_ids"];
    for f in ["chatml", "raw"] {
        let got = stop_words_ids(&tok, &ct, ChatFormat::parse(f).unwrap());
        let want: Vec<Vec<u32>> = want[f].as_array().unwrap().iter().map(ids).collect();
        assert_eq!(got, want, "{f}");
    }
    // ChatML generation stops at both control tokens and at generate()'s EOS.
    let stops = ct.stop_tokens();
    assert!(stops.contains(&151645) && stops.contains(&151644) && stops.contains(&151643));
}

fn qwen(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_prints_the_reference_context_ids() {
    let Some((_, _, goldens)) = load() else {
        return;
    };
    let gguf = common::tiny_gguf("qwen1-tiny", "f32").unwrap();
    let gguf = gguf.to_str().unwrap();
    for case in goldens["cases"].as_array().unwrap() {
        if case["chat_format"] != "chatml" {
            continue;
        }
        let id = case["id"].as_str().unwrap();
        let hist_path = common::unique_path(id, "json");
        std::fs::write(&hist_path, case["history"].to_string()).unwrap();
        let window = case["max_window_size"].to_string();
        let (ok, out, err) = qwen(&[
            "run",
            "-m",
            gguf,
            "--chat",
            "--system",
            case["system"].as_str().unwrap(),
            "--history",
            hist_path.to_str().unwrap(),
            "--max-window-size",
            &window,
            "-p",
            case["query"].as_str().unwrap(),
            "-n",
            "0",
            "--json",
        ]);
        assert!(ok, "{id}: {err}");
        let got: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(got["prompt_ids"], case["context_ids"], "{id}");
        assert_eq!(got["turns_kept"], case["history_turns_kept"], "{id}");
        assert_eq!(got["generated_ids"], serde_json::json!([]), "{id}");
    }
}

#[test]
fn cli_errors_when_the_newest_turn_alone_does_not_fit() {
    let Some(gguf) = common::tiny_gguf("qwen1-tiny", "f32") else {
        return;
    };
    let long = "word ".repeat(100);
    let (ok, out, err) = qwen(&[
        "run",
        "-m",
        gguf.to_str().unwrap(),
        "--chat",
        "-c",
        "64",
        "-p",
        &long,
        "-n",
        "4",
        "--json",
    ]);
    assert!(!ok, "{out}");
    assert!(
        err.starts_with("error:") && err.contains("newest turn needs") && err.contains("64"),
        "{err}"
    );
    // A history that does not fit is dropped instead (the reference's window), no error.
    let hist = common::unique_path("long-history", "json");
    std::fs::write(&hist, serde_json::json!([[long, "ok"]]).to_string()).unwrap();
    let (ok, out, err) = qwen(&[
        "run",
        "-m",
        gguf.to_str().unwrap(),
        "--chat",
        "-c",
        "64",
        "--history",
        hist.to_str().unwrap(),
        "-p",
        "hi",
        "-n",
        "0",
        "--json",
    ]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["turns_kept"], 0);
    // Malformed history: a clear message naming the file.
    std::fs::write(&hist, "{\"not\": \"pairs\"}").unwrap();
    let (ok, _, err) = qwen(&[
        "run",
        "-m",
        gguf.to_str().unwrap(),
        "--chat",
        "--history",
        hist.to_str().unwrap(),
        "-p",
        "hi",
        "-n",
        "0",
    ]);
    assert!(!ok && err.contains(hist.to_str().unwrap()), "{err}");
}
