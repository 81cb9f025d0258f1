//! NEON kernels (aarch64): dot products of every weight type with its activation format, and the
//! activation quantizers (Q8_0, Q8_1, Q8_K). Two builds of the dot products come from the same
//! code: plain NEON (i8 products widened with `smull` and pairwise-added) and NEON+dotprod
//! (`sdot`, ARMv8.2 DotProd, where the CPU has it).
//!
//! Every function here is a safe `#[target_feature]` function called only from `dispatch` after
//! run-time detection; the `unsafe` blocks are the loads and stores (each through a helper that
//! checks the slice length first) and the `sdot`/`fcvtl` instructions, written as inline assembly
//! because their intrinsics are not stable Rust yet.
//!
//! Exactness, compared with the scalar reference in the sibling modules:
//! - every weight is unpacked to a signed i8 (its offset already subtracted) and multiplied with
//!   the i8 activations into i16/i32 without saturation, so integer parts are exact for every
//!   input byte;
//! - the quantizers produce the same bytes as the scalar ones (`frinta`/`fcvtas` round half away
//!   from zero like `f32::round`, saturating narrows like `as i8` of a float, truncating narrows
//!   like `as i8` of an integer, `fmaxnm` skips NaN like `f32::max`);
//! - F32/F16/BF16 dots return the same bits (the canonical fma lanes of `float::LANES`, see
//!   `float`);
//! - the quantized dots sum their exact per-block integers in f32 in another order than the
//!   reference, so they differ from it by a few ulps of the sum of the magnitudes of the block
//!   terms (the parity tests bound it).

use std::arch::aarch64::*;
use std::arch::asm;

mod float;
mod gemm;
pub(super) use gemm::{gemm, gemm_dotprod};

use super::k_quants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::q4::{BlockQ4_0, BlockQ4_1};
use super::q5::{BlockQ5_0, BlockQ5_1};
use super::q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::simd_common::{k4_scales_mins, q3_k_scale_words};
use super::{as_blocks, f16_to_f32, f32_to_f16, QK};
use crate::gguf::{GgmlType, QK_K};

/// Whether this CPU runs the plain NEON build (always, on aarch64 Linux).
pub(super) fn detected() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// Whether this CPU runs the NEON+dotprod build.
pub(super) fn detected_dotprod() -> bool {
    detected() && std::arch::is_aarch64_feature_detected!("dotprod")
}

// ---------------------------------------------------------------------------------------------
// Loads, stores, conversions.

/// The first 16 bytes of `s` as i8.
#[target_feature(enable = "neon")]
#[inline]
fn ld_i8(s: &[i8]) -> int8x16_t {
    assert!(s.len() >= 16);
    // SAFETY: `s` has at least 16 elements; `ld1` has no alignment requirement.
    unsafe { vld1q_s8(s.as_ptr()) }
}

/// The first 16 bytes of `s`.
#[target_feature(enable = "neon")]
#[inline]
fn ld_u8(s: &[u8]) -> uint8x16_t {
    assert!(s.len() >= 16);
    // SAFETY: `s` has at least 16 elements; `ld1` has no alignment requirement.
    unsafe { vld1q_u8(s.as_ptr()) }
}

/// The first 8 little-endian i16 of the bytes `s`.
#[target_feature(enable = "neon")]
#[inline]
fn ld_i16_bytes(s: &[u8]) -> int16x8_t {
    assert!(s.len() >= 16);
    // SAFETY: `s` has at least 16 bytes; `ld1` has no alignment requirement; aarch64 Linux is
    // little-endian, so the bytes are the i16s.
    unsafe { vld1q_s16(s.as_ptr().cast()) }
}

/// The first 4 f32 of `s`.
#[target_feature(enable = "neon")]
#[inline]
fn ld_f32(s: &[f32]) -> float32x4_t {
    assert!(s.len() >= 4);
    // SAFETY: `s` has at least 4 f32s; `ld1` has no alignment requirement.
    unsafe { vld1q_f32(s.as_ptr()) }
}

/// Stores `v` into the first 16 bytes of `d`.
#[target_feature(enable = "neon")]
#[inline]
fn st_i8(d: &mut [i8], v: int8x16_t) {
    assert!(d.len() >= 16);
    // SAFETY: `d` has at least 16 elements, borrowed exclusively; no alignment requirement.
    unsafe { vst1q_s8(d.as_mut_ptr(), v) }
}

// ---------------------------------------------------------------------------------------------
// Integer dot products of 16 i8 pairs: `acc + Σ a·b` spread over 4 i32 lanes (which lane holds
// what differs between the two builds; callers only use whole-vector sums).

/// `SDOT = false`: `smull` into i16 (|a·b| <= 2^14, exact) and pairwise widening adds.
/// `SDOT = true`: one `sdot` (4 products per lane, exact in i32).
#[target_feature(enable = "neon")]
#[inline]
fn dot16<const SDOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if SDOT {
        let mut acc = acc;
        // SAFETY: register-only arithmetic. The `SDOT = true` kernels are only reachable
        // through `vec_dot_dotprod`, which dispatch calls only on CPUs with DotProd.
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    } else {
        let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let p1 = vmull_high_s8(a, b);
        vaddq_s32(acc, vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
    }
}

/// Σ a·b over 32 i8 pairs (two vectors each) as 4 i32 lanes.
#[target_feature(enable = "neon")]
#[inline]
fn dot32<const SDOT: bool>(a0: int8x16_t, a1: int8x16_t, b: &[i8]) -> int32x4_t {
    let s = dot16::<SDOT>(vdupq_n_s32(0), a0, ld_i8(b));
    dot16::<SDOT>(s, a1, ld_i8(&b[16..]))
}

/// Low and high nibbles of 16 bytes (elements 0..16 and 16..32 of Q4_0/Q4_1/Q5_0/Q5_1).
#[target_feature(enable = "neon")]
#[inline]
fn nibbles(qs: &[u8]) -> (uint8x16_t, uint8x16_t) {
    let q = ld_u8(qs);
    (vandq_u8(q, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(q))
}

/// 0x10 in byte `i` where bit `i` of `qh` is set (the fifth bit of Q5_0/Q5_1), for elements
/// 0..16 and 16..32.
#[target_feature(enable = "neon")]
#[inline]
fn fifth_bits(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = ld_u8(&BITS);
    let v0 = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    let v1 = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
    let b16 = vdupq_n_u8(0x10);
    (
        vandq_u8(vtstq_u8(v0, bits), b16),
        vandq_u8(vtstq_u8(v1, bits), b16),
    )
}

/// Unsigned quants (< 128) as i8, minus `off`.
#[target_feature(enable = "neon")]
#[inline]
fn signed(q: uint8x16_t, off: u8) -> int8x16_t {
    vreinterpretq_s8_u8(vsubq_u8(q, vdupq_n_u8(off)))
}

// ---------------------------------------------------------------------------------------------
// Dot products.

/// One weight row against its activations (plain NEON build), both cut to exactly one row.
#[target_feature(enable = "neon")]
pub(super) fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    vec_dot_impl::<false>(ty, w, act)
}

/// One weight row against its activations (NEON+dotprod build).
#[target_feature(enable = "neon,dotprod")]
pub(super) fn vec_dot_dotprod(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    vec_dot_impl::<true>(ty, w, act)
}

/// `out[r]` = [`vec_dot`] of row `r` of `w` (rows of `rb` bytes back to back) with `act`.
#[target_feature(enable = "neon")]
pub(super) fn vec_dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return float::dot_rows(ty, rb, w, act, out);
    }
    for (o, r) in out.iter_mut().zip(w.chunks_exact(rb.max(1))) {
        *o = vec_dot_impl::<false>(ty, r, act);
    }
}

/// `out[r]` = [`vec_dot_dotprod`] of row `r` of `w` with `act`.
#[target_feature(enable = "neon,dotprod")]
pub(super) fn vec_dot_rows_dotprod(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return float::dot_rows(ty, rb, w, act, out);
    }
    for (o, r) in out.iter_mut().zip(w.chunks_exact(rb.max(1))) {
        *o = vec_dot_impl::<true>(ty, r, act);
    }
}

#[target_feature(enable = "neon")]
#[inline]
fn vec_dot_impl<const SDOT: bool>(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => float::dot(ty, w, act),
        Q4_0 => dot_q4_0::<SDOT>(as_blocks(w), as_blocks(act)),
        Q4_1 => dot_q4_1::<SDOT>(as_blocks(w), as_blocks(act)),
        Q5_0 => dot_q5_0::<SDOT>(as_blocks(w), as_blocks(act)),
        Q5_1 => dot_q5_1::<SDOT>(as_blocks(w), as_blocks(act)),
        Q8_0 => dot_q8_0::<SDOT>(as_blocks(w), as_blocks(act)),
        Q8_1 => dot_q8_1::<SDOT>(as_blocks(w), as_blocks(act)),
        Q8_K => dot_q8_k::<SDOT>(as_blocks(w), as_blocks(act)),
        Q2_K => dot_k16::<BlockQ2K, SDOT>(as_blocks(w), as_blocks(act)),
        Q3_K => dot_k16::<BlockQ3K, SDOT>(as_blocks(w), as_blocks(act)),
        Q4_K => dot_q4_k::<SDOT>(as_blocks(w), as_blocks(act)),
        Q5_K => dot_q5_k::<SDOT>(as_blocks(w), as_blocks(act)),
        Q6_K => dot_k16::<BlockQ6K, SDOT>(as_blocks(w), as_blocks(act)),
    }
}

/// Runs `f` (returning a block's exact integer sum and its f32 scale) over the blocks with two
/// f32 accumulators and returns their total.
#[target_feature(enable = "neon")]
#[inline]
fn sum_blocks<X, Y>(w: &[X], a: &[Y], mut f: impl FnMut(&X, &Y) -> (int32x4_t, f32)) -> f32 {
    let mut acc0 = vdupq_n_f32(0.0);
    let mut acc1 = vdupq_n_f32(0.0);
    let (wp, ap) = (w.chunks_exact(2), a.chunks_exact(2));
    let (wr, ar) = (wp.remainder(), ap.remainder());
    for (x, y) in wp.zip(ap) {
        let (s0, d0) = f(&x[0], &y[0]);
        let (s1, d1) = f(&x[1], &y[1]);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s0), d0);
        acc1 = vfmaq_n_f32(acc1, vcvtq_f32_s32(s1), d1);
    }
    if let (Some(x), Some(y)) = (wr.first(), ar.first()) {
        let (s, d) = f(x, y);
        acc0 = vfmaq_n_f32(acc0, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(vaddq_f32(acc0, acc1))
}

#[target_feature(enable = "neon")]
fn dot_q8_0<const SDOT: bool>(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    sum_blocks(w, a, |x, y| {
        let s = dot32::<SDOT>(ld_i8(&x.qs), ld_i8(&x.qs[16..]), &y.qs);
        (s, f16_to_f32(x.d) * f16_to_f32(y.d))
    })
}

#[target_feature(enable = "neon")]
fn dot_q8_1<const SDOT: bool>(w: &[BlockQ8_1], a: &[BlockQ8_1]) -> f32 {
    sum_blocks(w, a, |x, y| {
        let s = dot32::<SDOT>(ld_i8(&x.qs), ld_i8(&x.qs[16..]), &y.qs);
        (s, f16_to_f32(x.d) * f16_to_f32(y.d))
    })
}

#[target_feature(enable = "neon")]
fn dot_q8_k<const SDOT: bool>(w: &[BlockQ8K], a: &[BlockQ8K]) -> f32 {
    sum_blocks(w, a, |x, y| {
        let mut s = vdupq_n_s32(0);
        for j in 0..QK_K / 16 {
            s = dot16::<SDOT>(s, ld_i8(&x.qs[16 * j..]), ld_i8(&y.qs[16 * j..]));
        }
        (s, x.d() * y.d())
    })
}

#[target_feature(enable = "neon")]
fn dot_q4_0<const SDOT: bool>(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    sum_blocks(w, a, |x, y| {
        let (lo, hi) = nibbles(&x.qs);
        let s = dot32::<SDOT>(signed(lo, 8), signed(hi, 8), &y.qs);
        (s, f16_to_f32(x.d) * f16_to_f32(y.d))
    })
}

#[target_feature(enable = "neon")]
fn dot_q5_0<const SDOT: bool>(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    sum_blocks(w, a, |x, y| {
        let (lo, hi) = nibbles(&x.qs);
        let (h0, h1) = fifth_bits(x.qh);
        let s = dot32::<SDOT>(
            signed(vorrq_u8(lo, h0), 16),
            signed(vorrq_u8(hi, h1), 16),
            &y.qs,
        );
        (s, f16_to_f32(x.d) * f16_to_f32(y.d))
    })
}

/// Q4_1/Q5_1 against Q8_1: `d·dy·Σ q·qy` vectorized, plus `m·s` summed on the side.
#[target_feature(enable = "neon")]
#[inline]
fn dot_x_1<X, const SDOT: bool>(
    w: &[X],
    a: &[BlockQ8_1],
    parts: impl Fn(&X) -> ([u8; 2], [u8; 2], int8x16_t, int8x16_t),
) -> f32 {
    let mut summs = 0f32;
    let sum = sum_blocks(w, a, |x, y| {
        let (d, m, q0, q1) = parts(x);
        summs += f16_to_f32(m) * f16_to_f32(y.s);
        (
            dot32::<SDOT>(q0, q1, &y.qs),
            f16_to_f32(d) * f16_to_f32(y.d),
        )
    });
    sum + summs
}

#[target_feature(enable = "neon")]
fn dot_q4_1<const SDOT: bool>(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    dot_x_1::<_, SDOT>(w, a, |x| {
        let (lo, hi) = nibbles(&x.qs);
        (x.d, x.m, signed(lo, 0), signed(hi, 0))
    })
}

#[target_feature(enable = "neon")]
fn dot_q5_1<const SDOT: bool>(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    dot_x_1::<_, SDOT>(w, a, |x| {
        let (lo, hi) = nibbles(&x.qs);
        let (h0, h1) = fifth_bits(x.qh);
        (
            x.d,
            x.m,
            signed(vorrq_u8(lo, h0), 0),
            signed(vorrq_u8(hi, h1), 0),
        )
    })
}

/// Σ_j mins[j]·(sum of the 32 activations of sub-block j), from the Q8_K `bsums`.
#[target_feature(enable = "neon")]
#[inline]
fn mins_dot_k4(mins: u64, y: &BlockQ8K) -> i32 {
    let b = y.bsums.as_flattened();
    // |bsum| <= 16·128, so the pairwise i16 sums cannot overflow.
    let s = vpaddq_s16(ld_i16_bytes(b), ld_i16_bytes(&b[16..]));
    let m = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(mins)));
    let p = vmlal_high_s16(vmull_s16(vget_low_s16(m), vget_low_s16(s)), m, s);
    vaddvq_s32(p)
}

/// Q4_K and Q5_K: `d·Σ_j sc_j·Σ q·y − dmin·Σ_j mn_j·Σ y`, with `quants(x, c)` the quants of
/// elements `64c..64c + 64` as four i8 vectors of 16, each 0..=31.
#[target_feature(enable = "neon")]
#[inline]
fn dot_q45_k<X, const SDOT: bool>(
    w: &[X],
    a: &[BlockQ8K],
    header: impl Fn(&X) -> ([u8; 2], [u8; 2], &[u8; 12]),
    quants: impl Fn(&X, usize) -> [int8x16_t; 4],
) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let (d, dmin, packed) = header(x);
        let (sc, mn) = k4_scales_mins(packed);
        let sumi_m = mins_dot_k4(mn, y);
        let mut sumi = 0i32;
        for c in 0..QK_K / 64 {
            let q = quants(x, c);
            let y0 = &y.qs[64 * c..];
            let p0 = dot32::<SDOT>(q[0], q[1], y0);
            let p1 = dot32::<SDOT>(q[2], q[3], &y0[32..]);
            // Exact: |Σ q·y| <= 32·31·128 per sub-block, times a 6-bit scale.
            sumi += vaddvq_s32(p0) * ((sc >> (16 * c)) & 0xFF) as i32;
            sumi += vaddvq_s32(p1) * ((sc >> (16 * c + 8)) & 0xFF) as i32;
        }
        let yd = y.d();
        sumf += yd * f16_to_f32(d) * sumi as f32 - yd * f16_to_f32(dmin) * sumi_m as f32;
    }
    sumf
}

#[target_feature(enable = "neon")]
fn dot_q4_k<const SDOT: bool>(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    dot_q45_k::<_, SDOT>(w, a, |x| (x.d, x.dmin, &x.scales), |x, c| q4k_quants(x, c))
}

/// The quants of Q4_K sub-blocks `2c` (low nibbles of `qs[32c..32c + 32]`) and `2c + 1` (high
/// nibbles), as two pairs of 16.
#[target_feature(enable = "neon")]
#[inline]
fn q4k_quants(x: &BlockQ4K, c: usize) -> [int8x16_t; 4] {
    let (a0, a1) = (ld_u8(&x.qs[32 * c..]), ld_u8(&x.qs[32 * c + 16..]));
    let m4 = vdupq_n_u8(0x0F);
    [
        signed(vandq_u8(a0, m4), 0),
        signed(vandq_u8(a1, m4), 0),
        signed(vshrq_n_u8::<4>(a0), 0),
        signed(vshrq_n_u8::<4>(a1), 0),
    ]
}

#[target_feature(enable = "neon")]
fn dot_q5_k<const SDOT: bool>(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    dot_q45_k::<_, SDOT>(w, a, |x| (x.d, x.dmin, &x.scales), |x, c| q5k_quants(x, c))
}

/// The quants of Q5_K sub-blocks `2c` and `2c + 1` (0..=31: Q4_K's nibbles with the fifth bit
/// from `qh`), as two pairs of 16.
#[target_feature(enable = "neon")]
#[inline]
fn q5k_quants(x: &BlockQ5K, c: usize) -> [int8x16_t; 4] {
    let (a0, a1) = (ld_u8(&x.qs[32 * c..]), ld_u8(&x.qs[32 * c + 16..]));
    let (h0, h1) = (ld_u8(&x.qh), ld_u8(&x.qh[16..]));
    let m4 = vdupq_n_u8(0x0F);
    let b16 = vdupq_n_u8(0x10);
    // Fifth bit of element 64c + l in bit 2c of qh[l], of 64c + 32 + l in bit 2c + 1.
    let (blo, bhi) = (vdupq_n_u8(1 << (2 * c)), vdupq_n_u8(2 << (2 * c)));
    let hb = |h: uint8x16_t, b: uint8x16_t| vandq_u8(vtstq_u8(h, b), b16);
    [
        signed(vorrq_u8(vandq_u8(a0, m4), hb(h0, blo)), 0),
        signed(vorrq_u8(vandq_u8(a1, m4), hb(h1, blo)), 0),
        signed(vorrq_u8(vshrq_n_u8::<4>(a0), hb(h0, bhi)), 0),
        signed(vorrq_u8(vshrq_n_u8::<4>(a1), hb(h1, bhi)), 0),
    ]
}

/// The signed quants (q − 32) of Q6_K elements `128h + 32k + 16·half + (0..16)`, k = 0..4.
#[target_feature(enable = "neon")]
#[inline]
fn q6k_quants(x: &BlockQ6K, h: usize, half: usize) -> [int8x16_t; 4] {
    let (m4, m2) = (vdupq_n_u8(0x0F), vdupq_n_u8(0x03));
    let o = 16 * half;
    let la = ld_u8(&x.ql[64 * h + o..]);
    let lb = ld_u8(&x.ql[64 * h + 32 + o..]);
    let qh = ld_u8(&x.qh[32 * h + o..]);
    let hi = |v: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(v, m2));
    [
        signed(vorrq_u8(vandq_u8(la, m4), hi(qh)), 32),
        signed(vorrq_u8(vandq_u8(lb, m4), hi(vshrq_n_u8::<2>(qh))), 32),
        signed(vorrq_u8(vshrq_n_u8::<4>(la), hi(vshrq_n_u8::<4>(qh))), 32),
        signed(vorrq_u8(vshrq_n_u8::<4>(lb), hi(vshrq_n_u8::<6>(qh))), 32),
    ]
}

/// The signed quants (−4..=3) of Q3_K elements `128h + 32k + 16·half + (0..16)`, k = 0..4.
#[target_feature(enable = "neon")]
#[inline]
fn q3k_quants(x: &BlockQ3K, h: usize, half: usize) -> [int8x16_t; 4] {
    let (m2, four) = (vdupq_n_u8(0x03), vdupq_n_u8(4));
    let o = 16 * half;
    let qs = ld_u8(&x.qs[32 * h + o..]);
    let hm = ld_u8(&x.hmask[o..]);
    let low = [
        vandq_u8(qs, m2),
        vandq_u8(vshrq_n_u8::<2>(qs), m2),
        vandq_u8(vshrq_n_u8::<4>(qs), m2),
        vshrq_n_u8::<6>(qs),
    ];
    std::array::from_fn(|k| {
        // Element 32(4h + k) + l is `low − 4` unless bit 4h + k of hmask[l] is set.
        let set = vtstq_u8(hm, vdupq_n_u8(1 << (4 * h + k)));
        vreinterpretq_s8_u8(vsubq_u8(low[k], vbicq_u8(four, set)))
    })
}

/// The quants (0..=3) of Q2_K elements `128h + 32k + 16·half + (0..16)`, k = 0..4.
#[target_feature(enable = "neon")]
#[inline]
fn q2k_quants(x: &BlockQ2K, h: usize, half: usize) -> [int8x16_t; 4] {
    let m2 = vdupq_n_u8(0x03);
    let qs = ld_u8(&x.qs[32 * h + 16 * half..]);
    [
        signed(vandq_u8(qs, m2), 0),
        signed(vandq_u8(vshrq_n_u8::<2>(qs), m2), 0),
        signed(vandq_u8(vshrq_n_u8::<4>(qs), m2), 0),
        signed(vshrq_n_u8::<6>(qs), 0),
    ]
}

/// Q2_K's minimums: Σ_j (scale_j >> 4)·bsum_j over the 16 sub-blocks (exact).
#[target_feature(enable = "neon")]
#[inline]
fn q2k_mins_dot(x: &BlockQ2K, y: &BlockQ8K) -> i32 {
    let mins = vshrq_n_u8::<4>(ld_u8(&x.scales));
    let b = y.bsums.as_flattened();
    let (b0, b1) = (ld_i16_bytes(b), ld_i16_bytes(&b[16..]));
    let m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
    let m1 = vreinterpretq_s16_u16(vmovl_high_u8(mins));
    let pm = vmlal_high_s16(vmull_s16(vget_low_s16(m0), vget_low_s16(b0)), m0, b0);
    let pm = vmlal_high_s16(vmlal_s16(pm, vget_low_s16(m1), vget_low_s16(b1)), m1, b1);
    vaddvq_s32(pm)
}

/// A K-quant block with 16-element sub-blocks (Q2_K, Q3_K, Q6_K) as the NEON kernels read it.
/// The row kernel [`dot_k16`] and the matrix tile (`gemm::tile_k16`) both go through it, so
/// they unpack a block the same way and share its float expression, which keeps their bits
/// equal.
///
/// # Safety
///
/// `quants` and `term` need NEON (the implementations are `#[target_feature]` functions, which
/// a trait can only declare `unsafe`): call them only where the CPU has it.
pub(super) trait K16 {
    /// The 16 sub-block scales (exact in i32).
    fn scales(&self) -> [i32; 16];
    /// The signed quants of elements `128h + 32k + 16·half + (0..16)`, k = 0..4.
    unsafe fn quants(&self, h: usize, half: usize) -> [int8x16_t; 4];
    /// The block's term of the dot product, from its exact `Σ_j sc_j·Σ q·y` (`sumi`).
    unsafe fn term(&self, y: &BlockQ8K, sumi: i32) -> f32;
}

impl K16 for BlockQ6K {
    #[inline(always)]
    fn scales(&self) -> [i32; 16] {
        self.scales.map(|s| s as i32)
    }
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn quants(&self, h: usize, half: usize) -> [int8x16_t; 4] {
        q6k_quants(self, h, half)
    }
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn term(&self, y: &BlockQ8K, sumi: i32) -> f32 {
        f16_to_f32(self.d) * y.d() * sumi as f32
    }
}

impl K16 for BlockQ3K {
    #[inline(always)]
    fn scales(&self) -> [i32; 16] {
        let words = q3_k_scale_words(&self.scales);
        std::array::from_fn(|j| ((words[j / 4] >> (8 * (j % 4))) & 0xFF) as i32 - 32)
    }
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn quants(&self, h: usize, half: usize) -> [int8x16_t; 4] {
        q3k_quants(self, h, half)
    }
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn term(&self, y: &BlockQ8K, sumi: i32) -> f32 {
        f16_to_f32(self.d) * y.d() * sumi as f32
    }
}

impl K16 for BlockQ2K {
    #[inline(always)]
    fn scales(&self) -> [i32; 16] {
        self.scales.map(|s| (s & 0xF) as i32)
    }
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn quants(&self, h: usize, half: usize) -> [int8x16_t; 4] {
        q2k_quants(self, h, half)
    }
    /// The minimums' exact sum enters here, after the scaled quants.
    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn term(&self, y: &BlockQ8K, sumi: i32) -> f32 {
        let summs = q2k_mins_dot(self, y);
        let dall = y.d() * f16_to_f32(self.d);
        let dmin = y.d() * f16_to_f32(self.dmin);
        dall * sumi as f32 - dmin * summs as f32
    }
}

/// The dot product of Q2_K, Q3_K or Q6_K rows with Q8_K activations: per block the exact
/// `Σ_j sc_j·Σ q·y`, then the block's [`K16::term`].
#[target_feature(enable = "neon")]
fn dot_k16<X: K16, const SDOT: bool>(w: &[X], a: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let sc = x.scales();
        let mut sumi = 0i32;
        for h in 0..2 {
            for half in 0..2 {
                // SAFETY: this function runs with NEON.
                let qs = unsafe { x.quants(h, half) };
                for (k, q) in qs.into_iter().enumerate() {
                    let e = 128 * h + 32 * k + 16 * half;
                    let p = dot16::<SDOT>(vdupq_n_s32(0), q, ld_i8(&y.qs[e..]));
                    sumi += vaddvq_s32(p) * sc[e / 16];
                }
            }
        }
        // SAFETY: this function runs with NEON.
        sumf += unsafe { x.term(y, sumi) };
    }
    sumf
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers, byte for byte the scalar ones in `q8.rs`.

/// Quantizes one 32-element block to i8 with `amax / 127` (Q8_0/Q8_1) into `qs`; returns the f32
/// scale and the sum of the quants.
#[target_feature(enable = "neon")]
#[inline]
fn quantize_block_32(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let v = [
        ld_f32(x),
        ld_f32(&x[4..]),
        ld_f32(&x[8..]),
        ld_f32(&x[12..]),
    ];
    let u = [
        ld_f32(&x[16..]),
        ld_f32(&x[20..]),
        ld_f32(&x[24..]),
        ld_f32(&x[28..]),
    ];
    // fmaxnm returns the number when the other operand is a (quiet) NaN, like `f32::max`.
    let mut m = vdupq_n_f32(0.0);
    for v in v.iter().chain(&u) {
        m = vmaxnmq_f32(m, vabsq_f32(*v));
    }
    let d = vmaxnmvq_f32(m) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    // fcvtas: round half away from zero (`f32::round`), NaN → 0, saturating; then saturating
    // narrows to i8: together Rust's `x.round() as i8`.
    let q = |v: [float32x4_t; 4]| {
        let i = v.map(|v| vcvtaq_s32_f32(vmulq_n_f32(v, id)));
        let a = vqmovn_high_s32(vqmovn_s32(i[0]), i[1]);
        let b = vqmovn_high_s32(vqmovn_s32(i[2]), i[3]);
        vqmovn_high_s16(vqmovn_s16(a), b)
    };
    let (q0, q1) = (q(v), q(u));
    st_i8(&mut qs[..], q0);
    st_i8(&mut qs[16..], q1);
    let sum = vaddlvq_s8(q0) as i32 + vaddlvq_s8(q1) as i32;
    (d, sum)
}

#[target_feature(enable = "neon")]
pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, _) = quantize_block_32(x, &mut b.qs);
        b.d = f32_to_f16(d);
    }
}

#[target_feature(enable = "neon")]
pub(super) fn quantize_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, sum) = quantize_block_32(x, &mut b.qs);
        b.d = f32_to_f16(d);
        b.s = f32_to_f16(sum as f32 * d);
    }
}

/// ggml's `quantize_row_q8_K_ref`, as `q8::quantize_q8_k`: the signed value of largest magnitude
/// (the first one, NaN skipped) maps to −127, `nearest_int` rounding, the i8 cast truncating.
#[target_feature(enable = "neon")]
pub(super) fn quantize_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let mut m = vdupq_n_f32(0.0);
        for c in x.chunks_exact(4) {
            m = vmaxnmq_f32(m, vabsq_f32(ld_f32(c)));
        }
        let amax = vmaxnmvq_f32(m);
        if amax == 0.0 {
            b.d = 0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        // The scalar loop keeps the first element whose magnitude is the maximum.
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let magic = vdupq_n_f32(12_582_912.0);
        let mant = vdupq_n_u32(0x007F_FFFF);
        let half = vdupq_n_s32(0x0040_0000);
        let lim = vdupq_n_s32(127);
        for (j, xc) in x.chunks_exact(16).enumerate() {
            let mut i = [vdupq_n_s32(0); 4];
            for (i, xv) in i.iter_mut().zip(xc.chunks_exact(4)) {
                // nearest_int(iscale·v): the product and the sum rounded separately (no FMA).
                let val = vaddq_f32(vmulq_n_f32(ld_f32(xv), iscale), magic);
                let n = vreinterpretq_s32_u32(vandq_u32(vreinterpretq_u32_f32(val), mant));
                *i = vminq_s32(vsubq_s32(n, half), lim);
            }
            // `as i8` of an i32 keeps the low byte: truncating narrows.
            let a = vmovn_high_s32(vmovn_s32(i[0]), i[1]);
            let c = vmovn_high_s32(vmovn_s32(i[2]), i[3]);
            let q = vmovn_high_s16(vmovn_s16(a), c);
            st_i8(&mut b.qs[16 * j..], q);
            b.bsums[j] = vaddlvq_s8(q).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
