//! F32, F16 and BF16 weights against f32 activations on NEON: the canonical chain of
//! `float::LANES` (16) f32 fma lanes in four 4-lane registers per (weight row, activation row).
//! The single-row dot, the 4-row decode kernel and the 2×3 matrix tile run the same chains as
//! the scalar and x86 builds (`float::finish_elem` adds the tail and reduces), so they return
//! the same bits (`fmla` is a fused multiply-add, like `f32::mul_add`).

use std::arch::aarch64::*;
use std::arch::asm;

use super::super::float::{
    elem_bytes, finish_elem, gemm_tiles, rows_tiles, with_elem, E_F16, E_F32, LANES,
};
use super::super::GemmOut;
use crate::gguf::GgmlType;

/// Weight rows and activation rows of the matrix tile: 24 accumulators, 2 weight vectors and one
/// activation vector in the 32 registers.
const R: usize = 2;
const T: usize = 3;
/// Weight rows per decode group.
const DECODE_ROWS: usize = 4;
/// How far ahead of the chunk being computed decode prefetches each row, in bytes.
const PREFETCH_AHEAD: usize = 2048;

/// 4 weight elements of encoding `E` at `p`, as f32 (exact conversions).
///
/// # Safety
/// `p` must be readable for 4 elements (`4 · elem_bytes(E)` bytes).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load4<const E: u8>(p: *const u8) -> float32x4_t {
    // SAFETY (all three): the caller's contract; no alignment requirement.
    unsafe {
        match E {
            E_F32 => vld1q_f32(p.cast()),
            E_F16 => {
                let h = vld1_u16(p.cast());
                let f: float32x4_t;
                // Register-only conversion (ARMv8.0 Advanced SIMD; the intrinsic is unstable).
                asm!(
                    "fcvtl {f:v}.4s, {h:v}.4h",
                    h = in(vreg) h,
                    f = out(vreg) f,
                    options(pure, nomem, nostack, preserves_flags)
                );
                f
            }
            _ => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast()))),
        }
    }
}

/// Requests the cache line `ahead` bytes past `p` (a hint: it never faults).
#[target_feature(enable = "neon")]
#[inline]
fn prefetch(p: *const u8, ahead: usize) {
    let p = p.wrapping_add(ahead);
    // SAFETY: `prfm` is a hint; it never faults and changes nothing, whatever the address.
    unsafe {
        asm!("prfm pldl1keep, [{p}]", p = in(reg) p, options(nostack, preserves_flags, readonly))
    };
}

/// The dot products of weight rows `w` (encoding `E`) with f32 activation rows `x` (all cut to
/// the same `n` elements), each the canonical chain of `float::LANES`.
#[target_feature(enable = "neon")]
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
    let mut acc = [[[vdupq_n_f32(0.0); 4]; TT]; RR];
    for c in 0..chunks {
        if TT == 1 {
            for r in w {
                prefetch(r.as_ptr().wrapping_add(c * LANES * es), PREFETCH_AHEAD);
            }
        }
        for q in 0..4 {
            let i = c * LANES + 4 * q;
            // SAFETY (both loads): i + 4 <= n, and every row holds n elements (asserted above).
            let wv: [float32x4_t; RR] =
                std::array::from_fn(|r| unsafe { load4::<E>(w[r].as_ptr().add(i * es)) });
            for (t, xr) in x.iter().enumerate() {
                let xv = unsafe { vld1q_f32(xr.as_ptr().add(i * 4).cast()) };
                for r in 0..RR {
                    acc[r][t][q] = vfmaq_f32(acc[r][t][q], wv[r], xv);
                }
            }
        }
    }
    let tail = chunks * LANES < n;
    let mut dots = [[0f32; TT]; RR];
    for r in 0..RR {
        for t in 0..TT {
            let q = acc[r][t];
            dots[r][t] = if tail {
                let mut lanes = [0f32; LANES];
                for (k, v) in q.iter().enumerate() {
                    // SAFETY: `lanes` holds 16 f32, 4 written at 4k < 16; no alignment needed.
                    unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * k), *v) };
                }
                let done = chunks * LANES;
                finish_elem::<E>(lanes, &w[r][done * es..n * es], &x[t][done * 4..n * 4])
            } else {
                // `float::reduce_lanes`: lanes l + (l + 8), then + 4, + 2, + 1.
                let s4 = vaddq_f32(vaddq_f32(q[0], q[2]), vaddq_f32(q[1], q[3]));
                vpadds_f32(vadd_f32(vget_low_f32(s4), vget_high_f32(s4)))
            };
        }
    }
    dots
}

/// One float row against its f32 activations (both cut to exactly one row).
#[target_feature(enable = "neon")]
pub(in crate::quant) fn dot(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    with_elem!(ty, E => {
        let mut out = [0f32];
        rows_tiles::<{ elem_bytes(E) }, 1>(w.len(), w, act, &mut out, |w, x| tile::<E, 1, 1>(w, x));
        out[0]
    })
}

/// `out[r]` = [`dot`] of row `r` of `w` (rows of `rb` bytes) with `act`, 4 rows at a time.
#[target_feature(enable = "neon")]
pub(in crate::quant) fn dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    with_elem!(ty, E => rows_tiles::<{ elem_bytes(E) }, DECODE_ROWS>(rb, w, act, out, |w, x| tile::<E, DECODE_ROWS, 1>(w, x)))
}

/// The matrix product of float weights in rows of `rb` bytes with `n_tok` f32 activation rows
/// of `arb` bytes (see `Kernels::gemm`) in 2×3 register tiles, if `ty` is a float type and there
/// are enough activation rows; false (nothing done) otherwise.
#[target_feature(enable = "neon")]
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
