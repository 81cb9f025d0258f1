//! `qwen bench`: prefill and decode throughput with their spread over repetitions, plus load
//! time, peak memory and the weight-read bandwidth decode achieves — the quantities llama-bench
//! reports, measured the same way (prefill: a batch of `n_prompt` tokens; decode: `n_gen`
//! single-token steps; both after `n_depth` tokens already in the cache, llama-bench's `-d`).

use crate::backend::BackendKind;
use crate::error::{Error, Result};
use crate::kv_cache::KvCacheType;
use crate::model::Model;
use crate::sampler::Rng;
use crate::session::{Session, SessionOptions, SessionParams};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchParams {
    pub n_prompt: usize,
    pub n_gen: usize,
    /// Tokens in the cache before each timed run (untimed): long-context speed, where the
    /// attention over the cache weighs on every token.
    pub n_depth: usize,
    /// KV cache storage; `None`: what the CLI picks for the model (F16 for a quantized file,
    /// as llama.cpp).
    pub kv_cache: Option<KvCacheType>,
    pub reps: usize,
    /// 0 = physical cores.
    pub n_threads: usize,
    /// The backend to measure, and its GPU ordinal.
    pub backend: BackendKind,
    pub device: usize,
    /// Decode steps through [`Session::eval_greedy`] (only the greedy token back; on a GPU the
    /// argmax is taken on the device) instead of [`Session::eval`] (the logits back).
    pub greedy_step: bool,
}

impl Default for BenchParams {
    fn default() -> Self {
        BenchParams {
            n_prompt: 512,
            n_gen: 128,
            n_depth: 0,
            kv_cache: None,
            reps: 5,
            n_threads: 0,
            backend: BackendKind::Cpu,
            device: 0,
            greedy_step: false,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub model: String,
    /// `cpu`, `cuda` or `rocm`, and the device it ran on ("cpu (2 threads)", "cuda NVIDIA …").
    pub backend: &'static str,
    pub device: String,
    pub n_threads: usize,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    /// The KV cache storage type measured (`f32`, `f16`, `q8`).
    pub kv_cache: &'static str,
    /// Decode steps handed back only the greedy token (`--greedy-step`), not the logits.
    pub greedy_step: bool,
    pub reps: usize,
    pub load_ms: f64,
    /// Creating the session: cache and scratch allocation; on a GPU also the weight upload and
    /// the kernels' compilation.
    pub backend_init_ms: f64,
    pub prefill_tps: f64,
    pub prefill_tps_sd: f64,
    pub decode_tps: f64,
    pub decode_tps_sd: f64,
    pub peak_rss_mb: f64,
    /// Weight bytes read per decoded token (every matrix once, one embedding row).
    pub weight_bytes_per_token: usize,
    /// Memory read bandwidth measured by streaming through the mapped weights with the same
    /// threads, in GB/s: best of 3 passes right after each decode rep, averaged over the reps
    /// (on a shared host the bandwidth moves during a run; each rep's measurement sees the
    /// same neighbours as its decode). Host memory: 0 (not measured) on a GPU backend, whose
    /// weights are in device memory.
    pub read_bandwidth_gbs: f64,
    /// `weight_bytes_per_token * decode_tps`, in GB/s.
    pub achieved_bandwidth_gbs: f64,
    /// Decode speed if every token cost exactly one read of its weights at the measured
    /// bandwidth; `decode_tps / bandwidth_bound_tps` is how close decode gets to the bound.
    /// 0 where the bandwidth was not measured.
    pub bandwidth_bound_tps: f64,
    pub kv_bytes_per_token: usize,
    /// The CPU kernel build that ran (`avx2`, `neon+dotprod`, ...; see `QWEN_KERNELS`), or the
    /// GPU backend's name.
    pub kernels: &'static str,
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 where unavailable).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub fn run(path: &Path, p: &BenchParams) -> Result<BenchResult> {
    run_with(path, p, |_| Ok(()))
}

/// [`run`] with `configure` applied to the model's hyperparameters after loading (the CLI's
/// RoPE scaling overrides).
pub fn run_with(
    path: &Path,
    p: &BenchParams,
    configure: impl FnOnce(&mut crate::model::ModelConfig) -> Result<()>,
) -> Result<BenchResult> {
    if p.reps == 0 || (p.n_prompt == 0 && p.n_gen == 0) {
        return Err(Error::InvalidArgument(
            "bench needs -r >= 1 and -p or -n > 0".into(),
        ));
    }
    let t0 = Instant::now();
    let mut model = Model::load(path)?;
    configure(&mut model.config)?;
    let model = Arc::new(model);
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let kv_cache = p
        .kv_cache
        .unwrap_or_else(|| SessionOptions::auto_kv_cache(&model));
    let params = SessionParams {
        n_ctx: (p.n_depth + p.n_prompt.max(1) + p.n_gen + 1).max(16),
        n_threads: p.n_threads,
        max_batch: p.n_prompt.clamp(1, 512),
    };
    let t_init = Instant::now();
    let mut session = Session::with_options(
        Arc::clone(&model),
        &params,
        &SessionOptions {
            kv_cache,
            backend: p.backend,
            device: p.device,
            ..Default::default()
        },
    )?;
    let backend_init_ms = t_init.elapsed().as_secs_f64() * 1e3;
    let on_cpu = p.backend == BackendKind::Cpu;
    let mut rng = Rng::new(1234);
    let n_vocab = model.config.n_vocab as u64;
    // Random ordinary tokens: what is computed does not depend on which ids they are.
    let prompt: Vec<u32> = (0..p.n_prompt)
        .map(|_| (rng.next_u64() % n_vocab.min(150_000)) as u32)
        .collect();
    // One untimed warm-up pass of each kind (page faults on the mapped weights, thread start).
    let warm = prompt.len().clamp(1, 8);
    session.eval(prompt.get(..warm).unwrap_or(&[1]))?;
    session.eval(&[1])?;

    let depth: Vec<u32> = (0..p.n_depth)
        .map(|_| (rng.next_u64() % n_vocab.min(150_000)) as u32)
        .collect();
    // The cache filled to the depth: one batch at a time, as a prompt would be.
    let fill = |session: &mut Session| -> Result<()> {
        session.reset();
        for part in depth.chunks(params.max_batch.max(1)) {
            session.eval(part)?;
        }
        Ok(())
    };

    let (mut prefill, mut decode, mut read_bws) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..p.reps {
        if p.n_prompt > 0 {
            fill(&mut session)?;
            let t = Instant::now();
            session.eval(&prompt)?;
            prefill.push(p.n_prompt as f64 / t.elapsed().as_secs_f64());
        }
        if p.n_gen > 0 {
            fill(&mut session)?;
            session.eval(&[1])?;
            let t = Instant::now();
            for i in 0..p.n_gen {
                let token = (i % 1000) as u32 + 100;
                if p.greedy_step {
                    session.eval_greedy(token)?;
                } else {
                    session.eval(&[token])?;
                }
            }
            decode.push(p.n_gen as f64 / t.elapsed().as_secs_f64());
            if on_cpu {
                read_bws.push(measure_read_bandwidth(
                    model.file().as_bytes(),
                    session.n_threads(),
                ));
            }
        }
    }
    let (prefill_tps, prefill_tps_sd) = if prefill.is_empty() {
        (0.0, 0.0)
    } else {
        mean_sd(&prefill)
    };
    let (decode_tps, decode_tps_sd) = if decode.is_empty() {
        (0.0, 0.0)
    } else {
        mean_sd(&decode)
    };
    let wbpt = model.weight_bytes_per_token();
    let read_bw = if !on_cpu {
        0.0
    } else if read_bws.is_empty() {
        measure_read_bandwidth(model.file().as_bytes(), session.n_threads())
    } else {
        mean_sd(&read_bws).0
    };
    Ok(BenchResult {
        model: path.display().to_string(),
        backend: p.backend.as_str(),
        device: session.device_name(),
        backend_init_ms,
        n_threads: session.n_threads(),
        n_prompt: p.n_prompt,
        n_gen: p.n_gen,
        n_depth: p.n_depth,
        kv_cache: kv_cache.as_str(),
        greedy_step: p.greedy_step,
        reps: p.reps,
        load_ms,
        prefill_tps,
        prefill_tps_sd,
        decode_tps,
        decode_tps_sd,
        peak_rss_mb: peak_rss_mb(),
        weight_bytes_per_token: wbpt,
        read_bandwidth_gbs: read_bw / 1e9,
        achieved_bandwidth_gbs: wbpt as f64 * decode_tps / 1e9,
        bandwidth_bound_tps: read_bw / wbpt.max(1) as f64,
        kv_bytes_per_token: session.kv_bytes_per_token(),
        kernels: if on_cpu {
            crate::quant::vec_dot_path()
        } else {
            p.backend.as_str()
        },
    })
}

/// Bytes per second at which `n_threads` threads can read `bytes` (each sums its own contiguous
/// part as u64 words); best of three passes, so the first pass's page faults don't count.
///
/// On x86-64 the loop prefetches 4 KiB ahead of each line it reads, as the decode kernels do:
/// without it one core cannot keep enough requests in flight, the plain loop read ~10% slower
/// than the kernels stream their weights, and the "bound" was no bound.
pub fn measure_read_bandwidth(bytes: &[u8], n_threads: usize) -> f64 {
    let pool = crate::backend::cpu::ThreadPool::new(n_threads);
    let lines = bytes.len() / 64;
    let sink = std::sync::atomic::AtomicU64::new(0);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        pool.for_ranges(lines, &|range| {
            let mut acc = [0u64; 8];
            let part = &bytes[range.start * 64..range.end * 64];
            for line in part.chunks_exact(64) {
                prefetch_past(line, 4096);
                for (a, w) in acc.iter_mut().zip(line.chunks_exact(8)) {
                    *a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
                }
            }
            let sum = acc.iter().fold(0u64, |x, y| x.wrapping_add(*y));
            sink.fetch_add(sum, std::sync::atomic::Ordering::Relaxed);
        });
        best = best.max((lines * 64) as f64 / t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink.into_inner());
    best
}

/// A hint to fetch the cache line `ahead` bytes past `line` (a no-op where there is no stable
/// prefetch instruction).
#[inline(always)]
fn prefetch_past(line: &[u8], ahead: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = line.as_ptr().cast::<i8>().wrapping_add(ahead);
        // SAFETY: a prefetch is a hint: it never faults and changes nothing, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (line, ahead);
}
