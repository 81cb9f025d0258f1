//! F32, F16 and BF16 weights against f32 activations on AVX2: the canonical chain of
//! `float::LANES` (16) f32 fma lanes, held in two 8-lane registers per (weight row, activation
//! row). The single-row dot, the 4-row decode kernel and the 2×3 matrix tile all run the same
//! chains, and `float::finish_elem` adds the tail and reduces, so they return the bits of the
//! scalar reference.

use std::arch::x86_64::*;

use super::super::float::{
    elem_bytes, finish_elem, gemm_tiles, rows_tiles, with_elem, E_F16, E_F32, LANES,
};
use super::super::GemmOut;
use super::{hsum_ps, PREFETCH_AHEAD};
use crate::gguf::GgmlType;

/// Weight rows and activation rows of the matrix tile: 12 accumulators, 2 weight vectors and one
/// activation vector fill 15 of the 16 registers.
const R: usize = 2;
const T: usize = 3;
/// Weight rows per decode group (4 streams; 8 accumulators).
const DECODE_ROWS: usize = 4;

/// 8 weight elements of encoding `E` at `p`, as f32 (exact conversions).
///
/// # Safety
/// `p` must be readable for 8 elements (`8 · elem_bytes(E)` bytes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<const E: u8>(p: *const u8) -> __m256 {
    // SAFETY: the caller's contract; unaligned loads.
    unsafe {
        match E {
            E_F32 => _mm256_loadu_ps(p.cast()),
            E_F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.cast()),
            ))),
        }
    }
}

/// The dot products of weight rows `w` (encoding `E`) with f32 activation rows `x` (all cut to
/// the same `n` elements), each the canonical chain of `float::LANES`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
// The register tile is indexed by (row, activation row, part): plain index loops read clearest.
#[allow(clippy::needless_range_loop)]
fn tile<const E: u8, const RR: usize, const TT: usize>(
    w: [&[u8]; RR],
    x: [&[u8]; TT],
) -> [[f32; TT]; RR] {
    let es = elem_bytes(E);
    let n = x[0].len() / 4;
    let chunks = n / LANES;
    assert!(w.iter().all(|r| r.len() >= n * es) && x.iter().all(|a| a.len() >= n * 4));
    let mut acc = [[[_mm256_setzero_ps(); 2]; TT]; RR];
    for c in 0..chunks {
        if TT == 1 {
            // Decode reads each row once, from DRAM: keep requests in flight ahead of it.
            for r in w {
                let p = r.as_ptr().wrapping_add(c * LANES * es + PREFETCH_AHEAD);
                _mm_prefetch::<_MM_HINT_T0>(p.cast());
            }
        }
        for h in 0..2 {
            let i = c * LANES + 8 * h;
            // SAFETY (both loads): i + 8 <= n, and every row holds n elements (asserted above).
            let wv: [__m256; RR] =
                std::array::from_fn(|r| unsafe { load8::<E>(w[r].as_ptr().add(i * es)) });
            for (t, xr) in x.iter().enumerate() {
                let xv = unsafe { _mm256_loadu_ps(xr.as_ptr().add(i * 4).cast()) };
                for r in 0..RR {
                    acc[r][t][h] = _mm256_fmadd_ps(wv[r], xv, acc[r][t][h]);
                }
            }
        }
    }
    let tail = chunks * LANES < n;
    let mut dots = [[0f32; TT]; RR];
    for r in 0..RR {
        for t in 0..TT {
            let [lo, hi] = acc[r][t];
            dots[r][t] = if tail {
                let mut lanes = [0f32; LANES];
                // SAFETY: `lanes` holds 16 f32: 8 at its start and 8 at offset 8.
                unsafe {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), lo);
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi);
                }
                let done = chunks * LANES;
                finish_elem::<E>(lanes, &w[r][done * es..n * es], &x[t][done * 4..n * 4])
            } else {
                // `float::reduce_lanes`: lanes l + (l + 8), then + 4, + 2, + 1.
                hsum_ps(_mm256_add_ps(lo, hi))
            };
        }
    }
    dots
}

/// One float row against its f32 activations (both cut to exactly one row).
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::quant) fn dot(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    with_elem!(ty, E => {
        let mut out = [0f32];
        rows_tiles::<{ elem_bytes(E) }, 1>(w.len(), w, act, &mut out, |w, x| tile::<E, 1, 1>(w, x));
        out[0]
    })
}

/// `out[r]` = [`dot`] of row `r` of `w` (rows of `rb` bytes) with `act`, 4 rows at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::quant) fn dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    with_elem!(ty, E => rows_tiles::<{ elem_bytes(E) }, DECODE_ROWS>(rb, w, act, out, |w, x| tile::<E, DECODE_ROWS, 1>(w, x)))
}

/// The matrix product of float weights in rows of `rb` bytes with `n_tok` f32 activation rows
/// of `arb` bytes (see `Kernels::gemm`) in 2×3 register tiles, if `ty` is a float type and there
/// are enough activation rows; false (nothing done) otherwise.
#[target_feature(enable = "avx2,fma,f16c")]
pub(in crate::quant) fn try_gemm(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || n_tok < T {
        return false;
    }
    with_elem!(ty, E => {
        let n = rb / elem_bytes(E);
        gemm_tiles::<{ elem_bytes(E) }, R, T>(n, w, act, arb, n_tok, out, |w, x| tile::<E, R, T>(w, x))
    });
    true
}
