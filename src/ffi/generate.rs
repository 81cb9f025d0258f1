//! The state behind a `qwen_session`: the Rust `Session`, the sampler, the chat history and one
//! generation in progress, stepped one token at a time. Both the callback-style
//! `qwen_session_generate` and the pull-style `qwen_session_next_token` drive `step`.

use super::error::*;
use crate::chat::{make_context, ChatTokens, Turn, DEFAULT_SYSTEM_PROMPT};
use crate::model::Model;
use crate::sampler::{Sampler, SamplingParams};
use crate::session::{Session, SessionState};
use crate::tokenizer::StreamDecoder;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `qwen_session_finish_reason`: no generation has ended yet.
pub const QWEN_FINISH_NONE: i32 = 0;
/// Generation ended on a stop token, a stop string, or because the callback asked.
pub const QWEN_FINISH_STOP: i32 = 1;
/// Generation ended at `max_tokens` or because the context is full.
pub const QWEN_FINISH_LENGTH: i32 = 2;
/// Generation was stopped by `qwen_session_abort`.
pub const QWEN_FINISH_ABORTED: i32 = 3;

/// What one step produced.
pub(crate) enum Step {
    /// A new token, and the text that became certain with it (possibly empty: bytes of an
    /// unfinished UTF-8 character or a possible stop-string prefix are held back).
    Token(u32),
    /// Generation is over; `piece` holds the text that was still held back.
    Done,
}

pub(crate) struct Generation {
    active: bool,
    /// The last token handed out: sampled but not yet evaluated (it is evaluated before the next
    /// sample, so a stop never costs a forward pass).
    pending: Option<u32>,
    pub n_generated: usize,
    decoder: StreamDecoder,
    /// All text of this generation, and how much of it has been handed out.
    text: String,
    emitted: usize,
    /// The text handed out by the last step (what `qwen_session_last_piece` returns).
    pub piece: String,
    pub finish: i32,
    /// The user message when this generation is a chat reply (recorded in the history at the
    /// end).
    chat_user: Option<String>,
}

impl Generation {
    fn idle() -> Self {
        Generation {
            active: false,
            pending: None,
            n_generated: 0,
            decoder: StreamDecoder::new(),
            text: String::new(),
            emitted: 0,
            piece: String::new(),
            finish: QWEN_FINISH_NONE,
            chat_user: None,
        }
    }
}

pub(crate) struct State {
    pub session: Session,
    pub max_batch: usize,
    pub sampling: SamplingParams,
    sampler: Sampler,
    pub stop_strings: Vec<String>,
    pub stop_tokens: Vec<u32>,
    chat_tokens: Option<ChatTokens>,
    pub system: String,
    pub history: Vec<Turn>,
    pub gen: Generation,
    /// Logits copied for the sampler, which modifies them in place.
    logits: Vec<f32>,
}

impl State {
    pub fn new(session: Session, max_batch: usize, chat_tokens: Option<ChatTokens>) -> Self {
        let sampling = SamplingParams::default();
        State {
            session,
            max_batch,
            sampler: Sampler::new(sampling.clone()),
            sampling,
            stop_strings: Vec::new(),
            stop_tokens: chat_tokens
                .map(|c| c.stop_tokens().to_vec())
                .unwrap_or_default(),
            chat_tokens,
            system: DEFAULT_SYSTEM_PROMPT.to_string(),
            history: Vec::new(),
            gen: Generation::idle(),
            logits: Vec::new(),
        }
    }

    fn model(&self) -> &Arc<Model> {
        self.session.model()
    }

    pub fn set_sampling(&mut self, p: SamplingParams) {
        self.sampler = Sampler::new(p.clone());
        self.sampling = p;
    }

    /// Ends the current generation for good: a chat reply goes into the history.
    pub fn finalize(&mut self) {
        if let Some(user) = self.gen.chat_user.take() {
            let assistant = self.gen.text[..self.gen.emitted].trim().to_string();
            self.history.push(Turn { user, assistant });
        }
        self.gen.active = false;
    }

    /// Forgets the cache, the history and any generation.
    pub fn reset(&mut self) {
        self.gen = Generation::idle();
        self.history.clear();
        self.session.reset();
    }

    /// The token the generation handed out last, not yet evaluated.
    pub fn pending(&self) -> Option<u32> {
        self.gen.pending
    }

    /// Evaluates `ids` after the cache in chunks, checking `abort` between them.
    fn eval_chunks(&mut self, ids: &[u32], abort: &AtomicBool) -> FfiResult<()> {
        self.check_fits(ids)?;
        for chunk in ids.chunks(self.max_batch.max(1)) {
            check_abort(abort)?;
            self.session.eval(chunk)?;
        }
        Ok(())
    }

    fn check_fits(&self, ids: &[u32]) -> FfiResult<()> {
        let needed = self.session.tokens().len() + ids.len();
        if needed > self.session.n_ctx() {
            return fail(
                QWEN_ERR_CONTEXT_FULL,
                format!(
                    "{needed} tokens do not fit in the context of {} tokens",
                    self.session.n_ctx()
                ),
            );
        }
        let n_vocab = self.model().config.n_vocab;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= n_vocab) {
            return invalid(format!(
                "token id {bad} is outside the vocabulary (0..{n_vocab})"
            ));
        }
        Ok(())
    }

    /// Starts a generation after the cache content (which must hold at least one token).
    fn start(&mut self, chat_user: Option<String>) {
        self.gen = Generation::idle();
        self.gen.active = !self.session.tokens().is_empty();
        self.gen.chat_user = chat_user;
    }

    /// Appends tokens to the sequence (after a token still pending from the last generation)
    /// and starts a new generation from their logits.
    pub fn append(&mut self, ids: &[u32], abort: &AtomicBool) -> FfiResult<()> {
        if ids.is_empty() {
            return invalid("no tokens to evaluate");
        }
        self.finalize();
        let mut all = Vec::with_capacity(ids.len() + 1);
        all.extend(self.gen.pending.take());
        all.extend_from_slice(ids);
        let r = self.eval_chunks(&all, abort);
        self.start_if_ok(&r, None);
        r
    }

    fn start_if_ok(&mut self, r: &FfiResult<()>, chat_user: Option<String>) {
        if r.is_ok() {
            self.start(chat_user);
        } else {
            self.gen = Generation::idle();
        }
    }

    /// Makes the cache hold exactly `ids`, reusing the longest cached prefix.
    pub fn replace(&mut self, ids: &[u32], abort: &AtomicBool) -> FfiResult<()> {
        let common = self
            .session
            .tokens()
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len().saturating_sub(1));
        self.gen.pending = None;
        self.session.truncate(common);
        self.eval_chunks(&ids[common..], abort)
    }

    /// Adds a user turn: rebuilds the ChatML context (system prompt, the history that fits,
    /// the message), evaluates what is not cached yet and starts the assistant's reply.
    pub fn chat(&mut self, user: &str, abort: &AtomicBool) -> FfiResult<()> {
        let ct = match self.chat_tokens {
            Some(c) => c,
            None => {
                return fail(
                    QWEN_ERR_TOKENIZER,
                    "the model's vocabulary has no ChatML tokens",
                )
            }
        };
        self.finalize();
        let n_ctx = self.session.n_ctx();
        // Keep room for a reply of up to a quarter of the context (at most 512 tokens).
        let window = n_ctx - (n_ctx / 4).min(512);
        let tok = self.model().tokenizer()?;
        let ctx = make_context(tok, &ct, &self.system, &self.history, user, window);
        if ctx.ids.len() >= n_ctx {
            return fail(
                QWEN_ERR_CONTEXT_FULL,
                format!(
                    "the message needs {} tokens; the context holds {n_ctx}",
                    ctx.ids.len()
                ),
            );
        }
        // Turns that fell out of the window are gone for good.
        let dropped = self.history.len() - ctx.turns_kept;
        self.history.drain(..dropped);
        let r = self.replace(&ctx.ids, abort);
        self.start_if_ok(&r, Some(user.to_string()));
        r
    }

    /// Restores a saved state (copying its KV cache back), evaluates `pending` (the token its
    /// generation had handed out) and starts a generation from there.
    pub fn restore_saved(
        &mut self,
        saved: &SessionState,
        pending: Option<u32>,
        abort: &AtomicBool,
    ) -> FfiResult<()> {
        self.session.restore_state(saved)?;
        self.gen = Generation::idle();
        let r = match pending {
            Some(p) => self.eval_chunks(&[p], abort),
            None => Ok(()),
        };
        self.start_if_ok(&r, None);
        r
    }

    /// Generates one token.
    pub fn step(&mut self, abort: &AtomicBool) -> FfiResult<Step> {
        self.gen.piece.clear();
        if !self.gen.active {
            if self.session.tokens().is_empty() && self.gen.finish == QWEN_FINISH_NONE {
                return invalid(
                    "nothing to generate from: give a prompt (qwen_session_prompt, \
                     qwen_session_chat or qwen_session_eval) first",
                );
            }
            return Ok(Step::Done);
        }
        if abort.swap(false, Ordering::AcqRel) {
            self.end(QWEN_FINISH_ABORTED);
            return fail(QWEN_ERR_ABORTED, "generation aborted");
        }
        if let Some(p) = self.gen.pending {
            if self.session.tokens().len() >= self.session.n_ctx() {
                self.end(QWEN_FINISH_LENGTH);
                return Ok(Step::Done);
            }
            if let Err(e) = self.session.eval(&[p]) {
                self.end(QWEN_FINISH_STOP);
                return Err(e.into());
            }
            self.gen.pending = None;
        }
        self.logits.clear();
        self.logits.extend_from_slice(self.session.logits());
        let tok = self.sampler.sample(&mut self.logits, self.session.tokens());
        if self.stop_tokens.contains(&tok) {
            self.end(QWEN_FINISH_STOP);
            return Ok(Step::Done);
        }
        self.gen.n_generated += 1;
        self.gen.pending = Some(tok);
        let tokenizer = self.session.model().tokenizer()?;
        let mut piece = String::new();
        self.gen.decoder.push_into(tokenizer, tok, &mut piece);
        self.gen.text.push_str(&piece);
        if let Some(at) = self.find_stop_string() {
            self.emit_to(at);
            self.gen.text.truncate(at);
            self.finish(QWEN_FINISH_STOP);
        } else {
            let safe = self.safe_end();
            self.emit_to(safe);
        }
        Ok(Step::Token(tok))
    }

    /// Ends the generation because of `reason`, handing out whatever text was held back.
    pub fn end(&mut self, reason: i32) {
        if self.gen.active {
            let rest = self.gen.decoder.finish();
            self.gen.text.push_str(&rest);
            let len = self.gen.text.len();
            self.emit_to(len);
        }
        self.finish(reason);
    }

    fn finish(&mut self, reason: i32) {
        self.gen.finish = reason;
        self.finalize();
    }

    fn emit_to(&mut self, end: usize) {
        if end > self.gen.emitted {
            let s = &self.gen.text[self.gen.emitted..end];
            self.gen.piece.push_str(s);
            self.gen.emitted = end;
        }
    }

    /// Where the first stop string starts in the text not yet handed out.
    fn find_stop_string(&self) -> Option<usize> {
        let text = &self.gen.text;
        self.stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                // A match may begin in text that was held back but not before `emitted`.
                text[self.gen.emitted..]
                    .find(s.as_str())
                    .map(|i| self.gen.emitted + i)
            })
            .min()
    }

    /// The end of the text that can be handed out: everything except a tail that could be the
    /// beginning of a stop string.
    fn safe_end(&self) -> usize {
        let text = &self.gen.text;
        let mut end = text.len();
        for s in self.stop_strings.iter().filter(|s| !s.is_empty()) {
            let max = (s.len() - 1).min(text.len() - self.gen.emitted);
            for k in (1..=max).rev() {
                let start = text.len() - k;
                if text.is_char_boundary(start) && s.starts_with(&text[start..]) {
                    end = end.min(start);
                    break;
                }
            }
        }
        end
    }

    /// The caller asked to stop: text held back stays unsaid.
    pub fn stop_by_caller(&mut self) {
        self.finish(QWEN_FINISH_STOP);
    }

    /// Keeps the first `n` tokens of the cache; ends any generation.
    pub fn truncate(&mut self, n: usize) {
        self.finalize();
        self.gen.pending = None;
        self.session.truncate(n);
    }

    /// Like `append`, writing the logits after every token of `ids` to `out`
    /// (`ids.len() * n_vocab` floats).
    pub fn append_all_logits(
        &mut self,
        ids: &[u32],
        out: &mut [f32],
        abort: &AtomicBool,
    ) -> FfiResult<()> {
        self.finalize();
        if let Some(p) = self.gen.pending.take() {
            self.eval_chunks(&[p], abort)?;
        }
        let r = self.eval_all_chunks(ids, abort, |first, logits| {
            out[first..first + logits.len()].copy_from_slice(logits);
        });
        self.start_if_ok(&r, None);
        r
    }

    /// Evaluates `ids` in chunks, passing each chunk's logits (`[chunk, n_vocab]`) and the
    /// offset of its first float to `sink`.
    fn eval_all_chunks(
        &mut self,
        ids: &[u32],
        abort: &AtomicBool,
        mut sink: impl FnMut(usize, &[f32]),
    ) -> FfiResult<()> {
        // Checks the context and ids before anything is evaluated.
        self.check_fits(ids)?;
        let n_vocab = self.model().config.n_vocab;
        for (i, chunk) in ids.chunks(self.max_batch.max(1)).enumerate() {
            check_abort(abort)?;
            let logits = self.session.eval_all_logits(chunk)?;
            sink(i * self.max_batch.max(1) * n_vocab, &logits);
        }
        Ok(())
    }

    /// Perplexity of `ids` from an empty cache: exp(mean NLL of ids[1..] given their prefixes).
    pub fn perplexity(&mut self, ids: &[u32], abort: &AtomicBool) -> FfiResult<f64> {
        if ids.len() < 2 {
            return invalid("perplexity needs at least 2 tokens");
        }
        self.reset();
        let n_vocab = self.model().config.n_vocab;
        let mut nll = 0.0f64;
        let r = self.eval_all_chunks(ids, abort, |first, logits| {
            let first = first / n_vocab;
            for (j, row) in logits.chunks_exact(n_vocab).enumerate() {
                if let Some(&next) = ids.get(first + j + 1) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                    nll += max + sum.ln() - row[next as usize] as f64;
                }
            }
        });
        r?;
        Ok((nll / (ids.len() - 1) as f64).exp())
    }

    /// After a step: whether generation is over.
    pub fn is_active(&self) -> bool {
        self.gen.active
    }
}

pub(crate) fn check_abort(abort: &AtomicBool) -> FfiResult<()> {
    if abort.swap(false, Ordering::AcqRel) {
        return fail(QWEN_ERR_ABORTED, "aborted");
    }
    Ok(())
}
