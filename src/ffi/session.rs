//! Sessions: one sequence's KV cache over a shared model, with raw completion, chat, streaming
//! and pull-style generation, logits, perplexity, state save/restore and abort.

use super::error::*;
use super::generate::{State, Step};
use super::handles;
use super::model::{backend_kind, check_ids, kv_cache_type, qwen_model};
use crate::sampler::SamplingParams;
use crate::session::{Session, SessionOptions, SessionParams};
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

pub use super::generate::{
    QWEN_FINISH_ABORTED, QWEN_FINISH_LENGTH, QWEN_FINISH_NONE, QWEN_FINISH_STOP,
};

/// How to create a session. Get the defaults from `qwen_session_default_params()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct qwen_session_params {
    /// Context length in tokens (prompt and generated); 0 = the model's `n_ctx` load parameter,
    /// or the model's training context capped at 4096. The KV cache for all of it is allocated
    /// up front.
    pub n_ctx: i32,
    /// Worker threads; 0 = the model's `n_threads` load parameter, or the physical cores.
    pub n_threads: i32,
    /// Most tokens evaluated in one forward pass (longer prompts are split; abort is checked
    /// between the parts); 0 = 128.
    pub max_batch: i32,
}

/// Sampling parameters (Hugging Face `generate()` semantics). The defaults are greedy
/// decoding without penalties.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct qwen_sampling_params {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`
    /// (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: i32,
    /// Divides the logits of tokens already in the sequence (1 = off).
    pub repetition_penalty: f32,
    /// Seed of the random generator: the same seed gives the same tokens on every platform.
    pub seed: u64,
}

/// Receives the generated text. `piece` (`piece_len` bytes of UTF-8, NUL-terminated) is the text
/// that became certain with `token`; it may be empty (bytes of an unfinished character, or a
/// possible stop-string beginning, are held back until they are certain). When generation ends,
/// held-back text comes in one last call with `token == -1`. The pointer is valid only during
/// the call. Return 0 to go on, nonzero to stop.
///
/// The callback runs on the thread that called `qwen_session_generate`; it must not call
/// functions on the same session (they return `QWEN_ERR_BUSY`) except `qwen_session_abort`.
pub type qwen_token_callback = Option<
    unsafe extern "C" fn(
        piece: *const c_char,
        piece_len: usize,
        token: i32,
        user_data: *mut c_void,
    ) -> i32,
>;

/// A session: the KV cache of one sequence, its sampler, chat history and generation state.
/// Opaque. One call at a time: a concurrent second call on the same session returns
/// `QWEN_ERR_BUSY` (only `qwen_session_abort` may be called from another thread meanwhile).
/// Different sessions, even over one model, may be used from different threads at once.
pub struct qwen_session {
    pub(crate) model: Arc<qwen_model>,
    pub(crate) abort: AtomicBool,
    pub(crate) state: Mutex<State>,
}

impl qwen_session {
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State) -> FfiResult<T>) -> FfiResult<T> {
        let mut state = match self.state.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => {
                return fail(
                    QWEN_ERR_BUSY,
                    "the session is in use by another call (sessions serve one call at a time)",
                )
            }
            Err(TryLockError::Poisoned(_)) => {
                return fail(
                    QWEN_ERR_INTERNAL,
                    "the session is unusable after an internal error; free it",
                )
            }
        };
        f(&mut state)
    }

    /// Starts new work: an abort requested while the session was idle does not cancel it.
    fn fresh_abort(&self) -> &AtomicBool {
        self.abort.store(false, Ordering::Release);
        &self.abort
    }
}

fn session_call(
    session: *const qwen_session,
    f: impl FnOnce(&qwen_session, &mut State) -> FfiResult<i32>,
) -> i32 {
    status(|| {
        let s = handles::session(session)?;
        s.with(|st| f(&s, st))
    })
}

/// The default session parameters (all zero: the model's defaults).
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn qwen_session_default_params() -> qwen_session_params {
    qwen_session_params {
        n_ctx: 0,
        n_threads: 0,
        max_batch: 0,
    }
}

/// The default sampling parameters: greedy, no penalty, seed 0.
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn qwen_sampling_default_params() -> qwen_sampling_params {
    let d = SamplingParams::default();
    qwen_sampling_params {
        temperature: d.temperature,
        top_p: d.top_p,
        top_k: d.top_k as i32,
        repetition_penalty: d.repetition_penalty,
        seed: d.seed,
    }
}

/// Creates a session over `model` (`params` may be NULL for the defaults) on the model's
/// backend and KV-cache type. Allocates the whole KV cache and scratch now (on a GPU backend
/// also uploads the weights and compiles the kernels); nothing is allocated per token later.
/// Returns NULL on failure (see `qwen_last_error()`: `QWEN_ERR_UNSUPPORTED` names a missing GPU
/// driver or device). Free it with `qwen_session_free`.
///
/// Thread-safe: any number of sessions may be created over one model, from any threads.
#[no_mangle]
pub extern "C" fn qwen_session_new(
    model: *const qwen_model,
    params: *const qwen_session_params,
) -> *mut qwen_session {
    pointer(|| {
        let m = handles::model(model)?;
        let p = if params.is_null() {
            qwen_session_default_params()
        } else {
            // SAFETY: non-NULL; the caller passes a valid struct.
            unsafe { params.read_unaligned() }
        };
        if p.n_ctx < 0 || p.n_threads < 0 || p.max_batch < 0 {
            return invalid("session parameters must not be negative");
        }
        let or = |v: i32, d: i32| if v > 0 { v as usize } else { d.max(0) as usize };
        let max_batch = or(p.max_batch, 128);
        let sp = SessionParams {
            n_ctx: or(p.n_ctx, m.params.n_ctx),
            n_threads: or(p.n_threads, m.params.n_threads),
            max_batch,
        };
        let opts = SessionOptions {
            kv_cache: kv_cache_type(m.params.kv_type)?,
            n_seq: 1,
            backend: backend_kind(m.params.backend)?,
            device: m.params.device as usize,
        };
        let session = Session::with_options(Arc::clone(&m.model), &sp, &opts)?;
        let state = State::new(session, max_batch, m.chat);
        Ok(handles::register_session(Arc::new(qwen_session {
            model: m,
            abort: AtomicBool::new(false),
            state: Mutex::new(state),
        })))
    })
}

/// Frees a session. NULL is a no-op; a second free is detected and reported through
/// `qwen_last_error()`. If another thread is generating with it, that generation is aborted and
/// the memory is released when its call returns.
///
/// Thread-safe; the handle must not be used after this call.
#[no_mangle]
pub extern "C" fn qwen_session_free(session: *mut qwen_session) {
    guard(
        |_| (),
        || {
            if session.is_null() {
                return Ok(());
            }
            let s = handles::unregister_session(session)?;
            s.abort.store(true, Ordering::Release);
            Ok(())
        },
    );
}

/// Asks a running `qwen_session_generate`, `qwen_session_next_token`, prompt evaluation or
/// state restore on this session to stop; it returns `QWEN_ERR_ABORTED` at the next token or
/// batch boundary. Tokens evaluated before the stop stay in the cache. A request made while the
/// session is idle stops the next generation step; it does not cancel a new prompt, chat turn
/// or eval (they clear the request).
///
/// Thread-safe: made to be called from another thread (or from a callback) while a call runs.
/// Not async-signal-safe (it looks the handle up under a lock): from a signal handler, set a
/// flag and call it from a thread, or return nonzero from the generation callback.
#[no_mangle]
pub extern "C" fn qwen_session_abort(session: *const qwen_session) -> i32 {
    status(|| {
        let s = handles::session(session)?;
        s.abort.store(true, Ordering::Release);
        Ok(QWEN_OK)
    })
}

/// Empties the cache and the chat history, and ends any generation. The system prompt,
/// sampling parameters and stop strings stay.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_reset(session: *mut qwen_session) -> i32 {
    session_call(session, |_, st| {
        st.reset();
        Ok(QWEN_OK)
    })
}

/// Keeps the first `n_tokens` tokens of the cache and drops the rest (no-op if it holds fewer);
/// ends any generation. `qwen_session_logits` keeps returning the last evaluation's logits
/// until the next eval.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_truncate(session: *mut qwen_session, n_tokens: usize) -> i32 {
    session_call(session, |_, st| {
        st.truncate(n_tokens);
        Ok(QWEN_OK)
    })
}

/// The session's context length in tokens, or a negative status.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_n_ctx(session: *const qwen_session) -> i32 {
    session_call(session, |_, st| count_i32(st.session.n_ctx(), "n_ctx"))
}

/// Copies the tokens in the cache (in order) to `out`: returns how many there are and writes
/// min(count, capacity) of them. `out` may be NULL with capacity 0. A generated token is in the
/// cache once the next one has been generated (the last one is evaluated lazily).
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_tokens(
    session: *const qwen_session,
    out: *mut i32,
    capacity: usize,
) -> i32 {
    session_call(session, |_, st| {
        let t: Vec<i32> = st.session.tokens().iter().map(|&t| t as i32).collect();
        write_items(&t, out, capacity)
    })
}

/// Evaluates `n_ids` tokens after what is in the cache (a batch: one forward pass per
/// `max_batch` tokens) and starts a generation from the logits after the last one. Returns
/// `QWEN_OK` or a negative status; on `QWEN_ERR_CONTEXT_FULL` or an invalid id nothing was
/// evaluated.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_eval(
    session: *mut qwen_session,
    ids: *const i32,
    n_ids: usize,
) -> i32 {
    session_call(session, |s, st| {
        let ids = check_ids(
            in_slice(ids, n_ids, "ids")?,
            st.session.model().config.n_vocab,
        )?;
        st.append(&ids, s.fresh_abort())?;
        Ok(QWEN_OK)
    })
}

/// Raw completion: encodes `text` (`text_len` bytes of UTF-8; see `qwen_tokenize` for
/// `parse_special`), evaluates it after what is in the cache and starts a generation. Call
/// `qwen_session_reset` first for an unrelated prompt.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_prompt(
    session: *mut qwen_session,
    text: *const c_char,
    text_len: usize,
    parse_special: bool,
) -> i32 {
    session_call(session, |s, st| {
        let text = in_text(text, text_len, "text")?;
        let mode = if parse_special {
            crate::tokenizer::EncodeMode::Trusted
        } else {
            crate::tokenizer::EncodeMode::Text
        };
        let ids = s.model.tokenizer()?.encode(text, mode);
        st.append(&ids, s.fresh_abort())?;
        Ok(QWEN_OK)
    })
}

/// Sets the chat system prompt (`text_len` bytes of UTF-8; the default is "You are a helpful
/// assistant."). Takes effect at the next `qwen_session_chat`; the history stays.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_set_system_prompt(
    session: *mut qwen_session,
    text: *const c_char,
    text_len: usize,
) -> i32 {
    session_call(session, |_, st| {
        st.system = in_text(text, text_len, "system prompt")?.to_string();
        Ok(QWEN_OK)
    })
}

/// Adds a user turn to the chat and starts the assistant's reply: the ChatML context (system
/// prompt, as many past turns as fit, this message) is rebuilt, only the part that is not
/// cached yet is evaluated, and the reply is generated by `qwen_session_generate` or
/// `qwen_session_next_token`. The user text is always plain text: typing `<|im_end|>` cannot
/// end the turn. When the reply ends (or the next turn starts) it joins the history.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_chat(
    session: *mut qwen_session,
    text: *const c_char,
    text_len: usize,
) -> i32 {
    session_call(session, |s, st| {
        let text = in_text(text, text_len, "text")?;
        st.chat(text, s.fresh_abort())?;
        Ok(QWEN_OK)
    })
}

/// Number of finished user/assistant exchanges in the chat history.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_history_len(session: *const qwen_session) -> i32 {
    session_call(session, |_, st| {
        count_i32(st.history.len(), "history length")
    })
}

/// Sets the sampling parameters (`params` NULL = the defaults) and reseeds the generator.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_set_sampling(
    session: *mut qwen_session,
    params: *const qwen_sampling_params,
) -> i32 {
    session_call(session, |_, st| {
        let p = if params.is_null() {
            qwen_sampling_default_params()
        } else {
            // SAFETY: non-NULL; the caller passes a valid struct.
            unsafe { params.read_unaligned() }
        };
        if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
            return invalid(format!("temperature {} must be >= 0", p.temperature));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return invalid(format!("top_p {} must be in (0, 1]", p.top_p));
        }
        if p.top_k < 0 {
            return invalid(format!("top_k {} must be >= 0", p.top_k));
        }
        if !(p.repetition_penalty > 0.0 && p.repetition_penalty.is_finite()) {
            return invalid(format!(
                "repetition_penalty {} must be > 0",
                p.repetition_penalty
            ));
        }
        st.set_sampling(SamplingParams {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k as usize,
            repetition_penalty: p.repetition_penalty,
            seed: p.seed,
        });
        Ok(QWEN_OK)
    })
}

/// Adds a stop string (`text_len` bytes of UTF-8, not empty): generation ends before the first
/// occurrence, which is not handed out. Stop tokens (`<|im_end|>`, `<|im_start|>`,
/// `<|endoftext|>`) always stop generation.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_add_stop_string(
    session: *mut qwen_session,
    text: *const c_char,
    text_len: usize,
) -> i32 {
    session_call(session, |_, st| {
        let text = in_text(text, text_len, "stop string")?;
        if text.is_empty() {
            return invalid("a stop string must not be empty");
        }
        st.stop_strings.push(text.to_string());
        Ok(QWEN_OK)
    })
}

/// Removes every stop string.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_clear_stop_strings(session: *mut qwen_session) -> i32 {
    session_call(session, |_, st| {
        st.stop_strings.clear();
        Ok(QWEN_OK)
    })
}

fn call_back(cb: qwen_token_callback, piece: &str, token: i32, user_data: *mut c_void) -> bool {
    let Some(f) = cb else { return false };
    let mut buf = Vec::with_capacity(piece.len() + 1);
    buf.extend_from_slice(piece.as_bytes());
    buf.push(0);
    // SAFETY: a valid function pointer from the caller; the buffer outlives the call.
    unsafe { f(buf.as_ptr().cast(), piece.len(), token, user_data) != 0 }
}

/// Generates up to `max_tokens` tokens (0 = until a stop or a full context) of the generation
/// started by `qwen_session_prompt`, `qwen_session_chat` or `qwen_session_eval`, passing each to
/// `callback` (may be NULL) with `user_data`. Generation ends on a stop token or string, when
/// the callback returns nonzero, at `max_tokens`, when the context is full, or on
/// `qwen_session_abort`; `qwen_session_finish_reason` says which.
///
/// Returns the number of tokens generated by this call, or a negative status
/// (`QWEN_ERR_ABORTED` after an abort; the tokens passed to the callback stay in the cache).
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`); the callback may call
/// `qwen_session_abort`.
#[no_mangle]
pub extern "C" fn qwen_session_generate(
    session: *mut qwen_session,
    max_tokens: i32,
    callback: qwen_token_callback,
    user_data: *mut c_void,
) -> i32 {
    session_call(session, |s, st| {
        if max_tokens < 0 {
            return invalid(format!("max_tokens {max_tokens} must be >= 0"));
        }
        let mut n = 0usize;
        loop {
            if max_tokens > 0 && n >= max_tokens as usize {
                st.end(QWEN_FINISH_LENGTH);
                if !st.gen.piece.is_empty() {
                    call_back(callback, &st.gen.piece, -1, user_data);
                }
                break;
            }
            match st.step(&s.abort) {
                Ok(Step::Token(tok)) => {
                    n += 1;
                    if call_back(callback, &st.gen.piece, tok as i32, user_data) {
                        st.stop_by_caller();
                        break;
                    }
                    if !st.is_active() {
                        break;
                    }
                }
                Ok(Step::Done) => {
                    if !st.gen.piece.is_empty() {
                        call_back(callback, &st.gen.piece, -1, user_data);
                    }
                    break;
                }
                Err(e) => {
                    if !st.gen.piece.is_empty() {
                        call_back(callback, &st.gen.piece, -1, user_data);
                    }
                    return Err(e);
                }
            }
        }
        count_i32(n, "token count")
    })
}

/// Pull-style generation: generates one token of the current generation and stores it in
/// `*out_token` (may be NULL). Returns `QWEN_OK` for a new token, `QWEN_DONE` when generation
/// has ended (no token; `qwen_session_finish_reason` says why), or a negative status
/// (`QWEN_ERR_ABORTED` after `qwen_session_abort`). After either `QWEN_OK` or `QWEN_DONE`,
/// `qwen_session_last_piece` gives the text that became certain (at `QWEN_DONE`: the text that
/// was held back). There is no token limit: stop calling when you have enough.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_next_token(session: *mut qwen_session, out_token: *mut i32) -> i32 {
    session_call(session, |s, st| match st.step(&s.abort)? {
        Step::Token(tok) => {
            write_out(out_token, tok as i32);
            Ok(QWEN_OK)
        }
        Step::Done => Ok(QWEN_DONE),
    })
}

/// The text handed out by the last `qwen_session_next_token` (or the last step of
/// `qwen_session_generate`): returns its length in bytes and writes min(length, capacity) bytes
/// plus a NUL if there is room. Calling it again returns the same text, so a caller can retry
/// with a larger buffer.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_last_piece(
    session: *const qwen_session,
    out: *mut c_char,
    capacity: usize,
) -> i32 {
    session_call(session, |_, st| {
        write_text(st.gen.piece.as_bytes(), out, capacity)
    })
}

/// Why the last generation ended: `QWEN_FINISH_NONE` (still running, or none yet),
/// `QWEN_FINISH_STOP`, `QWEN_FINISH_LENGTH` or `QWEN_FINISH_ABORTED`; or a negative status.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_finish_reason(session: *const qwen_session) -> i32 {
    session_call(session, |_, st| Ok(st.gen.finish))
}

/// Copies the logits after the last evaluated token (`n_vocab` floats, before sampling) to
/// `out`: returns `n_vocab` and writes min(n_vocab, capacity) values. `QWEN_ERR_INVALID_ARGUMENT`
/// if nothing has been evaluated.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_logits(
    session: *const qwen_session,
    out: *mut f32,
    capacity: usize,
) -> i32 {
    session_call(session, |_, st| {
        if st.session.tokens().is_empty() {
            return invalid("no logits: nothing has been evaluated");
        }
        write_items(st.session.logits(), out, capacity)
    })
}

/// Evaluates `n_ids` tokens after the cache and writes the logits after every one of them
/// (`n_ids * n_vocab` floats, row-major) to `out`. Returns the number of floats needed; if
/// `capacity` is smaller, nothing is evaluated or written (ask with NULL and 0 first).
/// Starts a generation like `qwen_session_eval`. Negative status on failure.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_eval_all_logits(
    session: *mut qwen_session,
    ids: *const i32,
    n_ids: usize,
    out: *mut f32,
    capacity: usize,
) -> i64 {
    guard(
        |code| code as i64,
        || {
            let s = handles::session(session)?;
            s.with(|st| {
                let n_vocab = st.session.model().config.n_vocab;
                let ids = check_ids(in_slice(ids, n_ids, "ids")?, n_vocab)?;
                let needed = ids.len() * n_vocab;
                if ids.is_empty() {
                    return invalid("no tokens to evaluate");
                }
                if capacity < needed {
                    return Ok(needed as i64);
                }
                let out = out_slice(out, needed, "out")?;
                let abort = s.fresh_abort();
                st.append_all_logits(&ids, out, abort)?;
                Ok(needed as i64)
            })
        },
    )
}

/// Perplexity of the sequence `ids` (`n_ids >= 2`, at most the context length): exp of the mean
/// negative log-likelihood of each token given the ones before it, written to `*out_ppl`.
/// Resets the session first (cache, history, generation); the cache holds `ids` afterwards.
/// Abortable between batches. Returns `QWEN_OK` or a negative status.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_perplexity(
    session: *mut qwen_session,
    ids: *const i32,
    n_ids: usize,
    out_ppl: *mut f64,
) -> i32 {
    session_call(session, |s, st| {
        if out_ppl.is_null() {
            return invalid("out_ppl is NULL");
        }
        let ids = check_ids(
            in_slice(ids, n_ids, "ids")?,
            st.session.model().config.n_vocab,
        )?;
        let ppl = st.perplexity(&ids, s.fresh_abort())?;
        write_out(out_ppl, ppl);
        Ok(QWEN_OK)
    })
}

/// Saves the session's state to `buf`: the tokens and KV cache contents of the sequence, the
/// last logits, the system prompt and chat history, in libqwen's versioned, checksummed session
/// state format tied to the model file. Returns the number of bytes needed and writes them only
/// if `capacity` is at least that (ask with NULL and 0 first). Negative status on failure.
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_save_state(
    session: *const qwen_session,
    buf: *mut u8,
    capacity: usize,
) -> i32 {
    session_call(session, |_, st| {
        let bytes = super::state::save(st)?;
        let n = count_i32(bytes.len(), "state size")?;
        if capacity >= bytes.len() {
            let out = out_slice(buf, bytes.len(), "buf")?;
            out.copy_from_slice(&bytes);
        }
        Ok(n)
    })
}

/// Restores a state saved by `qwen_session_save_state` (`len` bytes), from this or another
/// session over the same model file: the KV cache is copied back (no prefill), and a generation
/// starts from the last saved token. Sampling parameters and stop strings are the
/// session's own. Returns `QWEN_OK` or a negative status (`QWEN_ERR_FORMAT` for data that is
/// not a valid state of this model, `QWEN_ERR_CONTEXT_FULL` when it does not fit the context;
/// after either the session is unchanged).
///
/// Not for concurrent use on one session (`QWEN_ERR_BUSY`).
#[no_mangle]
pub extern "C" fn qwen_session_load_state(
    session: *mut qwen_session,
    buf: *const u8,
    len: usize,
) -> i32 {
    session_call(session, |s, st| {
        let bytes = in_slice(buf, len, "buf")?;
        let model = std::sync::Arc::clone(st.session.model());
        let saved = crate::session::SessionState::read(&model, bytes)?;
        let extra = super::state::parse_extra(saved.user_data(), model.config.n_vocab)?;
        let n_tokens = saved.max_seq_len() + usize::from(extra.pending.is_some());
        if saved.n_seq() > 1 {
            return fail(
                QWEN_ERR_FORMAT,
                "session state holds several sequences; a C session holds one",
            );
        }
        if n_tokens > st.session.n_ctx() {
            return fail(
                QWEN_ERR_CONTEXT_FULL,
                format!(
                    "the state holds {n_tokens} tokens; the context holds {}",
                    st.session.n_ctx()
                ),
            );
        }
        st.restore_saved(&saved, extra.pending, s.fresh_abort())?;
        st.system = extra.system;
        st.history = extra.history;
        Ok(QWEN_OK)
    })
}
