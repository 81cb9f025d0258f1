//! F32, F16 and BF16 weights against f32 activations on AVX-512: the canonical chain of
//! `float::LANES` (16) f32 fma lanes is one register per (weight row, activation row). The
//! single-row dot, the 4-row decode kernel and the 4×6 matrix tile run the same chains as the
//! AVX2 and scalar builds (`float::finish_elem` adds the tail and reduces), so they return the
//! same bits; the wider tile converts each weight vector once for 6 activation rows.

use std::arch::x86_64::*;

use super::super::float::{
    elem_bytes, finish_elem, gemm_tiles, rows_tiles, with_elem, E_F16, E_F32, LANES,
};
use super::super::x86_avx2::hsum_ps;
use super::super::x86_avx2::PREFETCH_AHEAD;
use super::super::GemmOut;
use crate::gguf::GgmlType;

/// Weight rows and activation rows of the matrix tile: 24 accumulators, 4 weight vectors and
/// one activation vector in the 32 registers.
const R: usize = 4;
const T: usize = 6;
/// Weight rows per decode group (4 streams).
const DECODE_ROWS: usize = 4;

/// 16 weight elements of encoding `E` at `p`, as f32 (exact conversions).
///
/// # Safety
/// `p` must be readable for 16 elements (`16 · elem_bytes(E)` bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn load16<const E: u8>(p: *const u8) -> __m512 {
    // SAFETY: the caller's contract; unaligned loads.
    unsafe {
        match E {
            E_F32 => _mm512_loadu_ps(p.cast()),
            E_F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(p.cast()),
            ))),
        }
    }
}

/// The dot products of weight rows `w` (encoding `E`) with f32 activation rows `x` (all cut to
/// the same `n` elements), each the canonical chain of `float::LANES`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    let mut acc = [[_mm512_setzero_ps(); TT]; RR];
    for c in 0..chunks {
        let i = c * LANES;
        if TT == 1 {
            // Decode reads each row once, from DRAM: keep requests in flight ahead of it.
            for r in w {
                _mm_prefetch::<_MM_HINT_T0>(
                    r.as_ptr().wrapping_add(i * es + PREFETCH_AHEAD).cast(),
                );
            }
        }
        // SAFETY (both loads): i + 16 <= n, and every row holds n elements (asserted above).
        let wv: [__m512; RR] =
            std::array::from_fn(|r| unsafe { load16::<E>(w[r].as_ptr().add(i * es)) });
        for (t, xr) in x.iter().enumerate() {
            let xv = unsafe { _mm512_loadu_ps(xr.as_ptr().add(i * 4).cast()) };
            for r in 0..RR {
                acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
            }
        }
    }
    let tail = chunks * LANES < n;
    let mut dots = [[0f32; TT]; RR];
    for r in 0..RR {
        for t in 0..TT {
            dots[r][t] = if tail {
                let mut lanes = [0f32; LANES];
                // SAFETY: `lanes` holds 16 f32; no alignment needed.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r][t]) };
                let done = chunks * LANES;
                finish_elem::<E>(lanes, &w[r][done * es..n * es], &x[t][done * 4..n * 4])
            } else {
                reduce(acc[r][t])
            };
        }
    }
    dots
}

/// `float::reduce_lanes` of the 16 lanes of `v`: lanes l + (l + 8), then the halving sum of
/// AVX2's `hsum_ps` (+ 4, + 2, + 1), the same additions in the same order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn reduce(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
}

/// One float row against its f32 activations (both cut to exactly one row).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::quant) fn dot(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    with_elem!(ty, E => {
        let mut out = [0f32];
        rows_tiles::<{ elem_bytes(E) }, 1>(w.len(), w, act, &mut out, |w, x| tile::<E, 1, 1>(w, x));
        out[0]
    })
}

/// `out[r]` = [`dot`] of row `r` of `w` (rows of `rb` bytes) with `act`, 4 rows at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::quant) fn dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    with_elem!(ty, E => rows_tiles::<{ elem_bytes(E) }, DECODE_ROWS>(rb, w, act, out, |w, x| tile::<E, DECODE_ROWS, 1>(w, x)))
}

/// The matrix product of float weights in rows of `rb` bytes with `n_tok` f32 activation rows
/// of `arb` bytes (see `Kernels::gemm`) in 4×6 register tiles, if `ty` is a float type and there
/// are enough activation rows; false (nothing done) otherwise.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(in crate::quant) fn try_gemm(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) || n_tok < T / 2 {
        return false;
    }
    with_elem!(ty, E => {
        let n = rb / elem_bytes(E);
        gemm_tiles::<{ elem_bytes(E) }, R, T>(n, w, act, arb, n_tok, out, |w, x| tile::<E, R, T>(w, x))
    });
    true
}
