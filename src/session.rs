//! A session: one sequence's KV cache and scratch over a shared model, with prefill, decode and
//! generation. Everything is allocated in `Session::new`; evaluating tokens allocates nothing.

use crate::backend::cpu::{default_threads, ThreadPool};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::forward::{forward, Scratch};
use crate::model::Model;
use crate::sampler::Sampler;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Context length in tokens (prompt + generated). 0 = the model's training context, capped
    /// at 4096 to keep the cache small on edge machines.
    pub n_ctx: usize,
    /// Worker threads; 0 = the number of physical cores.
    pub n_threads: usize,
    /// Most tokens evaluated in one forward pass; longer prompts are split.
    pub max_batch: usize,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            n_ctx: 0,
            n_threads: 0,
            max_batch: 128,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced (or the caller asked to stop).
    Stop,
    /// The token limit or the context length was reached.
    Length,
    /// The caller's callback asked to stop (higher-level APIs such as
    /// [`generate_text`](crate::chat::generate_text); [`Session::generate`] reports `Stop`).
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

pub struct Session {
    model: Arc<Model>,
    pool: ThreadPool,
    kv: KvCache,
    scratch: Scratch,
    /// RoPE frequencies; for Qwen-1 they carry the NTK alpha fixed at the first prefill.
    inv_freq: Vec<f32>,
    ntk_alpha: f64,
    /// The tokens whose keys and values are in the cache, in order.
    tokens: Vec<u32>,
    logits: Vec<f32>,
    /// Tokens run through the model since creation (prefill and decode).
    n_evaluated: u64,
}

impl Session {
    pub fn new(model: Arc<Model>, params: &SessionParams) -> Result<Session> {
        let c = &model.config;
        let n_ctx = match params.n_ctx {
            0 => c.n_ctx_train.clamp(1, 4096),
            n => n,
        };
        if n_ctx > 1 << 20 {
            return Err(Error::InvalidArgument(format!(
                "context length {n_ctx} is too large"
            )));
        }
        let n_threads = match params.n_threads {
            0 => default_threads(),
            n => n.min(256),
        };
        let max_batch = params.max_batch.clamp(1, n_ctx);
        let scratch = Scratch::new(&model, max_batch, n_ctx, n_threads);
        let mut s = Session {
            kv: KvCache::new(c.n_layer, n_ctx, c.n_head_kv * c.head_dim),
            pool: ThreadPool::new(n_threads),
            scratch,
            inv_freq: vec![0.0; c.head_dim / 2],
            ntk_alpha: 0.0,
            tokens: Vec::with_capacity(n_ctx),
            logits: vec![0.0; c.n_vocab * max_batch],
            n_evaluated: 0,
            model,
        };
        s.set_ntk_alpha(1.0);
        Ok(s)
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// Tokens currently in the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// How many tokens this session has run through the model since it was created (prefill
    /// and decode). The difference around a call is what that call cost, e.g. how much of a
    /// chat turn's context [`eval_reusing_prefix`](Self::eval_reusing_prefix) really evaluated.
    pub fn n_evaluated(&self) -> u64 {
        self.n_evaluated
    }

    /// The NTK alpha in use (1 unless a Qwen-1 prefill went past `seq_length`).
    pub fn ntk_alpha(&self) -> f64 {
        self.ntk_alpha
    }

    pub fn kv_bytes_per_token(&self) -> usize {
        self.kv.bytes_per_token()
    }

    /// Forgets everything in the cache.
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Drops cached tokens after the first `n`.
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
    }

    fn set_ntk_alpha(&mut self, alpha: f64) {
        if alpha != self.ntk_alpha {
            self.ntk_alpha = alpha;
            self.model.config.rope_inv_freq(alpha, &mut self.inv_freq);
        }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to evaluate".into()));
        }
        let n_vocab = self.model.config.n_vocab;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (size {n_vocab})"
            )));
        }
        let needed = self.tokens.len() + tokens.len();
        if needed > self.n_ctx() {
            return Err(Error::InvalidArgument(format!(
                "{needed} tokens do not fit in the context of {} tokens",
                self.n_ctx()
            )));
        }
        Ok(())
    }

    /// Appends `tokens` to the sequence and returns the logits after the last of them.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.eval_inner(tokens, None)?;
        Ok(&self.logits[..self.model.config.n_vocab])
    }

    /// Appends `tokens` and returns the logits after each of them (`[T, V]`, row-major).
    pub fn eval_all_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut all = vec![0.0f32; tokens.len() * self.model.config.n_vocab];
        self.eval_inner(tokens, Some(&mut all))?;
        Ok(all)
    }

    fn eval_inner(&mut self, tokens: &[u32], mut all: Option<&mut [f32]>) -> Result<()> {
        self.check_tokens(tokens)?;
        if self.tokens.is_empty() {
            // Qwen-1 fixes its NTK alpha from the length of the prefill on an empty cache and
            // keeps it for the decode steps that follow (testdata README §4).
            let alpha = self.model.config.ntk_alpha(tokens.len());
            self.set_ntk_alpha(alpha);
        }
        let n_vocab = self.model.config.n_vocab;
        let max_batch = self.scratch.max_batch;
        let mut done = 0;
        for chunk in tokens.chunks(max_batch) {
            let pos0 = self.tokens.len();
            let want_all = all.is_some();
            let logits: &mut [f32] = match all.as_deref_mut() {
                Some(a) => &mut a[done * n_vocab..(done + chunk.len()) * n_vocab],
                None => &mut self.logits[..n_vocab],
            };
            forward(
                &self.model,
                &self.pool,
                &mut self.kv,
                &mut self.scratch,
                &self.inv_freq,
                chunk,
                pos0,
                want_all,
                logits,
            );
            self.tokens.extend_from_slice(chunk);
            self.n_evaluated += chunk.len() as u64;
            done += chunk.len();
        }
        if let Some(a) = all {
            let last = &a[(tokens.len() - 1) * n_vocab..tokens.len() * n_vocab];
            self.logits[..n_vocab].copy_from_slice(last);
        }
        Ok(())
    }

    /// Makes the cache hold exactly `tokens`, reusing the longest cached prefix, and returns the
    /// logits after the last token. At least one token is always evaluated so the logits exist.
    /// Qwen-1 with dynamic NTK: when the NTK alpha for `tokens.len()` differs from the one the
    /// cache was built with, everything is recomputed, as the reference's fresh prefill would.
    pub fn eval_reusing_prefix(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let mut common = self
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len().saturating_sub(1));
        if common > 0 && self.model.config.ntk_alpha(tokens.len()) != self.ntk_alpha {
            common = 0;
        }
        self.tokens.truncate(common);
        self.eval(&tokens[common..])
    }

    /// Logits after the last evaluated token.
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.model.config.n_vocab]
    }

    /// Generates up to `max_tokens` after whatever is in the cache (the caller has evaluated the
    /// prompt). `on_token` sees each new token and returns false to stop. Stop tokens end the
    /// generation and are not passed to `on_token`, but are returned in the output.
    pub fn generate(
        &mut self,
        sampler: &mut Sampler,
        max_tokens: usize,
        stop_tokens: &[u32],
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, FinishReason)> {
        if self.tokens.is_empty() {
            return Err(Error::InvalidArgument("generate needs a prompt".into()));
        }
        let mut out = Vec::with_capacity(max_tokens.min(self.n_ctx()));
        let n_vocab = self.model.config.n_vocab;
        for i in 0..max_tokens {
            let tok = sampler.sample(&mut self.logits[..n_vocab], &self.tokens);
            out.push(tok);
            if stop_tokens.contains(&tok) || !on_token(tok) {
                return Ok((out, FinishReason::Stop));
            }
            if i + 1 == max_tokens || self.tokens.len() >= self.n_ctx() {
                break;
            }
            self.eval(&[tok])?;
        }
        Ok((out, FinishReason::Length))
    }
}
