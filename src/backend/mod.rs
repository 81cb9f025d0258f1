//! Compute backends. The CPU backend is always present; `cuda` and `rocm` are features whose
//! driver libraries are loaded at run time (building them needs neither toolkit).
//!
//! [`Backend`] is one forward step: a batch of tokens in, their keys and values appended to the
//! backend's own KV cache, logits out. Each backend owns its cache and scratch buffers, allocated
//! once when it is created. The CPU backend wraps [`forward`](crate::model::forward::forward)
//! unchanged; the GPU backends (`gpu/`) hold the weights in their block formats on the device.
//! A [`Session`](crate::session::Session) owns one backend (`SessionOptions::backend`), so
//! everything built on sessions (chat, batches, the server, the C ABI) runs on any of them.
pub mod cpu;
pub mod gpu;
pub mod layout;

use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvCacheType};
use crate::model::forward::{forward, Batch, Scratch};
use crate::model::Model;
use cpu::ThreadPool;
use std::fmt;

/// Which backend runs the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendKind {
    #[default]
    Cpu,
    Cuda,
    Rocm,
}

impl BackendKind {
    pub fn parse(s: &str) -> Result<BackendKind> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(BackendKind::Cpu),
            "cuda" => Ok(BackendKind::Cuda),
            "rocm" | "hip" => Ok(BackendKind::Rocm),
            other => Err(Error::InvalidArgument(format!(
                "backend `{other}` (expected cpu, cuda or rocm)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Rocm => "rocm",
        }
    }

    /// Whether this build contains the backend (its feature was enabled).
    pub fn compiled(self) -> bool {
        match self {
            BackendKind::Cpu => true,
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::Rocm => cfg!(feature = "rocm"),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BackendKind::parse(s)
    }
}

/// `--backend` and `--device`, shared by every command that runs a model (the `qwen` CLI and
/// `qwen serve`).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct BackendArgs {
    /// Compute backend: cpu, cuda or rocm (the GPU ones need a build with that feature).
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
    /// GPU ordinal for --backend cuda/rocm.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// What a backend allocates at creation.
#[derive(Clone, Debug)]
pub struct BackendParams {
    /// Positions per sequence in the KV cache.
    pub n_ctx: usize,
    /// Sequences the cache holds.
    pub n_seq: usize,
    /// Most tokens in one forward pass.
    pub max_batch: usize,
    /// CPU worker threads (0: one per core); the GPU backends use one host thread.
    pub n_threads: usize,
    /// KV cache storage: F32, F16 or Q8 on the CPU; F16 or Q8 (int8) on a GPU.
    pub kv_cache: KvCacheType,
    /// GPU ordinal.
    pub device: usize,
}

impl Default for BackendParams {
    fn default() -> Self {
        BackendParams {
            n_ctx: 2048,
            n_seq: 1,
            max_batch: 64,
            n_threads: 0,
            kv_cache: KvCacheType::F16,
            device: 0,
        }
    }
}

/// One forward step of a model on some device.
///
/// `Send` so a [`Session`](crate::session::Session) (which owns its backend) can move to the
/// thread that serves it.
pub trait Backend: Send {
    fn kind(&self) -> BackendKind;
    /// A description of the device ("cpu (8 threads)", "cuda:0 NVIDIA H200 (sm_90)").
    fn device_name(&self) -> String;
    fn n_ctx(&self) -> usize;
    fn n_seq(&self) -> usize;
    fn max_batch(&self) -> usize;
    /// Host threads doing the work (the GPU backends drive their device from one).
    fn n_threads(&self) -> usize {
        1
    }
    /// The KV cache's storage (a GPU stores an F32 request as F16).
    fn kv_cache_type(&self) -> KvCacheType;
    /// Bytes the whole KV cache holds (every sequence's full context), wherever it lives.
    fn kv_bytes(&self) -> usize;
    /// KV cache bytes per token of one sequence.
    fn kv_bytes_per_token(&self) -> usize {
        self.kv_bytes() / (self.n_ctx() * self.n_seq()).max(1)
    }
    /// The KV cache when it lives in host memory (the CPU backend), for saving and restoring
    /// session state; `None` where it lives on a device.
    fn host_kv(&self) -> Option<&KvCache> {
        None
    }
    fn host_kv_mut(&mut self) -> Option<&mut KvCache> {
        None
    }
    /// Runs `batch` (see [`Batch`]: at most `max_batch` tokens, positions below `n_ctx`,
    /// sequences below `n_seq`), appending each token's key and value to the cache, and writes
    /// the logits of tokens `logits_from..T` to `logits[..(T - logits_from) * V]`. `inv_freq`
    /// holds each sequence's RoPE frequencies (`[n_seq, hd/2]`).
    fn forward(
        &mut self,
        model: &Model,
        inv_freq: &[f32],
        batch: &Batch,
        logits: &mut [f32],
    ) -> Result<()>;

    /// [`forward`](Self::forward), handing back only each logits row's argmax (the first on
    /// ties, as [`crate::sampler::argmax`]) in `out[..T - logits_from]`, computed where the
    /// logits are: greedy decoding on a GPU then copies 4 bytes per token instead of the
    /// vocabulary's logits. `Ok(false)`, having done nothing, where a backend has no such path
    /// (the CPU: its logits are in host memory already).
    fn forward_argmax(
        &mut self,
        _model: &Model,
        _inv_freq: &[f32],
        _batch: &Batch,
        _out: &mut [u32],
    ) -> Result<bool> {
        Ok(false)
    }
}

/// The CPU backend: the worker pool, a [`KvCache`] and [`Scratch`], and the CPU forward pass.
pub struct CpuBackend {
    pool: ThreadPool,
    kv: KvCache,
    scratch: Scratch,
}

impl CpuBackend {
    pub fn new(model: &Model, p: &BackendParams) -> Result<CpuBackend> {
        check_params(model, p)?;
        let c = &model.config;
        let n_threads = match p.n_threads {
            0 => cpu::default_threads(),
            n => n.min(256),
        };
        let mut kv = KvCache::with_type(
            p.kv_cache,
            c.n_layer,
            p.n_seq,
            p.n_ctx,
            c.n_head_kv,
            c.head_dim,
        );
        if p.kv_cache == KvCacheType::Q8 {
            // As in Session: a Q8 cache stores keys without their bias.
            let bias: Option<Vec<f32>> = (0..c.n_layer)
                .map(|l| model.key_bias(l).map(<[f32]>::to_vec))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.concat())
                .filter(|v| !v.is_empty());
            if let Some(bias) = bias {
                kv.set_key_bias(bias)?;
            }
        }
        Ok(CpuBackend {
            scratch: Scratch::new(model, p.max_batch, p.n_ctx, n_threads),
            pool: ThreadPool::new(n_threads),
            kv,
        })
    }
}

impl Backend for CpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }

    fn device_name(&self) -> String {
        format!("cpu ({} threads)", self.pool.n_threads())
    }

    fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    fn n_seq(&self) -> usize {
        self.kv.n_seq()
    }

    fn max_batch(&self) -> usize {
        self.scratch.max_batch
    }

    fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    fn kv_cache_type(&self) -> KvCacheType {
        self.kv.ty()
    }

    fn kv_bytes(&self) -> usize {
        self.kv.bytes()
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.kv.bytes_per_token()
    }

    fn host_kv(&self) -> Option<&KvCache> {
        Some(&self.kv)
    }

    fn host_kv_mut(&mut self) -> Option<&mut KvCache> {
        Some(&mut self.kv)
    }

    fn forward(
        &mut self,
        model: &Model,
        inv_freq: &[f32],
        batch: &Batch,
        logits: &mut [f32],
    ) -> Result<()> {
        check_batch(model, self, inv_freq, batch, logits)?;
        forward(
            model,
            &self.pool,
            &mut self.kv,
            &mut self.scratch,
            inv_freq,
            batch,
            logits,
        );
        Ok(())
    }
}

/// Creates the backend `kind` for `model`, or says why it cannot: not built in
/// ("built without feature cuda"), driver library or device missing, or a model the backend
/// cannot run.
pub fn create(kind: BackendKind, model: &Model, p: &BackendParams) -> Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Cpu => Ok(Box::new(CpuBackend::new(model, p)?)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(Box::new(gpu::GpuBackend::<gpu::cuda::Cuda>::new(model, p)?)),
        #[cfg(feature = "rocm")]
        BackendKind::Rocm => Ok(Box::new(gpu::GpuBackend::<gpu::hip::Hip>::new(model, p)?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::Backend(format!(
            "{other}: built without feature {other} (rebuild with `--features {other}`)"
        ))),
    }
}

fn check_params(model: &Model, p: &BackendParams) -> Result<()> {
    if p.n_ctx == 0 || p.n_ctx > 1 << 20 || p.n_seq == 0 || p.n_seq > 4096 || p.max_batch == 0 {
        return Err(Error::InvalidArgument(format!(
            "backend parameters: n_ctx {} (1..=2^20), n_seq {} (1..=4096), max_batch {} (>= 1)",
            p.n_ctx, p.n_seq, p.max_batch
        )));
    }
    model.config.check_rope()
}

/// Checks a batch against the backend's sizes, so a bad call is an error and not a panic or an
/// out-of-bounds device access.
fn check_batch(
    model: &Model,
    b: &dyn Backend,
    inv_freq: &[f32],
    batch: &Batch,
    logits: &[f32],
) -> Result<()> {
    check_batch_rows(
        model,
        b,
        inv_freq,
        batch,
        logits.len() / model.config.n_vocab.max(1),
    )
}

/// [`check_batch`] with room for `out_rows` rows of output (logits or argmaxes).
fn check_batch_rows(
    model: &Model,
    b: &dyn Backend,
    inv_freq: &[f32],
    batch: &Batch,
    out_rows: usize,
) -> Result<()> {
    let c = &model.config;
    let t = batch.tokens.len();
    let bad = |msg: String| Err(Error::InvalidArgument(format!("forward: {msg}")));
    if t == 0 || t > b.max_batch() || batch.seq.len() != t || batch.pos.len() != t {
        return bad(format!(
            "{t} tokens with {} sequences and {} positions (1..={} tokens)",
            batch.seq.len(),
            batch.pos.len(),
            b.max_batch()
        ));
    }
    if batch.logits_from > t || out_rows < t - batch.logits_from {
        return bad(format!(
            "outputs from token {} of {t} need {} rows, got room for {out_rows}",
            batch.logits_from,
            t - batch.logits_from.min(t),
        ));
    }
    if inv_freq.len() < b.n_seq() * (c.head_dim / 2) {
        return bad(format!("inv_freq holds {} floats", inv_freq.len()));
    }
    for i in 0..t {
        if batch.tokens[i] as usize >= c.n_vocab
            || batch.seq[i] >= b.n_seq()
            || batch.pos[i] >= b.n_ctx()
        {
            return bad(format!(
                "token {i}: id {} (vocabulary {}), sequence {} (of {}), position {} (context {})",
                batch.tokens[i],
                c.n_vocab,
                batch.seq[i],
                b.n_seq(),
                batch.pos[i],
                b.n_ctx()
            ));
        }
    }
    Ok(())
}

/// Greedy decoding of one sequence straight on a backend: [`generate`] with the argmax.
pub fn greedy(
    model: &Model,
    backend: &mut dyn Backend,
    prompt: &[u32],
    n: usize,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    generate(
        model,
        backend,
        prompt,
        n,
        |logits| crate::sampler::argmax(logits),
        on_token,
    )
}

/// Decoding of one sequence (sequence 0 from position 0) straight on a backend, without a
/// [`Session`](crate::session::Session): `prompt` in chunks of `max_batch`, then up to `n`
/// tokens, each `pick(logits)`, until `on_token` returns false. Qwen-1's NTK alpha is fixed from
/// the prompt's length, as `Session` does. Used by the backend-parity tests, which compare
/// backends below the session.
pub fn generate(
    model: &Model,
    backend: &mut dyn Backend,
    prompt: &[u32],
    n: usize,
    mut pick: impl FnMut(&mut [f32]) -> u32,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let c = &model.config;
    if prompt.is_empty() || prompt.len() + n > backend.n_ctx() {
        return Err(Error::InvalidArgument(format!(
            "{} prompt tokens + {n} new do not fit in the context of {} (and the prompt must not be empty)",
            prompt.len(),
            backend.n_ctx()
        )));
    }
    let half = c.head_dim / 2;
    let mut inv_freq = vec![0.0f32; backend.n_seq() * half];
    c.rope_inv_freq(c.ntk_alpha(prompt.len()), &mut inv_freq[..half]);
    let mut logits = vec![0.0f32; c.n_vocab];
    let max_batch = backend.max_batch();
    let seq = vec![0usize; max_batch];
    let mut pos: Vec<usize> = Vec::with_capacity(max_batch);
    let mut done = 0;
    for chunk in prompt.chunks(max_batch) {
        pos.clear();
        pos.extend(done..done + chunk.len());
        let batch = Batch {
            tokens: chunk,
            seq: &seq[..chunk.len()],
            pos: &pos,
            logits_from: chunk.len() - 1,
        };
        backend.forward(model, &inv_freq, &batch, &mut logits)?;
        done += chunk.len();
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let tok = pick(&mut logits);
        out.push(tok);
        if !on_token(tok) || out.len() == n {
            break;
        }
        let batch = Batch {
            tokens: &[tok],
            seq: &seq[..1],
            pos: &[done],
            logits_from: 0,
        };
        backend.forward(model, &inv_freq, &batch, &mut logits)?;
        done += 1;
    }
    Ok(out)
}
