//! AVX-512F versions of the f32 kernels in `ops` that attention's blocked (prefill) path runs:
//! twice the lanes of the AVX2 ones, and 32 registers for a larger register tile. Safe
//! `#[target_feature]` functions: `ops` calls them only after checking the CPU. Each output lane
//! is the same chain of fused multiply-adds as in the AVX2 build, so the two give the same bits.

use std::arch::x86_64::*;

/// Whether this CPU runs the kernels of this module.
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx512f") && super::x86_avx2::detected()
}

/// The 16 f32 at `s[i..i + 16]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn load(s: &[f32], i: usize) -> __m512 {
    let s = &s[i..i + 16];
    // SAFETY: `s` holds exactly 16 readable f32; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn store(d: &mut [f32], i: usize, v: __m512) {
    let d = &mut d[i..i + 16];
    // SAFETY: `d` holds exactly 16 writable f32, borrowed exclusively; no alignment needed.
    unsafe { _mm512_storeu_ps(d.as_mut_ptr(), v) }
}

/// `c[i][j] (+)= Σ_p a[i][p]·b[p][j]` (see `ops::gemm_f32`), for `n` a multiple of 16: tiles
/// of 8 rows × 32 columns in registers (16 accumulators; per step two loads of `b`, eight
/// broadcasts of `a`, sixteen fmas), then 8 × 16, then single rows.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(n.is_multiple_of(16));
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(8);
        let mut j = 0;
        while j < n {
            let cols = if n - j >= 32 { 32 } else { 16 };
            match (rows, cols) {
                (8, 32) => tile::<8, 2>(i, j, k, a, lda, b, ldb, c, ldc, accumulate),
                (8, _) => tile::<8, 1>(i, j, k, a, lda, b, ldb, c, ldc, accumulate),
                (_, 32) => {
                    for r in i..i + rows {
                        tile::<1, 2>(r, j, k, a, lda, b, ldb, c, ldc, accumulate)
                    }
                }
                _ => {
                    for r in i..i + rows {
                        tile::<1, 1>(r, j, k, a, lda, b, ldb, c, ldc, accumulate)
                    }
                }
            }
            j += cols;
        }
        i += rows;
    }
}

/// Rows `i..i + R` × columns `j..j + 16·V` of `c`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
fn tile<const R: usize, const V: usize>(
    i: usize,
    j: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = load(c, (i + r) * ldc + j + 16 * v);
            }
        }
    }
    let arows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * lda..(i + r) * lda + k]);
    for p in 0..k {
        let bv: [__m512; V] = std::array::from_fn(|v| load(b, p * ldb + j + 16 * v));
        for r in 0..R {
            let x = _mm512_set1_ps(arows[r][p]);
            for v in 0..V {
                acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            store(c, (i + r) * ldc + j + 16 * v, x);
        }
    }
}

/// `ops::exp_sub_sum`: its portable code compiled for AVX-512 (one register per 16 lanes; the
/// same operations in the same order, so the portable build's bits).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    super::ops::exp_sub_sum_lanes(x, m)
}
