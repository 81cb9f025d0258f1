//! `qwen perplexity` uses llama.cpp's method: windows of n_ctx tokens on an empty cache, the
//! second half of each scored. Pinned on a tiny model against a direct computation from
//! all-position logits, and on the real 0.5B Q4_K_M against llama.cpp's recorded 4.485.

mod common;

use qwen::model::Model;
use qwen::perplexity::{nll, perplexity};
use qwen::session::{Session, SessionParams};
use qwen::tokenizer::EncodeMode;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

fn ppl_text() -> Option<PathBuf> {
    Some(common::testdata()?.join("ppl/gpl3-apache2.txt"))
}

/// The method, written out the slow way: every window evaluated with all logits kept.
fn reference(model: &Arc<Model>, tokens: &[u32], n_ctx: usize, bos: Option<u32>) -> (f64, usize) {
    let (mut sum, mut count) = (0.0, 0);
    for chunk in tokens.chunks_exact(n_ctx) {
        let mut window = chunk.to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let mut s = Session::new(
            Arc::clone(model),
            &SessionParams {
                n_ctx,
                n_threads: 2,
                max_batch: 64,
            },
        )
        .unwrap();
        let all = s.eval_all_logits(&window).unwrap();
        let v = model.config.n_vocab;
        for j in n_ctx / 2..n_ctx - 1 {
            sum += nll(&all[j * v..(j + 1) * v], chunk[j + 1]);
            count += 1;
        }
    }
    ((sum / count as f64).exp(), count)
}

#[test]
fn tiny_model_windows_and_scoring_follow_llama_cpp() {
    let (Some(gguf), Some(text)) = (common::tiny_gguf("qwen2-tiny", "f32"), ppl_text()) else {
        return;
    };
    let model = Arc::new(Model::load(gguf).unwrap());
    let text = std::fs::read_to_string(text).unwrap();
    let tokens = model.tokenizer().unwrap().encode(&text, EncodeMode::Text);
    assert_eq!(tokens.len(), 9758, "the README's token count");
    let tokens = &tokens[..250]; // 3 windows of 80 and a dropped tail of 10
    for bos in [None, Some(151643)] {
        // max_batch 32 splits each window's prefill, and the scored half, across passes.
        let mut s = Session::new(
            Arc::clone(&model),
            &SessionParams {
                n_ctx: 80,
                n_threads: 2,
                max_batch: 32,
            },
        )
        .unwrap();
        let mut seen = Vec::new();
        let got = perplexity(&mut s, tokens, bos, |i, n, p| seen.push((i, n, p))).unwrap();
        let (want, count) = reference(&model, tokens, 80, bos);
        assert_eq!(got.chunks, 3);
        assert_eq!(got.n_scored, count);
        assert_eq!(count, 3 * (80 - 40 - 1));
        assert!(
            (got.ppl - want).abs() < 1e-9 * want,
            "{bos:?}: {} vs {want}",
            got.ppl
        );
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2], (2, 3, got.ppl));
        assert!(got.ppl_stderr > 0.0 && got.ppl > 1.0);
        assert!(s.tokens().is_empty());
    }
    // Too little text for two windows is an error, as in llama.cpp.
    let mut s = Session::new(
        Arc::clone(&model),
        &SessionParams {
            n_ctx: 200,
            n_threads: 2,
            max_batch: 32,
        },
    )
    .unwrap();
    let err = perplexity(&mut s, tokens, None, |_, _, _| {}).unwrap_err();
    assert!(err.to_string().contains("at least 400 tokens"), "{err}");
}

#[test]
fn cli_json_shape() {
    let (Some(gguf), Some(text)) = (common::tiny_gguf("qwen1-tiny", "f32"), ppl_text()) else {
        return;
    };
    let short = common::unique_path("ppl", "txt");
    let full = std::fs::read_to_string(text).unwrap();
    std::fs::write(&short, &full[..2000]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args([
            "perplexity",
            "-m",
            gguf.to_str().unwrap(),
            "-c",
            "64",
            "-t",
            "2",
        ])
        .args(["--json", "-f", short.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["ppl"].as_f64().unwrap() > 1.0);
    let n_tokens = v["n_tokens"].as_u64().unwrap();
    assert_eq!(v["chunks"].as_u64().unwrap(), n_tokens / 64);
    assert_eq!(v["n_scored"].as_u64().unwrap(), (n_tokens / 64) * 31);
}

/// The number llama.cpp's `llama-perplexity -c 512` prints for this file and text (testdata
/// ppl/README.md): 4.4846 (clang) / 4.4853 (gcc). Ours must be within 1%. Slow on 2 cores.
#[test]
fn real_0_5b_q4_k_m_matches_llama_cpp() {
    let Some(text) = ppl_text() else { return };
    let Some(model) = common::real_model(common::REAL_0_5B) else {
        return;
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(["perplexity", "-c", "512", "-t", "2", "--json", "-m"])
        .arg(&model)
        .arg("-f")
        .arg(&text)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ppl = v["ppl"].as_f64().unwrap();
    eprintln!("0.5B Q4_K_M perplexity {ppl:.4} (llama.cpp 4.485): {v}");
    assert_eq!(v["chunks"], 19);
    assert!((ppl / 4.485 - 1.0).abs() < 0.01, "perplexity {ppl}");
}
