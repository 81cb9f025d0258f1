//! Multi-turn chat on one session: KV reuse (a turn evaluates only what it adds, and the result
//! equals a fresh prefill), Qwen-1's NTK recompute, stop strings across token boundaries in
//! streamed output, cancellation, and the 5-turn `qwen chat` on the real 0.5B model.

mod common;

use qwen::chat::{generate_text, ChatSession, Conversation, GenerateOptions};
use qwen::model::Model;
use qwen::sampler::{Sampler, SamplingParams};
use qwen::session::{FinishReason, Session, SessionParams};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

fn model(name: &str) -> Option<Arc<Model>> {
    let gguf = common::tiny_gguf(name, "f32")?;
    Some(Arc::new(Model::load(gguf).unwrap()))
}

fn session(model: &Arc<Model>) -> Session {
    Session::new(
        Arc::clone(model),
        &SessionParams {
            n_ctx: 512,
            n_threads: 2,
            max_batch: 32,
        },
    )
    .unwrap()
}

fn greedy() -> Sampler {
    Sampler::new(SamplingParams::default())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Each turn after the first evaluates only the tokens the cache lacks, and the logits after
/// the reused prefill equal those of a fresh session that evaluates the whole context.
/// Qwen-1 must recompute when the NTK alpha for the new length differs from the cached one;
/// `expect_recompute` says whether that has to happen at least once.
fn check_kv_reuse(name: &str, queries: &[&str], expect_recompute: bool) {
    let Some(model) = model(name) else { return };
    let mut chat = ChatSession::new(session(&model), Conversation::default()).unwrap();
    let mut sampler = greedy();
    let mut prev_prompt = 0;
    let mut recomputed = false;
    for (i, q) in queries.iter().enumerate() {
        let cached = chat.session().tokens().to_vec();
        let counter = chat.session().n_evaluated();
        let old_alpha = chat.session().ntk_alpha();
        let turn = chat.prefill(q, 8).unwrap();
        let ctx = turn.ctx.ids.clone();
        assert_eq!(
            chat.session().n_evaluated() - counter,
            turn.evaluated as u64
        );
        let reused = common_prefix(&cached, &ctx).min(ctx.len() - 1);
        if i > 0 && model.config.ntk_alpha(ctx.len()) != old_alpha {
            assert_eq!(turn.evaluated, ctx.len(), "{name} turn {i}: NTK recompute");
            recomputed = true;
        } else {
            assert_eq!(turn.evaluated, ctx.len() - reused, "{name} turn {i}");
            if i > 0 {
                // The whole previous context was reused: the turn costs at most what it added.
                assert!(reused >= prev_prompt, "{name} turn {i}: reused {reused}");
                assert!(turn.evaluated <= ctx.len() - prev_prompt);
            }
        }
        let mut fresh = session(&model);
        let want = fresh.eval(&ctx).unwrap().to_vec();
        let diff = max_abs_diff(chat.session().logits(), &want);
        assert!(diff < 1e-4, "{name} turn {i}: logits differ by {diff}");
        assert_eq!(fresh.ntk_alpha(), chat.session().ntk_alpha());
        let reply = chat.generate(turn, &mut sampler, |_| true).unwrap();
        assert_eq!(chat.conversation.history.len(), i + 1);
        eprintln!(
            "{name} turn {i}: prompt {} evaluated {} alpha {} generated {}",
            reply.prompt_tokens,
            reply.prompt_tokens_evaluated,
            chat.session().ntk_alpha(),
            reply.generated_ids.len()
        );
        prev_prompt = reply.prompt_tokens;
    }
    assert_eq!(recomputed, expect_recompute, "{name}");
}

#[test]
fn qwen2_turns_evaluate_only_new_tokens() {
    check_kv_reuse(
        "qwen2-tiny",
        &["Hello there.", "Tell me more.", "And then?", "Thanks!"],
        false,
    );
}

/// Qwen-1 (seq_length 64): once the context passes 64 tokens the reference's fresh prefill
/// uses another NTK alpha, so the cache built with alpha 1 cannot be reused.
#[test]
fn qwen1_recomputes_when_the_ntk_alpha_changes() {
    check_kv_reuse(
        "qwen1-tiny",
        &[
            "Hi",
            "Tell me a story.",
            "Why? Please explain it in detail, step by step, with an example or two.",
        ],
        true,
    );
}

/// Streams greedy text once without stop strings to learn the per-token pieces, then picks a
/// stop string that straddles two tokens and checks it never reaches the stream.
#[test]
fn stop_string_across_tokens_is_never_streamed() {
    let Some(model) = model("qwen2-tiny") else {
        return;
    };
    let prompt: Vec<u32> = vec![9707, 11, 1879, 0, 13, 576, 374];
    let run = |stops: Vec<String>, cancel_after: Option<usize>| {
        let mut s = session(&model);
        s.eval(&prompt).unwrap();
        let mut pieces = Vec::new();
        let opts = GenerateOptions {
            max_tokens: 24,
            stop_tokens: vec![],
            stop_strings: stops,
        };
        let gen = generate_text(&mut s, &mut greedy(), &opts, |p| {
            pieces.push(p.to_string());
            cancel_after != Some(pieces.len())
        })
        .unwrap();
        (gen, pieces)
    };
    let (full, pieces) = run(vec![], None);
    assert_eq!(full.finish_reason, FinishReason::Length);
    assert_eq!(full.token_ids.len(), 24);
    assert_eq!(pieces.concat(), full.text);
    let i = (0..pieces.len() - 1)
        .find(|&i| !pieces[i].is_empty() && !pieces[i + 1].is_empty() && i > 2)
        .expect("two adjacent non-empty pieces");
    let stop = format!(
        "{}{}",
        pieces[i].chars().last().unwrap(),
        pieces[i + 1].chars().next().unwrap()
    );
    let cut = full.text.find(&stop).unwrap();
    let (gen, streamed) = run(vec![stop.clone()], None);
    assert_eq!(gen.finish_reason, FinishReason::Stop);
    assert_eq!(gen.stop_string.as_deref(), Some(stop.as_str()));
    assert_eq!(gen.text, full.text[..cut]);
    assert_eq!(streamed.concat(), full.text[..cut], "stop string {stop:?}");
    assert!(gen.token_ids.len() < full.token_ids.len());
    // Pieces reach the caller as soon as they cannot start the stop string.
    assert!(streamed.len() >= i.min(3), "{streamed:?}");

    // Cancellation: the callback returns false on the third piece.
    let (gen, streamed) = run(vec![], Some(3));
    assert_eq!(gen.finish_reason, FinishReason::Cancelled);
    assert_eq!(streamed.len(), 3);
    assert_eq!(gen.text, streamed.concat());
    assert!(gen.token_ids.len() < 24);
}

fn real_model() -> Option<PathBuf> {
    common::real_model(common::REAL_0_5B)
}

/// Parses `[turn N: prompt P tokens, E evaluated, R reused; ...]` lines from stderr.
fn turn_stats(stderr: &str) -> Vec<(usize, usize)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.split("prompt ").nth(1)?;
            let mut nums = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty());
            Some((nums.next()?.parse().ok()?, nums.next()?.parse().ok()?))
        })
        .collect()
}

/// `qwen chat` with piped stdin on the real 0.5B model: five turns, the fifth asks about the
/// first, and every later turn evaluates only what it added to the conversation.
#[test]
fn five_turn_piped_chat_reuses_the_kv_cache() {
    let Some(m) = real_model() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen"))
        .args(["chat", "--temp", "0", "-n", "48", "-t", "2", "-m"])
        .arg(&m)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            "My name is Alice and my favorite color is green. Please remember both.\n\
             What is 2 + 3?\n\
             Name a programming language that starts with R.\n\
             Write a one-line Python expression that reverses a string s.\n\
             What is my name, and what is my favorite color?\n"
                .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stdout}\n{stderr}");
    let stats = turn_stats(&stderr);
    assert_eq!(stats.len(), 5, "{stderr}");
    assert_eq!(stats[0].0, stats[0].1, "turn 1 evaluates its whole prompt");
    for n in 1..5 {
        let (prompt, evaluated) = stats[n];
        let added = prompt - stats[n - 1].0;
        assert!(
            evaluated <= added && evaluated * 3 < prompt,
            "turn {}: {evaluated} of {prompt} evaluated, {added} added: {stderr}",
            n + 1
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains("Alice") && last.to_lowercase().contains("green"),
        "turn 5 remembers turn 1: {stdout}"
    );
}

/// `Session::eval_greedy` (the CPU's path: its logits are in host memory) is the argmax of
/// what `eval` returns, step after step, with the sequence advanced the same way (Qwen-1's NTK
/// alpha fixed from a one-token start, as `eval` fixes it).
#[test]
fn eval_greedy_is_the_argmax_of_eval() {
    let Some(model) = model("qwen1-tiny") else {
        return;
    };
    let (mut a, mut b) = (session(&model), session(&model));
    let mut token = 100u32;
    for _ in 0..6 {
        let want = qwen::sampler::argmax(a.eval(&[token]).unwrap());
        let got = b.eval_greedy(token).unwrap();
        assert_eq!(got, want);
        token = got;
    }
    assert_eq!(a.tokens(), b.tokens());
    assert!(b.eval_greedy(u32::MAX).is_err());
}
