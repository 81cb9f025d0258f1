//! Batched inference: several sequences of different lengths in one session, one forward pass
//! per decode step for all live sequences. Results equal the unbatched ones (tiny fp32 models:
//! logits within 1e-4, greedy ids identical to the reference goldens), including Qwen-1 prompts
//! whose NTK alpha differs per sequence; sequences finish independently; `qwen run --batch-file`.

mod common;

use qwen::model::Model;
use qwen::sampler::{argmax, Sampler, SamplingParams};
use qwen::session::{FinishReason, Session, SessionOptions, SessionParams};
use serde_json::Value;
use std::sync::Arc;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn session(model: &Arc<Model>, n_seq: usize, max_batch: usize) -> Session {
    Session::with_options(
        Arc::clone(model),
        &SessionParams {
            n_ctx: 192,
            n_threads: 2,
            max_batch,
        },
        &SessionOptions {
            n_seq,
            ..Default::default()
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

/// A tiny model, its public golden prompts and their reference greedy continuations.
type Goldens = (Arc<Model>, Vec<Vec<u32>>, Vec<Vec<u32>>);

fn load(name: &str) -> Option<Goldens> {
    let data = common::testdata()?;
    let gguf = common::tiny_gguf(name, "f32")?;
    let file = if name == "qwen1-tiny" {
        "qwen1_model_goldens.json"
    } else {
        "qwen2_model_goldens.json"
    };
    let goldens: Value =
        serde_json::from_slice(&std::fs::read(data.join("public").join(file)).unwrap()).unwrap();
    let prompts = goldens["prompts"].as_array().unwrap();
    Some((
        Arc::new(Model::load(gguf).unwrap()),
        prompts.iter().map(|p| ids(&p["input_ids"])).collect(),
        prompts
            .iter()
            .map(|p| ids(&p["greedy"]["new_token_ids"]))
            .collect(),
    ))
}

/// Every golden prompt at once (lengths 1..150; Qwen-1 alphas 1, 3 and 7 side by side): the
/// batched greedy continuations are the reference's, and at every step each row of the batched
/// logits equals the unbatched session's logits.
fn check_batch(name: &str) {
    let Some((model, prompts, want)) = load(name) else {
        return;
    };
    let n = prompts.len();
    let mut samplers: Vec<Sampler> = (0..n)
        .map(|_| Sampler::new(SamplingParams::default()))
        .collect();
    let got = session(&model, n, 64)
        .generate_batch(&prompts, &mut samplers, 24, &[], |_, _| true)
        .unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(&g.0, w, "{name} prompt {i}: greedy");
        assert_eq!(g.1, FinishReason::Length);
    }

    // Step by step: one decode_batch per step against n unbatched sessions.
    let mut batched = session(&model, n, 64);
    let mut single: Vec<Session> = prompts.iter().map(|_| session(&model, 1, 64)).collect();
    for (i, p) in prompts.iter().enumerate() {
        let a = batched.eval_seq(i, p).unwrap().to_vec();
        let b = single[i].eval(p).unwrap();
        assert_eq!(max_abs_diff(&a, b), 0.0, "{name} prompt {i}: prefill");
        assert_eq!(batched.seq_tokens(i), p.as_slice());
    }
    let seqs: Vec<usize> = (0..n).collect();
    let mut worst = 0.0f32;
    for step in 0..8 {
        let toks: Vec<u32> = want.iter().map(|w| w[step]).collect();
        let rows = batched.decode_batch(&seqs, &toks).unwrap().to_vec();
        let v = model.config.n_vocab;
        for i in 0..n {
            let one = single[i].eval(&[toks[i]]).unwrap();
            let row = &rows[i * v..(i + 1) * v];
            worst = worst.max(max_abs_diff(row, one));
            assert_eq!(
                argmax(row),
                want[i][step + 1],
                "{name} prompt {i} step {step}"
            );
        }
    }
    assert!(worst < 1e-4, "{name}: batched logits differ by {worst}");
    for (i, one) in single.iter().enumerate() {
        assert_eq!(batched.seq_tokens(i), one.tokens());
    }
    eprintln!("{name}: {n} sequences, max |Δlogit| batched vs unbatched {worst:.1e}");
}

#[test]
fn qwen1_tiny_batch_equals_unbatched() {
    check_batch("qwen1-tiny");
}

#[test]
fn qwen2_tiny_batch_equals_unbatched() {
    check_batch("qwen2-tiny");
}

/// A stop token ends one sequence while the others go on; more prompts than a forward pass
/// takes are split across passes; a sequence's result does not depend on its neighbours.
#[test]
fn sequences_finish_independently() {
    let Some((model, prompts, want)) = load("qwen2-tiny") else {
        return;
    };
    // Sequence 0 stops at the 5th token of its greedy path (when that token does not occur
    // earlier in any path, the others run to the limit).
    let stop = want[0][4];
    let n = prompts.len();
    let mut samplers: Vec<Sampler> = (0..n)
        .map(|_| Sampler::new(SamplingParams::default()))
        .collect();
    let mut seen = vec![0usize; n];
    // max_batch 2: three sequences take two forward passes per step.
    let got = session(&model, n, 2)
        .generate_batch(&prompts, &mut samplers, 16, &[stop], |i, _| {
            seen[i] += 1;
            true
        })
        .unwrap();
    for (i, (ids, finish)) in got.iter().enumerate() {
        let cut = want[i][..16].iter().position(|&t| t == stop);
        match cut {
            Some(c) => {
                assert_eq!(ids[..], want[i][..=c], "prompt {i}");
                assert_eq!(*finish, FinishReason::Stop);
                assert_eq!(seen[i], c, "stop tokens are not passed to on_token");
            }
            None => {
                assert_eq!(ids[..], want[i][..16], "prompt {i}");
                assert_eq!(*finish, FinishReason::Length);
            }
        }
    }
    assert_eq!(got[0].0.len(), 5);
    // on_token returning false stops only that sequence.
    let mut samplers: Vec<Sampler> = (0..n)
        .map(|_| Sampler::new(SamplingParams::default()))
        .collect();
    let got = session(&model, n, 8)
        .generate_batch(&prompts, &mut samplers, 10, &[], |i, _| i != 1)
        .unwrap();
    assert_eq!(got[1].0.len(), 1);
    assert_eq!(got[1].1, FinishReason::Stop);
    assert_eq!(got[0].0, want[0][..10]);
    assert_eq!(got[2].0, want[2][..10]);
}

#[test]
fn decode_batch_rejects_bad_input() {
    let Some((model, prompts, _)) = load("qwen2-tiny") else {
        return;
    };
    let mut s = session(&model, 2, 4);
    s.eval_seq(0, &prompts[0]).unwrap();
    assert!(
        s.decode_batch(&[0, 0], &[1, 2]).is_err(),
        "same sequence twice"
    );
    assert!(s.decode_batch(&[2], &[1]).is_err(), "no such sequence");
    assert!(s.decode_batch(&[0], &[1, 2]).is_err(), "lengths differ");
    assert!(s.eval_seq(5, &[1]).is_err());
}

#[test]
fn cli_batch_file_equals_single_runs() {
    let Some(gguf) = common::tiny_gguf("qwen1-tiny", "f32") else {
        return;
    };
    let gguf = gguf.to_str().unwrap();
    let lines = [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "1 2 3",
    ];
    let file = common::unique_path("batch", "txt");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let qwen = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen"))
            .args([
                "run", "-m", gguf, "--temp", "0", "-n", "8", "--json", "-t", "2",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    for chat in [false, true] {
        let mut args = vec!["--batch-file", file.to_str().unwrap(), "--parallel", "2"];
        if chat {
            args.push("--chat");
        }
        let out = qwen(&args);
        let rows: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), lines.len());
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(rows[i]["index"], i);
            let mut single_args = vec!["-p", line];
            if chat {
                single_args.push("--chat");
            }
            let one: Value = serde_json::from_str(&qwen(&single_args)).unwrap();
            assert_eq!(rows[i]["prompt_ids"], one["prompt_ids"], "{line}");
            assert_eq!(rows[i]["generated_ids"], one["generated_ids"], "{line}");
            assert_eq!(rows[i]["text"], one["text"], "{line}");
            assert_eq!(rows[i]["finish_reason"], one["finish_reason"], "{line}");
        }
    }
}
