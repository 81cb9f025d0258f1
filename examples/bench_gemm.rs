//! Micro-benchmark of the matrix products: `quant::gemm` (many weight rows against many
//! activation rows) per weight type, against the same products done pair by pair with
//! `vec_dot` (what the matmul did before the matrix kernels).
//!
//! ```text
//! cargo run --release --example bench_gemm [-- [--cols N] [--rows N] [--tokens N] [--types q4_k,...]]
//! ```
//!
//! Defaults: 1536 columns, 256 weight rows, 64 activation rows: a slice of a 1.5B model's
//! projection as one thread of a prefill sees it. Reported per type: the multiply-accumulates per
//! nanosecond of this thread's CPU time (the machine is shared, so wall time would include other
//! processes' slices), best of 5 runs of at least 50 ms, one thread, and the speedup.

use std::hint::black_box;

use qwen::gguf::GgmlType;
use qwen::quant::{
    gemm, gemm_act_row_bytes, quantize_gemm_act, quantize_row_scalar, vec_dot, vec_dot_path,
    vec_dot_type,
};

struct Rng(u32);

impl Rng {
    fn unit(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        (x >> 8) as f32 / (1u32 << 24) as f32
    }
    fn value(&mut self) -> f32 {
        self.unit() + self.unit() + self.unit() + self.unit() - 2.0
    }
}

fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Seconds (of this thread's CPU time) per call of `f`: the best of 5 runs of at least 50 ms.
fn time(mut f: impl FnMut()) -> f64 {
    let mut iters = 1u64;
    loop {
        let t = thread_cpu_time();
        for _ in 0..iters {
            f();
        }
        if thread_cpu_time() - t >= 0.05 {
            break;
        }
        iters *= 2;
    }
    (0..5)
        .map(|_| {
            let t = thread_cpu_time();
            for _ in 0..iters {
                f();
            }
            (thread_cpu_time() - t) / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    use GgmlType::*;
    let (mut cols, mut rows, mut tokens) = (1536usize, 256usize, 64usize);
    let mut types = vec![Q4_K, Q6_K, Q5_0, Q8_0];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("missing value");
        match a.as_str() {
            "--cols" => cols = val().parse().expect("--cols N"),
            "--rows" => rows = val().parse().expect("--rows N"),
            "--tokens" => tokens = val().parse().expect("--tokens N"),
            "--types" => {
                types = val()
                    .split(',')
                    .map(|n| {
                        *GgmlType::ALL
                            .iter()
                            .find(|t| t.name() == n)
                            .unwrap_or_else(|| panic!("unknown type {n}"))
                    })
                    .collect()
            }
            _ => panic!("usage: bench_gemm [--cols N] [--rows N] [--tokens N] [--types q4_k,...]"),
        }
    }
    println!(
        "{rows} weight rows x {cols} cols against {tokens} activation rows, 1 thread; build: {}",
        vec_dot_path()
    );
    println!(
        "{:<6} {:>14} {:>14} {:>8}",
        "type", "vec_dot MAC/ns", "gemm MAC/ns", "speedup"
    );
    let mut rng = Rng(0x1234_5678);
    for ty in types {
        let (Some(rb), Some(arb)) = (ty.row_bytes(cols), gemm_act_row_bytes(ty, cols)) else {
            println!(
                "{:<6} skipped: {cols} is not a whole number of blocks",
                ty.name()
            );
            continue;
        };
        let qrb = vec_dot_type(ty).row_bytes(cols).unwrap();
        let mut w = vec![0u8; rb * rows];
        for r in w.chunks_exact_mut(rb) {
            let x: Vec<f32> = (0..cols).map(|_| rng.value()).collect();
            quantize_row_scalar(ty, &x, r).unwrap();
        }
        // From a cache line, as the model's scratch hands them to the kernels.
        let mut act_buf = vec![0u8; arb * tokens + 63];
        let skip = act_buf.as_ptr().align_offset(64);
        let act = &mut act_buf[skip..skip + arb * tokens];
        for a in act.chunks_exact_mut(arb) {
            let x: Vec<f32> = (0..cols).map(|_| rng.value()).collect();
            quantize_gemm_act(ty, &x, a).unwrap();
        }
        let mut out = vec![0f32; rows * tokens];
        let pairs = time(|| {
            for r in 0..rows {
                let wr = &w[r * rb..(r + 1) * rb];
                for t in 0..tokens {
                    out[t * rows + r] = vec_dot(ty, cols, black_box(wr), &act[t * arb..][..qrb]);
                }
            }
            black_box(&out);
        });
        let matrix = time(|| {
            gemm(
                ty,
                cols,
                black_box(&w),
                black_box(&*act),
                tokens,
                &mut |t0, r, width, v| {
                    for (j, row) in v.chunks_exact(width).enumerate() {
                        let t = t0 + j;
                        out[t * rows + r..t * rows + r + width].copy_from_slice(row)
                    }
                },
            );
            black_box(&out);
        });
        let macs = (rows * cols * tokens) as f64;
        println!(
            "{:<6} {:>14.2} {:>14.2} {:>7.1}x",
            ty.name(),
            macs / pairs / 1e9,
            macs / matrix / 1e9,
            pairs / matrix
        );
    }
}
