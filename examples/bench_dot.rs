//! Micro-benchmark of the quant kernels: `vec_dot` per weight type, the scalar reference against
//! the build `dispatch` selected for this CPU, and the activation quantizers.
//!
//! ```text
//! cargo run --release --example bench_dot [-- [--cols N] [--rows N] [--types q4_k,q6_k,...]]
//! ```
//!
//! Each type is timed over a matrix of `rows` weight rows of `cols` elements (default 4096 × 64:
//! at most ~1 MB, so it stays in L2/L3 and the numbers are kernel throughput, not DRAM
//! bandwidth; pass `--rows 8192` for a matrix that streams from memory). Reported: nanoseconds
//! per row and GB/s of weight bytes read, in this thread's CPU time (the machine is shared, so
//! wall time would include other processes' slices), best of 7 runs of at least 20 ms, one thread.

use std::hint::black_box;

use qwen::gguf::GgmlType;
use qwen::quant::{
    quantize_row, quantize_row_scalar, vec_dot, vec_dot_path, vec_dot_scalar, vec_dot_type,
};

/// xorshift32 values, roughly normal.
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

/// CPU time of this thread in seconds. The machine is shared: wall-clock time would count the
/// slices other processes get, while on-CPU time (no SMT here) only counts our own work.
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

/// Seconds (of this thread's CPU time) per call of `f`: the best of 7 runs of at least 20 ms.
fn time(mut f: impl FnMut()) -> f64 {
    let mut iters = 1u64;
    loop {
        let t = thread_cpu_time();
        for _ in 0..iters {
            f();
        }
        if thread_cpu_time() - t >= 0.02 {
            break;
        }
        iters *= 2;
    }
    (0..7)
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
    let mut cols = 4096usize;
    let mut rows = 64usize;
    let mut types = vec![
        Q4_K, Q6_K, Q5_0, Q8_0, Q4_0, Q4_1, Q5_1, Q5_K, Q3_K, Q2_K, Q8_K, F16, BF16, F32,
    ];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("missing value");
        match a.as_str() {
            "--cols" => cols = val().parse().expect("--cols N"),
            "--rows" => rows = val().parse().expect("--rows N"),
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
            _ => panic!("usage: bench_dot [--cols N] [--rows N] [--types q4_k,q6_k,...]"),
        }
    }
    println!(
        "vec_dot, {rows} rows x {cols} cols, 1 thread; selected build: {}",
        vec_dot_path()
    );
    println!(
        "{:<6} {:>9} {:>12} {:>12} {:>11} {:>11} {:>8}",
        "type", "bytes/row", "scalar ns", "simd ns", "scalar GB/s", "simd GB/s", "speedup"
    );
    let mut rng = Rng(0x1234_5678);
    for ty in types {
        let Some(rb) = ty.row_bytes(cols) else {
            println!(
                "{:<6} skipped: {cols} is not a multiple of {}",
                ty.name(),
                ty.block_size()
            );
            continue;
        };
        let mut w = vec![0u8; rb * rows];
        for r in w.chunks_exact_mut(rb) {
            let x: Vec<f32> = (0..cols).map(|_| rng.value()).collect();
            quantize_row_scalar(ty, &x, r).unwrap();
        }
        let at = vec_dot_type(ty);
        let x: Vec<f32> = (0..cols).map(|_| rng.value()).collect();
        let mut a = vec![0u8; at.row_bytes(cols).unwrap()];
        quantize_row(at, &x, &mut a).unwrap();
        let run = |dot: fn(GgmlType, usize, &[u8], &[u8]) -> f32| {
            time(|| {
                let mut s = 0f32;
                for r in w.chunks_exact(rb) {
                    s += dot(ty, cols, black_box(r), black_box(&a));
                }
                black_box(s);
            }) / rows as f64
        };
        let scalar = run(vec_dot_scalar);
        let simd = run(vec_dot);
        println!(
            "{:<6} {:>9} {:>12.1} {:>12.1} {:>11.2} {:>11.2} {:>7.1}x",
            ty.name(),
            rb,
            scalar * 1e9,
            simd * 1e9,
            rb as f64 / scalar / 1e9,
            rb as f64 / simd / 1e9,
            scalar / simd
        );
    }

    println!("\nquantize_row of {cols} f32 activations, 1 thread");
    println!(
        "{:<6} {:>12} {:>12} {:>8}",
        "type", "scalar ns", "simd ns", "speedup"
    );
    let x: Vec<f32> = (0..cols).map(|_| rng.value()).collect();
    for at in [Q8_0, Q8_1, Q8_K] {
        let Some(rb) = at.row_bytes(cols) else {
            continue;
        };
        let mut out = vec![0u8; rb];
        let scalar = time(|| quantize_row_scalar(at, black_box(&x), &mut out).unwrap());
        let simd = time(|| quantize_row(at, black_box(&x), &mut out).unwrap());
        println!(
            "{:<6} {:>12.1} {:>12.1} {:>7.1}x",
            at.name(),
            scalar * 1e9,
            simd * 1e9,
            scalar / simd
        );
    }
}
