//! AVX2 + FMA versions of the f32 kernels in `ops` that attention's matrix products run on.
//! Safe `#[target_feature]` functions: `ops` calls them only after checking the CPU.

use std::arch::x86_64::*;

/// Whether this CPU runs the kernels of this module.
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The 8 f32 at `s[i..i + 8]`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn load(s: &[f32], i: usize) -> __m256 {
    let s = &s[i..i + 8];
    // SAFETY: `s` holds exactly 8 readable f32; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn store(d: &mut [f32], i: usize, v: __m256) {
    let d = &mut d[i..i + 8];
    // SAFETY: `d` holds exactly 8 writable f32, borrowed exclusively; no alignment needed.
    unsafe { _mm256_storeu_ps(d.as_mut_ptr(), v) }
}

/// `c[i][j] (+)= Σ_p a[i][p]·b[p][j]` (see `ops::gemm_f32`), for `n` a multiple of 8: tiles of
/// 4 rows × 16 columns in registers, then 4 × 8, then single rows.
#[target_feature(enable = "avx2,fma")]
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
    debug_assert!(n.is_multiple_of(8));
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(4);
        let mut j = 0;
        while j < n {
            let cols = if n - j >= 16 { 16 } else { 8 };
            match (rows, cols) {
                (4, 16) => tile::<4, 2>(i, j, k, a, lda, b, ldb, c, ldc, accumulate),
                (4, _) => tile::<4, 1>(i, j, k, a, lda, b, ldb, c, ldc, accumulate),
                (_, 16) => {
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

/// Rows `i..i + R` × columns `j..j + 8·V` of `c`.
#[target_feature(enable = "avx2,fma")]
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
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, x) in row.iter_mut().enumerate() {
                *x = load(c, (i + r) * ldc + j + 8 * v);
            }
        }
    }
    let arows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * lda..(i + r) * lda + k]);
    for p in 0..k {
        let bv: [__m256; V] = std::array::from_fn(|v| load(b, p * ldb + j + 8 * v));
        for r in 0..R {
            let x = _mm256_set1_ps(arows[r][p]);
            for v in 0..V {
                acc[r][v] = _mm256_fmadd_ps(x, bv[v], acc[r][v]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            store(c, (i + r) * ldc + j + 8 * v, x);
        }
    }
}
