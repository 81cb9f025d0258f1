//! The decode loop allocates nothing: after the prompt and the first token, generating 64 more
//! tokens (forward pass on the worker pool + sampling) makes no heap allocation on any thread.

mod common;

use qwen::model::Model;
use qwen::sampler::{Sampler, SamplingParams};
use qwen::session::{Session, SessionParams};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count_decode_allocations(model: Arc<Model>, sampling: SamplingParams) -> usize {
    let mut s = Session::new(
        model,
        &SessionParams {
            n_ctx: 128,
            n_threads: 2,
            max_batch: 32,
        },
    )
    .unwrap();
    let mut sampler = Sampler::new(sampling);
    s.eval(&[9707, 11, 1879, 0, 374, 264]).unwrap();
    let mut history = s.tokens().to_vec();
    history.reserve(128);
    let mut logits = vec![0.0f32; s.logits().len()];
    let mut step = |s: &mut Session, history: &mut Vec<u32>| {
        logits.copy_from_slice(s.logits());
        let t = sampler.sample(&mut logits, history);
        history.push(t);
        s.eval(&[t]).unwrap();
    };
    step(&mut s, &mut history); // the first token may warm up lazily built state
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..64 {
        step(&mut s, &mut history);
    }
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

#[test]
fn decoding_64_tokens_allocates_nothing() {
    // The counter itself works (so a zero below means something).
    COUNTING.store(true, Ordering::SeqCst);
    std::hint::black_box(vec![1u8; 10]);
    COUNTING.store(false, Ordering::SeqCst);
    assert!(ALLOCATIONS.swap(0, Ordering::SeqCst) > 0);

    let Some(path) = common::tiny_gguf("qwen2-tiny", "q8_0") else {
        return;
    };
    let model = Arc::new(Model::load(path).unwrap());
    let greedy = count_decode_allocations(Arc::clone(&model), SamplingParams::default());
    assert_eq!(greedy, 0, "greedy decode allocated {greedy} times");
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 40,
        repetition_penalty: 1.1,
        seed: 1,
    };
    let n = count_decode_allocations(model, sampled);
    assert_eq!(n, 0, "sampled decode allocated {n} times");
}
