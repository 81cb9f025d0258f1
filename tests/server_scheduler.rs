//! The server's continuous-batching scheduler on the tiny models, without HTTP: requests that
//! run together give exactly what each gives alone (greedy), prompts joining mid-stream are
//! prefilled in chunks without changing results, stop strings and limits end generation, and a
//! request whose receiver is dropped frees its slot (queued or running).
#![cfg(feature = "server")]

mod common;

use qwen::model::Model;
use qwen::sampler::{Sampler, SamplingParams};
use qwen::server::scheduler::{
    EngineError, Event, EventReceiver, Finished, GenRequest, Scheduler, SchedulerConfig,
    StopReason, SubmitError,
};
use qwen::session::{Session, SessionOptions, SessionParams};
use qwen::tokenizer::EncodeMode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N_CTX: usize = 256;
/// Context and length of a generation that must still be running when a test looks at it:
/// seconds of the tiny model even on a fast host (1400 tok/s on 2 Sapphire Rapids threads),
/// so no test races the machine's speed. Tests end such requests early.
const LONG_CTX: usize = 4096;
const LONG_TOKENS: usize = 4000;

fn model(name: &str) -> Option<Arc<Model>> {
    let path = common::tiny_gguf(name, "f32")?;
    Some(Arc::new(Model::load(path).unwrap()))
}

fn scheduler(model: &Arc<Model>, slots: usize, config: SchedulerConfig) -> Scheduler {
    scheduler_with_ctx(model, slots, config, N_CTX)
}

fn scheduler_with_ctx(
    model: &Arc<Model>,
    slots: usize,
    config: SchedulerConfig,
    n_ctx: usize,
) -> Scheduler {
    let session = Session::with_options(
        Arc::clone(model),
        &SessionParams {
            n_ctx,
            n_threads: 2,
            max_batch: 64,
        },
        &SessionOptions {
            n_seq: slots,
            ..Default::default()
        },
    )
    .unwrap();
    Scheduler::start(session, config)
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenRequest {
    GenRequest {
        prompt,
        sampling: SamplingParams::default(),
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        max_tokens,
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
        deadline: None,
    }
}

/// Waits for the end of a request: its text and how it finished.
fn collect(rx: &mut EventReceiver) -> (String, Result<Finished, EngineError>) {
    let mut text = String::new();
    loop {
        match rx.blocking_recv().expect("the engine ends every request") {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => return (text, Ok(f)),
            Event::Error(e) => return (text, Err(e)),
        }
    }
}

/// Prompts of several lengths; the longest exceed the prefill chunk used below and, for
/// Qwen-1, its `seq_length` (64), so their NTK alpha is not 1.
fn prompts(model: &Model) -> Vec<Vec<u32>> {
    let tok = model.tokenizer().unwrap();
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(9);
    [
        "Hello",
        "def fibonacci(n):",
        "What is the capital of France? Answer in one word.",
        long.as_str(),
        "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24",
    ]
    .iter()
    .map(|p| tok.encode(p, EncodeMode::Text))
    .collect()
}

/// What a session gives for `prompt` on its own: prefill, then one token at a time.
fn alone(model: &Arc<Model>, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let mut s = Session::new(
        Arc::clone(model),
        &SessionParams {
            n_ctx: N_CTX,
            n_threads: 2,
            max_batch: 64,
        },
    )
    .unwrap();
    s.eval(prompt).unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    s.generate(&mut sampler, max_tokens, &[], |_| true)
        .unwrap()
        .0
}

fn batched_equals_alone(name: &str) {
    let Some(model) = model(name) else { return };
    let prompts = prompts(&model);
    let max_tokens = 24;
    // Fewer slots than requests, and a prefill chunk shorter than the long prompts: requests
    // queue, join while others decode, and are prefilled over several steps.
    let sched = scheduler(
        &model,
        3,
        SchedulerConfig {
            max_queue: 16,
            prefill_chunk: 16,
        },
    );
    let mut rxs: Vec<_> = prompts
        .iter()
        .map(|p| sched.submit(greedy(p.clone(), max_tokens)).unwrap())
        .collect();
    let tok = model.tokenizer().unwrap();
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (text, done) = collect(rx);
        let done = done.unwrap();
        let want = alone(&model, &prompts[i], max_tokens);
        assert_eq!(done.token_ids, want, "{name} prompt {i}");
        assert_eq!(done.reason, StopReason::Length);
        assert_eq!(done.prompt_tokens, prompts[i].len());
        assert_eq!(text, tok.decode(&want), "{name} prompt {i}: streamed text");
    }
    let stats = sched.stats();
    assert_eq!((stats.active, stats.queued), (0, 0));
    assert_eq!(stats.completed, prompts.len() as u64);
    // Batching happened: fewer decode steps than decoded rows.
    assert!(stats.decode_rows > stats.decode_steps, "{stats:?}");
}

#[test]
fn batched_greedy_equals_unbatched_qwen2() {
    batched_equals_alone("qwen2-tiny");
}

#[test]
fn batched_greedy_equals_unbatched_qwen1_with_ntk() {
    batched_equals_alone("qwen1-tiny");
}

/// A request that extends an earlier one's prompt and answer (a chat's next turn) finds that
/// prefix in the slot's cache, evaluates only the rest, and answers exactly as it would alone.
/// For Qwen-1, a prompt long enough for another NTK alpha is evaluated from scratch.
fn prefix_reuse(name: &str) {
    let Some(model) = model(name) else { return };
    let sched = scheduler(&model, 2, SchedulerConfig::default());
    let p = prompts(&model);
    let (_, first) = collect(&mut sched.submit(greedy(p[1].clone(), 10)).unwrap());
    let first = first.unwrap();
    assert_eq!(first.cached_tokens, 0);
    let mut next = p[1].clone();
    next.extend_from_slice(&first.token_ids);
    next.extend_from_slice(&p[2]);
    let (_, second) = collect(&mut sched.submit(greedy(next.clone(), 12)).unwrap());
    let second = second.unwrap();
    // The cache held the prompt and the 9 answer tokens that were evaluated (the 10th was
    // sampled last and never fed back).
    assert_eq!(second.cached_tokens, p[1].len() + 9);
    assert_eq!(second.token_ids, alone(&model, &next, 12));
    // The same prompt again: everything but the last token is reused.
    let (_, third) = collect(&mut sched.submit(greedy(next.clone(), 12)).unwrap());
    let third = third.unwrap();
    assert_eq!(third.cached_tokens, next.len() - 1);
    assert_eq!(third.token_ids, second.token_ids);
    // A long prompt that starts the same way (Qwen-1: past seq_length, another alpha).
    let mut long = next.clone();
    long.extend_from_slice(&p[3]);
    let (_, fourth) = collect(&mut sched.submit(greedy(long.clone(), 8)).unwrap());
    let fourth = fourth.unwrap();
    let cfg = &model.config;
    if cfg.ntk_alpha(long.len()) != cfg.ntk_alpha(next.len()) {
        assert_eq!(fourth.cached_tokens, 0, "{name}");
    } else {
        assert_eq!(fourth.cached_tokens, next.len(), "{name}");
    }
    assert_eq!(fourth.token_ids, alone(&model, &long, 8));
    assert!(sched.stats().reused_tokens > 0);
}

#[test]
fn prefix_reuse_qwen2() {
    prefix_reuse("qwen2-tiny");
}

#[test]
fn prefix_reuse_qwen1_respects_ntk() {
    prefix_reuse("qwen1-tiny");
}

#[test]
fn stop_tokens_and_strings_end_generation() {
    let Some(model) = model("qwen2-tiny") else {
        return;
    };
    let sched = scheduler(&model, 2, SchedulerConfig::default());
    let prompt = prompts(&model)[1].clone();
    let (text, done) = collect(&mut sched.submit(greedy(prompt.clone(), 40)).unwrap());
    let done = done.unwrap();
    let tok = model.tokenizer().unwrap();

    // A stop token: the fifth generated id ends generation there and is not streamed.
    let mut req = greedy(prompt.clone(), 40);
    req.stop_tokens = vec![done.token_ids[4]];
    let first = done
        .token_ids
        .iter()
        .position(|&t| t == done.token_ids[4])
        .unwrap();
    let (t2, d2) = collect(&mut sched.submit(req).unwrap());
    let d2 = d2.unwrap();
    assert_eq!(d2.reason, StopReason::Stop);
    assert_eq!(d2.token_ids, done.token_ids[..=first].to_vec());
    assert_eq!(t2, tok.decode(&done.token_ids[..first]));

    // A stop string that spans a token boundary somewhere in the middle of the text.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 12, "{text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let mut req = greedy(prompt, 40);
    req.stop_strings = vec![stop.clone()];
    let (t3, d3) = collect(&mut sched.submit(req).unwrap());
    let d3 = d3.unwrap();
    assert_eq!(d3.reason, StopReason::Stop);
    assert_eq!(d3.stop_string.as_deref(), Some(stop.as_str()));
    assert_eq!(t3, text[..text.find(&stop).unwrap()], "stop {stop:?}");
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dropped_receivers_free_slots_and_queue_places() {
    let Some(model) = model("qwen2-tiny") else {
        return;
    };
    let sched = scheduler_with_ctx(
        &model,
        1,
        SchedulerConfig {
            max_queue: 1,
            prefill_chunk: 64,
        },
        LONG_CTX,
    );
    let prompt = prompts(&model)[0].clone();
    // A long generation holds the only slot...
    let mut running = sched.submit(greedy(prompt.clone(), LONG_TOKENS)).unwrap();
    assert!(matches!(running.blocking_recv(), Some(Event::Text(_))));
    assert_eq!(sched.stats().active, 1);
    // ...one request waits, a second is refused...
    let queued = sched.submit(greedy(prompt.clone(), 5)).unwrap();
    assert_eq!(
        sched.submit(greedy(prompt.clone(), 5)).unwrap_err(),
        SubmitError::QueueFull
    );
    // ...until the waiting client leaves: its place is free again at once.
    drop(queued);
    let mut next = sched.submit(greedy(prompt.clone(), 5)).unwrap();
    // The running client leaves: its slot goes to the waiting request.
    drop(running);
    let (_, done) = collect(&mut next);
    assert_eq!(done.unwrap().token_ids.len(), 5);
    wait_until("no active slots", || sched.stats().active == 0);
    let s = sched.stats();
    assert_eq!((s.active, s.queued), (0, 0));
    assert_eq!(s.cancelled, 2, "{s:?}");
}

#[test]
fn deadlines_end_requests() {
    let Some(model) = model("qwen2-tiny") else {
        return;
    };
    let sched = scheduler_with_ctx(&model, 1, SchedulerConfig::default(), LONG_CTX);
    let prompt = prompts(&model)[0].clone();
    let mut req = greedy(prompt.clone(), LONG_TOKENS);
    req.deadline = Some(Instant::now() + Duration::from_millis(150));
    let (_, res) = collect(&mut sched.submit(req).unwrap());
    assert_eq!(res.unwrap_err(), EngineError::Timeout);
    wait_until("slot freed", || sched.stats().active == 0);
}

#[test]
fn invalid_requests_are_refused() {
    let Some(model) = model("qwen2-tiny") else {
        return;
    };
    let sched = scheduler(&model, 1, SchedulerConfig::default());
    let bad = |p: Vec<u32>, n| matches!(sched.submit(greedy(p, n)), Err(SubmitError::Invalid(_)));
    assert!(bad(vec![], 5));
    assert!(bad(vec![1; N_CTX], 5));
    assert!(bad(vec![u32::MAX], 5));
    assert!(bad(vec![1], 0));
    // Generation stops at the end of the context: 3 free places hold the first 3 sampled
    // tokens; the 4th is sampled from the full context and never evaluated.
    let (_, done) = collect(&mut sched.submit(greedy(vec![1; N_CTX - 3], 100)).unwrap());
    let done = done.unwrap();
    assert_eq!((done.reason, done.token_ids.len()), (StopReason::Length, 4));
}

#[test]
fn shutdown_ends_every_request() {
    let Some(model) = model("qwen2-tiny") else {
        return;
    };
    let sched = scheduler_with_ctx(&model, 1, SchedulerConfig::default(), LONG_CTX);
    let prompt = prompts(&model)[0].clone();
    let mut a = sched.submit(greedy(prompt.clone(), LONG_TOKENS)).unwrap();
    let mut b = sched.submit(greedy(prompt.clone(), LONG_TOKENS)).unwrap();
    assert!(matches!(a.blocking_recv(), Some(Event::Text(_))));
    sched.shutdown();
    assert_eq!(collect(&mut a).1.unwrap_err(), EngineError::Shutdown);
    assert_eq!(collect(&mut b).1.unwrap_err(), EngineError::Shutdown);
    assert_eq!(
        sched.submit(greedy(prompt, 1)).unwrap_err(),
        SubmitError::ShuttingDown
    );
}
