//! The continuous-batching engine: one thread owns one [`Session`] whose sequences are the
//! server's slots. Every step it
//!
//! 1. drops requests whose client went away (their receiver was dropped) or whose deadline
//!    passed, freeing their slots at once;
//! 2. moves queued requests into free slots, each into the slot whose cache shares the longest
//!    prefix with its prompt (a chat's next turn, a shared system prompt), which is then not
//!    evaluated again;
//! 3. evaluates a chunk of one joining request's prompt (`eval_seq`), so a long prompt delays
//!    the running streams by one chunk per step rather than by its whole length;
//! 4. runs one batched decode step (`decode_batch`) over every slot that is generating, so
//!    the weights are read once per step for all of them.
//!
//! Each slot samples with its own [`Sampler`], decodes text with its own [`StreamDecoder`] and
//! holds back possible stop strings with its own [`StopMatcher`]. Results go to the request's
//! channel as [`Event`]s; the HTTP layer never touches the session.

use crate::chat::StopMatcher;
use crate::model::Model;
use crate::sampler::{Sampler, SamplingParams};
use crate::session::Session;
use crate::tokenizer::StreamDecoder;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Where a request's [`Event`]s arrive (`recv().await`, or `blocking_recv()` outside async code).
pub type EventReceiver = UnboundedReceiver<Event>;

/// One generation request, already tokenized and validated by the API layer.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// OpenAI's penalties over the tokens generated so far: `presence` is subtracted once from
    /// the logit of every token that appeared, `frequency` once per appearance. 0 = off.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Most tokens to sample (the context length may end generation earlier).
    pub max_tokens: usize,
    /// Token ids that end generation (not part of the text).
    pub stop_tokens: Vec<u32>,
    /// Strings that end generation; the text stops just before the first one.
    pub stop_strings: Vec<String>,
    /// When the request is abandoned, whether queued or generating.
    pub deadline: Option<Instant>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

/// The end of a successful generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub reason: StopReason,
    /// The stop string that ended generation, if one did.
    pub stop_string: Option<String>,
    /// Every sampled id, a final stop token included.
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache (a slot's earlier request shared that prefix).
    pub cached_tokens: usize,
    /// Time from submission to the first sampled token, and the whole request.
    pub time_to_first_token: Duration,
    pub elapsed: Duration,
}

/// Why a request failed after it was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The deadline passed (queued or generating).
    Timeout,
    /// The server is shutting down.
    Shutdown,
    /// The session refused the request (a bug or an unexpected input).
    Internal(String),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Timeout => write!(f, "the request timed out"),
            EngineError::Shutdown => write!(f, "the server is shutting down"),
            EngineError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

/// What a request's receiver gets: text deltas, then exactly one `Done` or `Error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Text that is final: whole characters, never any part of a stop string.
    Text(String),
    Done(Finished),
    Error(EngineError),
}

/// Why [`Scheduler::submit`] refused a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Every slot is busy and the queue is full: try again later.
    QueueFull,
    /// The request cannot run on this session (empty prompt, too long, bad token ids).
    Invalid(String),
    ShuttingDown,
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Requests that may wait for a slot; more are refused with [`SubmitError::QueueFull`].
    pub max_queue: usize,
    /// Most prompt tokens evaluated per step while other slots are generating.
    pub prefill_chunk: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_queue: 64,
            prefill_chunk: 64,
        }
    }
}

/// Counters for `/health` and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub slots: usize,
    /// Slots holding a request (prefilling or generating).
    pub active: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Requests finished (successfully, failed or cancelled) since start.
    pub completed: u64,
    /// Requests cancelled because their client went away.
    pub cancelled: u64,
    /// Tokens sampled since start.
    pub generated_tokens: u64,
    /// Prompt tokens found in a slot's cache instead of evaluated.
    pub reused_tokens: u64,
    /// Batched decode steps run, and the sequences they advanced in total.
    pub decode_steps: u64,
    pub decode_rows: u64,
}

struct Job {
    req: GenRequest,
    tx: UnboundedSender<Event>,
    submitted: Instant,
}

struct Queue {
    jobs: VecDeque<Job>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    active: AtomicUsize,
    completed: AtomicU64,
    cancelled: AtomicU64,
    generated_tokens: AtomicU64,
    reused_tokens: AtomicU64,
    decode_steps: AtomicU64,
    decode_rows: AtomicU64,
}

impl Shared {
    /// Removes the queued requests whose client left or whose deadline passed.
    fn purge(&self, q: &mut Queue) {
        let now = Instant::now();
        q.jobs.retain(|j| {
            let gone = j.tx.is_closed();
            let late = j.req.deadline.is_some_and(|d| now >= d);
            if late && !gone {
                let _ = j.tx.send(Event::Error(EngineError::Timeout));
            }
            if gone || late {
                self.completed.fetch_add(1, Ordering::Relaxed);
                if gone {
                    self.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
            !(gone || late)
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic on the engine thread cannot leave the queue half-updated (pushes and pops
        // are single calls), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to the engine thread. Dropping it cancels every request and joins the thread.
pub struct Scheduler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    model: Arc<Model>,
    n_slots: usize,
    n_ctx: usize,
    max_queue: usize,
}

impl Scheduler {
    /// Starts the engine thread; each of the session's sequences is one slot.
    pub fn start(session: Session, config: SchedulerConfig) -> Scheduler {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            active: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            reused_tokens: AtomicU64::new(0),
            decode_steps: AtomicU64::new(0),
            decode_rows: AtomicU64::new(0),
        });
        let model = Arc::clone(session.model());
        let n_slots = session.n_seq();
        let n_ctx = session.n_ctx();
        let max_queue = config.max_queue;
        let engine = Engine::new(session, Arc::clone(&shared), config);
        let thread = std::thread::Builder::new()
            .name("qwen-engine".into())
            .spawn(move || engine.run())
            .expect("spawning the engine thread");
        Scheduler {
            shared,
            thread: Some(thread),
            model,
            n_slots,
            n_ctx,
            max_queue,
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Context length of each slot.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Queues `req`. Events arrive on the returned receiver; dropping it cancels the request
    /// and frees its slot at the next step.
    pub fn submit(&self, req: GenRequest) -> Result<EventReceiver, SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if req.prompt.len() >= self.n_ctx {
            return Err(SubmitError::Invalid(format!(
                "the prompt has {} tokens; the context holds {} and generation needs at least one more",
                req.prompt.len(),
                self.n_ctx
            )));
        }
        let n_vocab = self.model.config.n_vocab;
        if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(SubmitError::Invalid(format!(
                "token id {bad} is outside the vocabulary (size {n_vocab})"
            )));
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::Invalid("max_tokens must be at least 1".into()));
        }
        let (tx, rx) = unbounded_channel();
        let mut q = self.shared.lock();
        if q.shutdown {
            return Err(SubmitError::ShuttingDown);
        }
        // Waiting requests whose client left do not count against the queue.
        self.shared.purge(&mut q);
        if q.jobs.len() >= self.max_queue {
            return Err(SubmitError::QueueFull);
        }
        q.jobs.push_back(Job {
            req,
            tx,
            submitted: Instant::now(),
        });
        drop(q);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    pub fn stats(&self) -> Stats {
        let queued = self.shared.lock().jobs.len();
        let s = &self.shared;
        Stats {
            slots: self.n_slots,
            active: s.active.load(Ordering::Relaxed),
            queued,
            completed: s.completed.load(Ordering::Relaxed),
            cancelled: s.cancelled.load(Ordering::Relaxed),
            generated_tokens: s.generated_tokens.load(Ordering::Relaxed),
            reused_tokens: s.reused_tokens.load(Ordering::Relaxed),
            decode_steps: s.decode_steps.load(Ordering::Relaxed),
            decode_rows: s.decode_rows.load(Ordering::Relaxed),
        }
    }

    /// Ends every queued and running request with [`EngineError::Shutdown`] and refuses new
    /// ones; the engine thread exits at its next step.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A request in a slot.
struct Slot {
    job: Job,
    sampler: Sampler,
    decoder: StreamDecoder,
    matcher: StopMatcher,
    /// Prompt tokens evaluated so far (or found in the cache).
    prefilled: usize,
    /// Prompt tokens that were already in the slot's cache.
    cached: usize,
    /// The token to feed in the next decode step.
    next: Option<u32>,
    generated: Vec<u32>,
    /// Appearances of each generated token (only with presence/frequency penalties).
    counts: FxHashMap<u32, u32>,
    first_token_at: Option<Instant>,
    text: String,
}

impl Slot {
    fn new(job: Job) -> Slot {
        let matcher = StopMatcher::new(&job.req.stop_strings);
        Slot {
            sampler: Sampler::new(job.req.sampling.clone()),
            decoder: StreamDecoder::new(),
            matcher,
            prefilled: 0,
            cached: 0,
            next: None,
            generated: Vec::with_capacity(job.req.max_tokens.min(4096)),
            counts: FxHashMap::default(),
            first_token_at: None,
            text: String::with_capacity(64),
            job,
        }
    }

    fn prefilling(&self) -> bool {
        self.prefilled < self.job.req.prompt.len()
    }
}

/// What a sampled token did to its slot.
enum After {
    /// Keep going: `next` holds the token for the next decode step.
    Continue,
    /// The request is over (finished, failed or cancelled); free the slot.
    Free,
}

struct Engine {
    session: Session,
    shared: Arc<Shared>,
    config: SchedulerConfig,
    slots: Vec<Option<Slot>>,
    /// Slot indices in the order they were admitted (prefill goes first come, first served).
    order: Vec<usize>,
    /// Logits of the step being sampled, one row per sequence.
    rows: Vec<f32>,
    seqs: Vec<usize>,
    toks: Vec<u32>,
}

impl Engine {
    fn new(session: Session, shared: Arc<Shared>, config: SchedulerConfig) -> Engine {
        let n = session.n_seq();
        let n_vocab = session.model().config.n_vocab;
        Engine {
            session,
            shared,
            config,
            slots: (0..n).map(|_| None).collect(),
            order: Vec::with_capacity(n),
            rows: vec![0.0; n * n_vocab],
            seqs: Vec::with_capacity(n),
            toks: Vec::with_capacity(n),
        }
    }

    fn run(mut self) {
        loop {
            if !self.admit() {
                self.cancel_all(EngineError::Shutdown);
                return;
            }
            self.drop_gone();
            if self.order.is_empty() {
                continue;
            }
            self.prefill_step();
            self.decode_step();
        }
    }

    /// Moves queued requests into free slots. Blocks while there is nothing to do. Returns
    /// false when the scheduler is shutting down.
    fn admit(&mut self) -> bool {
        let mut q = self.shared.lock();
        loop {
            if q.shutdown {
                for job in q.jobs.drain(..) {
                    let _ = job.tx.send(Event::Error(EngineError::Shutdown));
                    self.shared.completed.fetch_add(1, Ordering::Relaxed);
                }
                return false;
            }
            self.shared.purge(&mut q);
            while self.slots.iter().any(Option::is_none) {
                let Some(job) = q.jobs.pop_front() else { break };
                let (i, reuse) = self.pick_slot(&job.req.prompt);
                self.session.truncate_seq(i, reuse);
                let mut slot = Slot::new(job);
                slot.prefilled = reuse;
                slot.cached = reuse;
                self.shared
                    .reused_tokens
                    .fetch_add(reuse as u64, Ordering::Relaxed);
                self.slots[i] = Some(slot);
                self.order.push(i);
            }
            self.shared
                .active
                .store(self.order.len(), Ordering::Relaxed);
            if !self.order.is_empty() {
                return true;
            }
            // Idle: sleep until a request arrives (or the earliest queued deadline, though
            // with every slot free nothing stays queued).
            q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The free slot for `prompt`: the one whose cache shares the longest prefix with it (that
    /// prefix is not evaluated again), ties to the shortest cache (keeping longer ones for
    /// later). Returns the slot and how many prompt tokens it already holds. At least the last
    /// prompt token is always evaluated, for its logits.
    fn pick_slot(&self, prompt: &[u32]) -> (usize, usize) {
        let cfg = &self.session.model().config;
        let alpha = cfg.ntk_alpha(prompt.len());
        let mut best = (usize::MAX, 0usize, usize::MAX);
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.is_some() {
                continue;
            }
            let cached = self.session.seq_tokens(i);
            // Qwen-1's dynamic NTK: keys cached under another alpha do not fit this prompt.
            let common = if self.session.seq_ntk_alpha(i) == alpha {
                cached
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(prompt.len() - 1)
            } else {
                0
            };
            if best.0 == usize::MAX
                || common > best.1
                || (common == best.1 && cached.len() < best.2)
            {
                best = (i, common, cached.len());
            }
        }
        (best.0, best.1)
    }

    /// Frees the slots whose client went away or whose deadline passed.
    fn drop_gone(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let Some(slot) = &self.slots[i] else { continue };
            if slot.job.tx.is_closed() {
                self.shared.cancelled.fetch_add(1, Ordering::Relaxed);
                self.free(i);
            } else if slot.job.req.deadline.is_some_and(|d| now >= d) {
                let _ = slot.job.tx.send(Event::Error(EngineError::Timeout));
                self.free(i);
            }
        }
    }

    /// Ends slot `i`'s request. Its cache stays for a later request with the same prefix.
    fn free(&mut self, i: usize) {
        if self.slots[i].take().is_some() {
            self.order.retain(|&s| s != i);
            self.shared.completed.fetch_add(1, Ordering::Relaxed);
            self.shared
                .active
                .store(self.order.len(), Ordering::Relaxed);
        }
    }

    fn cancel_all(&mut self, err: EngineError) {
        for i in 0..self.slots.len() {
            if let Some(slot) = &self.slots[i] {
                let _ = slot.job.tx.send(Event::Error(err.clone()));
                self.free(i);
            }
        }
    }

    /// Evaluates up to one chunk of prompt tokens, first come first served; a prompt that
    /// completes samples its first token.
    fn prefill_step(&mut self) {
        let decoding = self.order.iter().any(|&i| {
            self.slots[i]
                .as_ref()
                .is_some_and(|s| !s.prefilling() && s.next.is_some())
        });
        let mut budget = if decoding {
            self.config.prefill_chunk.max(1)
        } else {
            self.session.max_batch()
        };
        let n_vocab = self.session.model().config.n_vocab;
        let order = self.order.clone();
        for i in order {
            if budget == 0 {
                break;
            }
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            if !slot.prefilling() {
                continue;
            }
            let prompt = &slot.job.req.prompt;
            let mut n = budget.min(prompt.len() - slot.prefilled);
            if slot.prefilled == 0 {
                // Qwen-1 fixes its dynamic-NTK alpha from the length of the first prefill, so a
                // prompt whose alpha would differ is evaluated in one go, as on its own.
                let cfg = &self.session.model().config;
                if cfg.ntk_alpha(n) != cfg.ntk_alpha(prompt.len()) {
                    n = prompt.len();
                }
            }
            let chunk = &prompt[slot.prefilled..slot.prefilled + n];
            budget = budget.saturating_sub(n);
            let rows = &mut self.rows;
            let evaluated = self
                .session
                .eval_seq(i, chunk)
                .map(|logits| rows[..logits.len()].copy_from_slice(logits));
            match evaluated {
                Ok(()) => {
                    slot.prefilled += n;
                    if !slot.prefilling() {
                        let row = &mut self.rows[..n_vocab];
                        if let After::Free = sample(slot, i, row, &self.session, &self.shared) {
                            self.free(i);
                        }
                    }
                }
                Err(e) => {
                    let _ = slot
                        .job
                        .tx
                        .send(Event::Error(EngineError::Internal(e.to_string())));
                    self.free(i);
                }
            }
        }
    }

    /// One batched decode step over every generating slot.
    fn decode_step(&mut self) {
        self.seqs.clear();
        self.toks.clear();
        for &i in &self.order {
            if let Some(tok) = self.slots[i].as_ref().and_then(|s| s.next) {
                self.seqs.push(i);
                self.toks.push(tok);
            }
        }
        if self.seqs.is_empty() {
            return;
        }
        let n_vocab = self.session.model().config.n_vocab;
        let seqs = std::mem::take(&mut self.seqs);
        let toks = std::mem::take(&mut self.toks);
        let max_batch = self.session.max_batch();
        for (seqs, toks) in seqs.chunks(max_batch).zip(toks.chunks(max_batch)) {
            match self.session.decode_batch(seqs, toks) {
                Ok(logits) => {
                    // Copied out: sampling reads the session (token history) and edits logits.
                    self.rows[..logits.len()].copy_from_slice(logits);
                    self.shared.decode_steps.fetch_add(1, Ordering::Relaxed);
                    self.shared
                        .decode_rows
                        .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                    for (r, &i) in seqs.iter().enumerate() {
                        let row = &mut self.rows[r * n_vocab..(r + 1) * n_vocab];
                        let slot = self.slots[i].as_mut().expect("a decoding slot");
                        if let After::Free = sample(slot, i, row, &self.session, &self.shared) {
                            self.free(i);
                        }
                    }
                }
                Err(e) => {
                    for &i in seqs {
                        if let Some(slot) = &self.slots[i] {
                            let _ = slot
                                .job
                                .tx
                                .send(Event::Error(EngineError::Internal(e.to_string())));
                        }
                        self.free(i);
                        self.session.reset_seq(i);
                    }
                }
            }
        }
        self.seqs = seqs;
        self.toks = toks;
    }
}

/// Samples the next token of the request in slot `i` (sequence `i` of `session`) from its
/// logits `row` and streams the text it adds.
fn sample(slot: &mut Slot, i: usize, row: &mut [f32], session: &Session, shared: &Shared) -> After {
    let req = &slot.job.req;
    if req.presence_penalty != 0.0 || req.frequency_penalty != 0.0 {
        for (&t, &c) in &slot.counts {
            if let Some(l) = row.get_mut(t as usize) {
                *l -= req.presence_penalty + req.frequency_penalty * c as f32;
            }
        }
    }
    let tok = slot.sampler.sample(row, session.seq_tokens(i));
    slot.generated.push(tok);
    if req.presence_penalty != 0.0 || req.frequency_penalty != 0.0 {
        *slot.counts.entry(tok).or_insert(0) += 1;
    }
    slot.first_token_at.get_or_insert_with(Instant::now);
    shared.generated_tokens.fetch_add(1, Ordering::Relaxed);
    let tokenizer = session.model().tokenizer.as_ref();
    let mut stopped = req.stop_tokens.contains(&tok);
    slot.text.clear();
    if !stopped {
        let mut piece = String::new();
        if let Some(tokenizer) = tokenizer {
            slot.decoder.push_into(tokenizer, tok, &mut piece);
        }
        stopped = slot.matcher.push(&piece, &mut slot.text);
    }
    let length = !stopped
        && (slot.generated.len() >= req.max_tokens
            || session.seq_tokens(i).len() >= session.n_ctx());
    if (stopped && slot.matcher.matched().is_none()) || length {
        // Flush what was held back: an unfinished character and a possible stop-string prefix.
        let rest = slot.decoder.finish();
        slot.matcher.push(&rest, &mut slot.text);
        slot.matcher.finish(&mut slot.text);
    }
    if !slot.text.is_empty() {
        let text = std::mem::take(&mut slot.text);
        if slot.job.tx.send(Event::Text(text)).is_err() {
            shared.cancelled.fetch_add(1, Ordering::Relaxed);
            return After::Free;
        }
    }
    if stopped || length {
        let now = Instant::now();
        let done = Finished {
            reason: if stopped {
                StopReason::Stop
            } else {
                StopReason::Length
            },
            stop_string: slot.matcher.matched().map(str::to_string),
            token_ids: std::mem::take(&mut slot.generated),
            prompt_tokens: req.prompt.len(),
            cached_tokens: slot.cached,
            time_to_first_token: slot.first_token_at.unwrap_or(now) - slot.job.submitted,
            elapsed: now - slot.job.submitted,
        };
        let _ = slot.job.tx.send(Event::Done(done));
        return After::Free;
    }
    slot.next = Some(tok);
    After::Continue
}
