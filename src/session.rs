//! A session: the KV cache and scratch of one or more sequences over a shared model, with
//! prefill, decode and generation. Everything is allocated in `Session::new`; evaluating tokens
//! allocates nothing.
//!
//! The single-sequence API (`eval`, `generate`, ...) works on sequence 0. A session made with
//! [`SessionOptions::n_seq`] > 1 also runs several sequences together: each is prefilled on its
//! own, then every decode step sends one token of each live sequence through one forward pass
//! ([`decode_batch`](Session::decode_batch), [`generate_batch`](Session::generate_batch)), so
//! the weights are read once per step for all of them (matrix-matrix products).
//!
//! [`save_state`](Session::save_state) / [`load_state`](Session::load_state) write and restore
//! the whole state (tokens, KV cache contents, last logits, NTK alphas, optionally a sampler's
//! random state) in a versioned, checksummed format ([`SessionState`]); a restored session
//! continues exactly as the saved one would.

mod state;

pub use state::{SessionState, MAX_USER_DATA, STATE_VERSION};

use crate::backend::{self, Backend, BackendKind, BackendParams};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvCacheType};
use crate::model::forward::Batch;
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

/// Session settings beyond [`SessionParams`] (kept apart so existing struct literals of
/// `SessionParams` stay valid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// KV cache storage. `F32` (the default here) is exact; `F16` halves the memory (llama.cpp's
    /// default, and the CLI's); `Q8` stores int8 rows with a scale, about a quarter of F32.
    pub kv_cache: KvCacheType,
    /// Sequences the session can hold at once (each gets a full context of KV cache).
    pub n_seq: usize,
    /// Which backend runs the forward pass; the GPU ones must be built in (features `cuda`,
    /// `rocm`) and find their driver and device, else creating the session fails saying which.
    pub backend: BackendKind,
    /// GPU ordinal for the GPU backends.
    pub device: usize,
}

impl SessionOptions {
    /// The KV cache type a front end should use when the user names none: F32 for a model whose
    /// matrices are all F32 (a reference-precision file: results stay exact), F16 otherwise
    /// (half the memory, as llama.cpp).
    pub fn auto_kv_cache(model: &Model) -> KvCacheType {
        let all_f32 = model
            .weights
            .matrices()
            .all(|t| t.ty == crate::gguf::GgmlType::F32);
        if all_f32 {
            KvCacheType::F32
        } else {
            KvCacheType::F16
        }
    }
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            kv_cache: KvCacheType::F32,
            n_seq: 1,
            backend: BackendKind::Cpu,
            device: 0,
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
    /// The forward pass with its KV cache and scratch buffers.
    backend: Box<dyn Backend>,
    /// RoPE frequencies per sequence (`[n_seq, hd/2]`); for Qwen-1 they carry the NTK alpha
    /// fixed at that sequence's first prefill.
    inv_freq: Vec<f32>,
    ntk_alpha: Vec<f64>,
    /// Per sequence, the tokens whose keys and values are in the cache, in order.
    seqs: Vec<Vec<u32>>,
    /// Logits of up to `max_batch` tokens (`[max_batch, V]`); row 0 holds the last token's
    /// after a single-sequence eval.
    logits: Vec<f32>,
    /// Sequence and position of each token of the batch being run.
    batch_seq: Vec<usize>,
    batch_pos: Vec<usize>,
    /// Tokens run through the model since creation (prefill and decode).
    n_evaluated: u64,
}

impl Session {
    pub fn new(model: Arc<Model>, params: &SessionParams) -> Result<Session> {
        Self::with_options(model, params, &SessionOptions::default())
    }

    pub fn with_options(
        model: Arc<Model>,
        params: &SessionParams,
        opts: &SessionOptions,
    ) -> Result<Session> {
        let c = &model.config;
        c.check_rope()?;
        let n_ctx = match params.n_ctx {
            0 => c.n_ctx_train.clamp(1, 4096),
            n => n,
        };
        if n_ctx > 1 << 20 {
            return Err(Error::InvalidArgument(format!(
                "context length {n_ctx} is too large"
            )));
        }
        if opts.n_seq == 0 || opts.n_seq > 4096 {
            return Err(Error::InvalidArgument(format!(
                "a session holds 1 to 4096 sequences, not {}",
                opts.n_seq
            )));
        }
        let max_batch = params.max_batch.clamp(1, n_ctx.max(opts.n_seq));
        let backend = backend::create(
            opts.backend,
            &model,
            &BackendParams {
                n_ctx,
                n_seq: opts.n_seq,
                max_batch,
                n_threads: params.n_threads,
                kv_cache: opts.kv_cache,
                device: opts.device,
            },
        )?;
        let half = c.head_dim / 2;
        let mut s = Session {
            backend,
            inv_freq: vec![0.0; opts.n_seq * half],
            ntk_alpha: vec![0.0; opts.n_seq],
            seqs: (0..opts.n_seq).map(|_| Vec::with_capacity(n_ctx)).collect(),
            logits: vec![0.0; c.n_vocab * max_batch],
            batch_seq: vec![0; max_batch],
            batch_pos: vec![0; max_batch],
            n_evaluated: 0,
            model,
        };
        for seq in 0..opts.n_seq {
            s.set_ntk_alpha(seq, 1.0);
        }
        Ok(s)
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Context length of each sequence.
    pub fn n_ctx(&self) -> usize {
        self.backend.n_ctx()
    }

    pub fn n_threads(&self) -> usize {
        self.backend.n_threads()
    }

    /// Sequences this session holds.
    pub fn n_seq(&self) -> usize {
        self.backend.n_seq()
    }

    /// Most tokens one forward pass takes.
    pub fn max_batch(&self) -> usize {
        self.backend.max_batch()
    }

    /// The KV cache storage in use (a GPU backend stores an F32 request as F16).
    pub fn kv_cache_type(&self) -> KvCacheType {
        self.backend.kv_cache_type()
    }

    /// Which backend runs this session.
    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The device it runs on ("cpu (2 threads)", "cuda NVIDIA H200 (sm_90)").
    pub fn device_name(&self) -> String {
        self.backend.device_name()
    }

    /// Tokens currently in the cache (sequence 0).
    pub fn tokens(&self) -> &[u32] {
        &self.seqs[0]
    }

    /// Tokens in the cache of sequence `seq`.
    pub fn seq_tokens(&self, seq: usize) -> &[u32] {
        &self.seqs[seq]
    }

    /// How many tokens this session has run through the model since it was created (prefill
    /// and decode). The difference around a call is what that call cost, e.g. how much of a
    /// chat turn's context [`eval_reusing_prefix`](Self::eval_reusing_prefix) really evaluated.
    pub fn n_evaluated(&self) -> u64 {
        self.n_evaluated
    }

    /// The NTK alpha in use (1 unless a Qwen-1 prefill went past `seq_length`).
    pub fn ntk_alpha(&self) -> f64 {
        self.ntk_alpha[0]
    }

    /// KV cache bytes per token of one sequence.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.backend.kv_bytes_per_token()
    }

    /// KV cache bytes of the whole session (every sequence's full context).
    pub fn kv_bytes(&self) -> usize {
        self.backend.kv_bytes()
    }

    /// Forgets everything in the cache (sequence 0).
    pub fn reset(&mut self) {
        self.seqs[0].clear();
    }

    /// Drops cached tokens after the first `n` (sequence 0).
    pub fn truncate(&mut self, n: usize) {
        self.seqs[0].truncate(n);
    }

    /// Forgets sequence `seq`.
    pub fn reset_seq(&mut self, seq: usize) {
        self.seqs[seq].clear();
    }

    /// Drops the cached tokens of sequence `seq` after the first `n` (a server reuses the
    /// prefix a new request shares with what the sequence held).
    pub fn truncate_seq(&mut self, seq: usize, n: usize) {
        self.seqs[seq].truncate(n);
    }

    /// The NTK alpha sequence `seq` was built with (1 unless a Qwen-1 prefill went past
    /// `seq_length`); a cached prefix is only valid for a prompt that would get the same.
    pub fn seq_ntk_alpha(&self, seq: usize) -> f64 {
        self.ntk_alpha[seq]
    }

    /// The KV cache in host memory, which session state files read and write; only the CPU
    /// backend keeps it there.
    fn host_kv(&self) -> Result<&KvCache> {
        let kind = self.backend.kind();
        self.backend.host_kv().ok_or_else(|| no_host_kv(kind))
    }

    fn host_kv_mut(&mut self) -> Result<&mut KvCache> {
        let kind = self.backend.kind();
        self.backend.host_kv_mut().ok_or_else(|| no_host_kv(kind))
    }

    fn set_ntk_alpha(&mut self, seq: usize, alpha: f64) {
        if alpha != self.ntk_alpha[seq] {
            self.ntk_alpha[seq] = alpha;
            let half = self.model.config.head_dim / 2;
            self.model
                .config
                .rope_inv_freq(alpha, &mut self.inv_freq[seq * half..(seq + 1) * half]);
        }
    }

    fn check_tokens(&self, seq: usize, tokens: &[u32]) -> Result<()> {
        if seq >= self.n_seq() {
            return Err(Error::InvalidArgument(format!(
                "sequence {seq} does not exist (the session holds {})",
                self.n_seq()
            )));
        }
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to evaluate".into()));
        }
        let n_vocab = self.model.config.n_vocab;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (size {n_vocab})"
            )));
        }
        let needed = self.seqs[seq].len() + tokens.len();
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
        self.eval_seq(0, tokens)
    }

    /// Appends `tokens` to sequence `seq` and returns the logits after the last of them.
    pub fn eval_seq(&mut self, seq: usize, tokens: &[u32]) -> Result<&[f32]> {
        self.eval_seq_with_logits(seq, tokens, tokens.len().saturating_sub(1), |_, _| {})?;
        Ok(&self.logits[..self.model.config.n_vocab])
    }

    /// Appends `tokens` and returns the logits after each of them (`[T, V]`, row-major).
    pub fn eval_all_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let n_vocab = self.model.config.n_vocab;
        let mut all = vec![0.0f32; tokens.len() * n_vocab];
        self.eval_with_logits(tokens, 0, |i, row| {
            all[i * n_vocab..(i + 1) * n_vocab].copy_from_slice(row)
        })?;
        Ok(all)
    }

    /// Appends `tokens` and hands `on_logits(i, logits)` the logits after each token `i` from
    /// `logits_from` on, in order, without storing them all (perplexity scores hundreds of
    /// positions of a 150k vocabulary). [`logits`](Self::logits) is then the last token's row.
    pub fn eval_with_logits(
        &mut self,
        tokens: &[u32],
        logits_from: usize,
        on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.eval_seq_with_logits(0, tokens, logits_from, on_logits)
    }

    /// [`eval_with_logits`](Self::eval_with_logits) on sequence `seq`.
    pub fn eval_seq_with_logits(
        &mut self,
        seq: usize,
        tokens: &[u32],
        logits_from: usize,
        mut on_logits: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.check_tokens(seq, tokens)?;
        let logits_from = logits_from.min(tokens.len() - 1);
        if self.seqs[seq].is_empty() {
            // Qwen-1 fixes its NTK alpha from the length of the prefill on an empty cache and
            // keeps it for the decode steps that follow (testdata README §4).
            let alpha = self.model.config.ntk_alpha(tokens.len());
            self.set_ntk_alpha(seq, alpha);
        }
        let n_vocab = self.model.config.n_vocab;
        let max_batch = self.max_batch();
        let mut done = 0;
        let mut n_out = 0;
        for chunk in tokens.chunks(max_batch) {
            let pos0 = self.seqs[seq].len();
            let n = chunk.len();
            self.batch_seq[..n].fill(seq);
            for (t, p) in self.batch_pos[..n].iter_mut().enumerate() {
                *p = pos0 + t;
            }
            // Rows of this chunk whose logits are wanted: chunk_from..n.
            let chunk_from = logits_from.saturating_sub(done).min(n);
            n_out = n - chunk_from;
            let batch = Batch {
                tokens: chunk,
                seq: &self.batch_seq[..n],
                pos: &self.batch_pos[..n],
                logits_from: chunk_from,
            };
            self.backend.forward(
                &self.model,
                &self.inv_freq,
                &batch,
                &mut self.logits[..n_out * n_vocab],
            )?;
            for r in 0..n_out {
                on_logits(
                    done + chunk_from + r,
                    &self.logits[r * n_vocab..(r + 1) * n_vocab],
                );
            }
            self.seqs[seq].extend_from_slice(chunk);
            self.n_evaluated += n as u64;
            done += n;
        }
        // The last token is always wanted, so the last chunk produced it: keep it in row 0.
        if n_out > 1 {
            self.logits
                .copy_within((n_out - 1) * n_vocab..n_out * n_vocab, 0);
        }
        Ok(())
    }

    /// One decode step for several sequences in one forward pass: appends `tokens[i]` to
    /// sequence `seqs[i]` (distinct sequences, at most [`max_batch`](Self::max_batch)) and
    /// returns the logits after each, `[seqs.len(), V]` row-major.
    pub fn decode_batch(&mut self, seqs: &[usize], tokens: &[u32]) -> Result<&[f32]> {
        let n = tokens.len();
        if seqs.len() != n || n == 0 || n > self.max_batch() {
            return Err(Error::InvalidArgument(format!(
                "decode_batch takes 1 to {} (sequence, token) pairs, got {} sequences and {n} tokens",
                self.max_batch(),
                seqs.len()
            )));
        }
        for (i, (&seq, &tok)) in seqs.iter().zip(tokens).enumerate() {
            self.check_tokens(seq, &[tok])?;
            if seqs[..i].contains(&seq) {
                return Err(Error::InvalidArgument(format!(
                    "sequence {seq} appears twice in one decode step"
                )));
            }
        }
        for (i, &seq) in seqs.iter().enumerate() {
            self.stage_decode(i, seq);
        }
        let n_vocab = self.model.config.n_vocab;
        let batch = Batch {
            tokens,
            seq: &self.batch_seq[..n],
            pos: &self.batch_pos[..n],
            logits_from: 0,
        };
        self.backend.forward(
            &self.model,
            &self.inv_freq,
            &batch,
            &mut self.logits[..n * n_vocab],
        )?;
        for (&seq, &tok) in seqs.iter().zip(tokens) {
            self.seqs[seq].push(tok);
        }
        self.n_evaluated += n as u64;
        Ok(&self.logits[..n * n_vocab])
    }

    /// Row `i` of the batch being built: the next position of sequence `seq`, whose NTK alpha is
    /// fixed here when a decode step is its first token (as a one-token prefill would fix it).
    fn stage_decode(&mut self, i: usize, seq: usize) {
        if self.seqs[seq].is_empty() {
            let alpha = self.model.config.ntk_alpha(1);
            self.set_ntk_alpha(seq, alpha);
        }
        self.batch_seq[i] = seq;
        self.batch_pos[i] = self.seqs[seq].len();
    }

    /// Appends `token` to sequence 0 and returns the greedy next token (the logits' argmax, the
    /// first on ties): on a GPU computed on the device, so only 4 bytes come back instead of
    /// the vocabulary's logits; elsewhere the host's argmax of [`eval`](Self::eval)'s logits.
    /// [`logits`](Self::logits) is not updated on the device path.
    pub fn eval_greedy(&mut self, token: u32) -> Result<u32> {
        self.check_tokens(0, &[token])?;
        self.stage_decode(0, 0);
        let batch = Batch {
            tokens: std::slice::from_ref(&token),
            seq: &self.batch_seq[..1],
            pos: &self.batch_pos[..1],
            logits_from: 0,
        };
        let mut next = [0u32];
        let on_device =
            self.backend
                .forward_argmax(&self.model, &self.inv_freq, &batch, &mut next)?;
        if !on_device {
            let n_vocab = self.model.config.n_vocab;
            self.backend.forward(
                &self.model,
                &self.inv_freq,
                &batch,
                &mut self.logits[..n_vocab],
            )?;
            next[0] = crate::sampler::argmax(&self.logits[..n_vocab]);
        }
        self.seqs[0].push(token);
        self.n_evaluated += 1;
        Ok(next[0])
    }

    /// Makes the cache hold exactly `tokens`, reusing the longest cached prefix, and returns the
    /// logits after the last token. At least one token is always evaluated so the logits exist.
    /// Qwen-1 with dynamic NTK: when the NTK alpha for `tokens.len()` differs from the one the
    /// cache was built with, everything is recomputed, as the reference's fresh prefill would.
    pub fn eval_reusing_prefix(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let mut common = self.seqs[0]
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len().saturating_sub(1));
        if common > 0 && self.model.config.ntk_alpha(tokens.len()) != self.ntk_alpha[0] {
            common = 0;
        }
        self.seqs[0].truncate(common);
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
        if self.seqs[0].is_empty() {
            return Err(Error::InvalidArgument("generate needs a prompt".into()));
        }
        let mut out = Vec::with_capacity(max_tokens.min(self.n_ctx()));
        let n_vocab = self.model.config.n_vocab;
        for i in 0..max_tokens {
            let tok = sampler.sample(&mut self.logits[..n_vocab], &self.seqs[0]);
            out.push(tok);
            if stop_tokens.contains(&tok) || !on_token(tok) {
                return Ok((out, FinishReason::Stop));
            }
            if i + 1 == max_tokens || self.seqs[0].len() >= self.n_ctx() {
                break;
            }
            self.eval(&[tok])?;
        }
        Ok((out, FinishReason::Length))
    }

    /// Generates for several prompts at once, each exactly as `reset`, `eval(prompt)`,
    /// `generate(samplers[i], ..)` would on its own: prompt `i` goes to sequence `i` (there must
    /// be at most [`n_seq`](Self::n_seq) prompts), is prefilled, and then every step decodes one
    /// token of every live sequence in one forward pass. Sequences finish independently.
    /// `on_token(i, token)` returns false to stop sequence `i`.
    pub fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        samplers: &mut [Sampler],
        max_tokens: usize,
        stop_tokens: &[u32],
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<(Vec<u32>, FinishReason)>> {
        let n = prompts.len();
        if n > self.n_seq() || samplers.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{n} prompts with {} samplers for a session of {} sequences",
                samplers.len(),
                self.n_seq()
            )));
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(Error::InvalidArgument(format!("prompt {i} is empty")));
        }
        let n_vocab = self.model.config.n_vocab;
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut finish: Vec<Option<FinishReason>> = vec![None; n];
        let mut pending: Vec<(usize, u32)> = Vec::with_capacity(n);
        // Samples the next token of `seq` from `row` and decides whether it continues.
        let mut step = |s: &Session,
                        seq: usize,
                        row: &mut [f32],
                        out: &mut Vec<u32>,
                        finish: &mut Option<FinishReason>,
                        pending: &mut Vec<(usize, u32)>| {
            let tok = samplers[seq].sample(row, &s.seqs[seq]);
            out.push(tok);
            if stop_tokens.contains(&tok) || !on_token(seq, tok) {
                *finish = Some(FinishReason::Stop);
            } else if out.len() >= max_tokens || s.seqs[seq].len() >= s.n_ctx() {
                *finish = Some(FinishReason::Length);
            } else {
                pending.push((seq, tok));
            }
        };
        let mut row = vec![0.0f32; n_vocab];
        for (seq, prompt) in prompts.iter().enumerate() {
            self.reset_seq(seq);
            self.eval_seq(seq, prompt)?;
            if max_tokens == 0 {
                finish[seq] = Some(FinishReason::Length);
                continue;
            }
            row.copy_from_slice(&self.logits[..n_vocab]);
            step(
                self,
                seq,
                &mut row,
                &mut out[seq],
                &mut finish[seq],
                &mut pending,
            );
        }
        let mut seqs = Vec::with_capacity(n);
        let mut toks = Vec::with_capacity(n);
        while !pending.is_empty() {
            let live = std::mem::take(&mut pending);
            for chunk in live.chunks(self.max_batch()) {
                seqs.clear();
                toks.clear();
                seqs.extend(chunk.iter().map(|p| p.0));
                toks.extend(chunk.iter().map(|p| p.1));
                self.decode_batch(&seqs, &toks)?;
                for (r, &seq) in seqs.iter().enumerate() {
                    row.copy_from_slice(&self.logits[r * n_vocab..(r + 1) * n_vocab]);
                    step(
                        self,
                        seq,
                        &mut row,
                        &mut out[seq],
                        &mut finish[seq],
                        &mut pending,
                    );
                }
            }
        }
        Ok(out
            .into_iter()
            .zip(finish)
            .map(|(o, f)| (o, f.unwrap_or(FinishReason::Length)))
            .collect())
    }
}

fn no_host_kv(kind: BackendKind) -> Error {
    Error::Unsupported(format!(
        "session state files on the {kind} backend (its KV cache lives on the device; use the cpu backend)"
    ))
}
