//! The multiply-accumulate peak of one thread per x86 instruction the kernels could use, to read
//! `bench_gemm`'s MAC/ns against, and to decide between instructions by measurement.
//!
//! ```text
//! cargo run --release --example bench_peak
//! ```
//!
//! Each instruction runs 24 independent accumulator chains (12 for AVX2, which has 16 registers),
//! enough to hide its latency on register operands, so only its throughput limits the rate.
//! Reported: MAC/ns of this thread's CPU time, best of 5 runs. An instruction this CPU lacks is
//! reported as such. (It is why BF16 weights go through `vfmadd231ps` after widening rather than
//! `vdpbf16ps`: on the Sapphire Rapids hosts here `vdpbf16ps` peaks at about half the f32 FMA
//! rate, 41 vs 83 MAC/ns, below what the BF16 matrix tile already reaches.)

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    const CHAINS: usize = 24;
    /// AVX2 has 16 vector registers: 24 chains would spill.
    const CHAINS_AVX2: usize = 12;
    const ITERS: usize = 2_000_000;

    /// Seconds of this thread's CPU time.
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

    /// MAC/ns of `run`, which performs `macs` multiply-accumulates: the best of 5 runs.
    fn rate(macs: usize, run: impl Fn() -> f32) -> f64 {
        (0..5)
            .map(|_| {
                let t = thread_cpu_time();
                black_box(run());
                macs as f64 / (thread_cpu_time() - t) / 1e9
            })
            .fold(0.0, f64::max)
    }

    #[target_feature(enable = "avx2,fma")]
    fn fma256(a: __m256, b: __m256) -> f32 {
        let mut acc = [_mm256_setzero_ps(); CHAINS_AVX2];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm256_fmadd_ps(a, b, *c);
            }
        }
        let s = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &c| _mm256_add_ps(s, c));
        _mm256_cvtss_f32(s)
    }

    #[target_feature(enable = "avx512f")]
    fn fma512(a: __m512, b: __m512) -> f32 {
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm512_fmadd_ps(a, b, *c);
            }
        }
        _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, &c| _mm512_add_ps(s, c)),
        )
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dpbf16(a: __m512bh, b: __m512bh) -> f32 {
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, b);
            }
        }
        _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_setzero_ps(), |s, &c| _mm512_add_ps(s, c)),
        )
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    fn dpbusd(a: __m512i, b: __m512i) -> f32 {
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..ITERS {
            for c in acc.iter_mut() {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        let s = acc
            .iter()
            .fold(_mm512_setzero_si512(), |s, &c| _mm512_add_epi32(s, c));
        _mm512_reduce_add_epi32(s) as f32
    }

    fn report(name: &str, macs_per_iter: usize, supported: bool, run: impl Fn() -> f32) {
        if supported {
            println!("{name:<28} {:>8.1}", rate(ITERS * macs_per_iter, run));
        } else {
            println!("{name:<28} {:>8}", "n/a (CPU lacks it)");
        }
    }

    pub fn main() {
        println!("{:<28} {:>8}  (one thread)", "instruction", "MAC/ns");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f");
        let bf16 = avx512 && is_x86_feature_detected!("avx512bf16");
        let vnni = avx512 && is_x86_feature_detected!("avx512vnni");
        // SAFETY (each call): only made where the CPU reports the function's features.
        report("vfmadd231ps ymm (f32)", 8 * CHAINS_AVX2, avx2, || unsafe {
            fma256(black_box(_mm256_set1_ps(1e-7)), _mm256_set1_ps(1e-7))
        });
        report("vfmadd231ps zmm (f32)", 16 * CHAINS, avx512, || unsafe {
            fma512(black_box(_mm512_set1_ps(1e-7)), _mm512_set1_ps(1e-7))
        });
        report("vdpbf16ps zmm (bf16 pairs)", 32 * CHAINS, bf16, || unsafe {
            let one: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
            dpbf16(black_box(one), one)
        });
        report("vpdpbusd zmm (u8 x i8)", 64 * CHAINS, vnni, || unsafe {
            dpbusd(black_box(_mm512_set1_epi8(1)), _mm512_set1_epi8(1))
        });
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    x86::main();
    #[cfg(not(target_arch = "x86_64"))]
    println!("bench_peak measures x86-64 instructions only");
}
