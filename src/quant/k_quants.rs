//! K-quants: 256-element super-blocks split into sub-blocks of 16 or 32 elements, each with its own
//! small integer scale (and minimum) that is itself scaled by the super-block's f16 `d` (`dmin`).
//! This file holds the layouts, dequantization and dot products with Q8_K activations; the
//! reference quantizers are in `k_quantize.rs`.
//!
//! Every format stores its quants in the same interleaved order: for each 128-element half
//! (Q4_K/Q5_K: each 64-element quarter), consecutive 32-element runs share the same 32 bytes at
//! increasing bit shifts. The `unpack_*` functions undo that, giving the quants in element order,
//! so the dequantizers and dots below are plain loops over sub-blocks.

use super::q8::BlockQ8K;
use super::{f16_to_f32, impl_block};
use crate::gguf::{GgmlType, QK_K};

/// Bytes of packed 6-bit scales and mins in Q4_K/Q5_K (ggml's K_SCALE_SIZE).
pub(crate) const K_SCALE_SIZE: usize = 12;

/// `x = d·(scale & 15)·q − dmin·(scale >> 4)`, 2-bit q, 16 sub-blocks of 16.
#[repr(C)]
pub(crate) struct BlockQ2K {
    /// Per sub-block: low nibble the scale, high nibble the min.
    pub scales: [u8; QK_K / 16],
    /// Element `128h + 32j + l` is `(qs[32h + l] >> 2j) & 3`.
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
impl_block!(BlockQ2K, GgmlType::Q2_K);

/// `x = d·(scale − 32)·(q − 4)`, 3-bit q (2 low bits in `qs`, the high bit in `hmask`), 16
/// sub-blocks of 16 with 6-bit scales.
#[repr(C)]
pub(crate) struct BlockQ3K {
    /// The high bit of element `32k + l` is bit `k` of `hmask[l]`; note it is *set* for the
    /// upper half of the range (the stored value is `q − 4` when it is clear).
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits, laid out like Q2_K.
    pub qs: [u8; QK_K / 4],
    /// 16 6-bit scales: low nibbles in bytes 0..8 (scales 0..8 in the low halves, 8..16 in the
    /// high halves), the top 2 bits of scale `j` in byte `8 + j % 4` at bit `2·(j / 4)`.
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
impl_block!(BlockQ3K, GgmlType::Q3_K);

/// `x = d·scale·q − dmin·min`, 4-bit q, 8 sub-blocks of 32 with 6-bit scales and mins.
#[repr(C)]
pub(crate) struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    /// See [`scale_min_k4`].
    pub scales: [u8; K_SCALE_SIZE],
    /// Element `64c + l` is `qs[32c + l] & 15`, element `64c + 32 + l` is `qs[32c + l] >> 4`.
    pub qs: [u8; QK_K / 2],
}
impl_block!(BlockQ4K, GgmlType::Q4_K);

/// Q4_K plus a fifth bit: element `32k + l` has it in bit `k` of `qh[l]`.
#[repr(C)]
pub(crate) struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; K_SCALE_SIZE],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
impl_block!(BlockQ5K, GgmlType::Q5_K);

/// `x = d·scale·(q − 32)`, 6-bit q, 16 sub-blocks of 16 with signed 8-bit scales.
#[repr(C)]
pub(crate) struct BlockQ6K {
    /// Low 4 bits. In each 128-element half `h`: element `32k + l` (k = 0..4) is in
    /// `ql[64h + l + 32·(k & 1)]`, low nibble for k < 2, high nibble for k >= 2.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits: element `128h + 32k + l` in `qh[32h + l]` at bit `2k`.
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: [u8; 2],
}
impl_block!(BlockQ6K, GgmlType::Q6_K);

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K (ggml's
/// `get_scale_min_k4`): for j < 4 the low 6 bits of bytes `j` and `j + 4`; for j >= 4 the nibbles
/// of byte `j + 4` with their top 2 bits borrowed from the spare top bits of bytes `j − 4` and `j`.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All 8 (scale, min) pairs of a Q4_K/Q5_K block.
#[inline(always)]
fn scales_mins_k4(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, q);
    }
    (sc, mn)
}

/// The 16 scales of a Q3_K block, already minus 32 (−32..=31).
#[inline(always)]
pub(crate) fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// 2-bit quants of Q2_K/Q3_K in element order, 0..=3.
#[inline(always)]
fn unpack_2bit(qs: &[u8; QK_K / 4]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (qh, out) in qs.chunks_exact(32).zip(q.chunks_exact_mut(128)) {
        for k in 0..4 {
            for l in 0..32 {
                out[32 * k + l] = (qh[l] >> (2 * k)) & 3;
            }
        }
    }
    q
}

/// Q3_K quants in element order, −4..=3.
#[inline(always)]
fn unpack_q3_k(b: &BlockQ3K) -> [i8; QK_K] {
    let low = unpack_2bit(&b.qs);
    let mut q = [0i8; QK_K];
    for k in 0..QK_K / 32 {
        for l in 0..32 {
            let hi = if b.hmask[l] & (1 << k) != 0 { 0 } else { 4 };
            q[32 * k + l] = low[32 * k + l] as i8 - hi;
        }
    }
    q
}

/// Q4_K quants (and the low 4 bits of Q5_K's) in element order, 0..=15.
#[inline(always)]
fn unpack_4bit(qs: &[u8; QK_K / 2]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for (src, out) in qs.chunks_exact(32).zip(q.chunks_exact_mut(64)) {
        for l in 0..32 {
            out[l] = src[l] & 0xF;
            out[l + 32] = src[l] >> 4;
        }
    }
    q
}

/// Q5_K quants in element order, 0..=31.
#[inline(always)]
fn unpack_q5_k(b: &BlockQ5K) -> [u8; QK_K] {
    let mut q = unpack_4bit(&b.qs);
    for k in 0..QK_K / 32 {
        for l in 0..32 {
            q[32 * k + l] |= ((b.qh[l] >> k) & 1) << 4;
        }
    }
    q
}

/// Q6_K quants in element order, −32..=31.
#[inline(always)]
fn unpack_q6_k(b: &BlockQ6K) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for h in 0..2 {
        let ql = &b.ql[64 * h..64 * h + 64];
        let qh = &b.qh[32 * h..32 * h + 32];
        let out = &mut q[128 * h..128 * h + 128];
        for l in 0..32 {
            out[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

// ---------------------------------------------------------------------------------------------
// Dequantization. The float expressions keep ggml's operand order so the results are identical.

pub(crate) fn dequantize_q2_k(src: &[BlockQ2K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let min = f16_to_f32(b.dmin);
        let q = unpack_2bit(&b.qs);
        for (j, (y, q)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d * (b.scales[j] & 0xF) as f32;
            let ml = min * (b.scales[j] >> 4) as f32;
            for (y, &q) in y.iter_mut().zip(q) {
                *y = dl * q as f32 - ml;
            }
        }
    }
}

pub(crate) fn dequantize_q3_k(src: &[BlockQ3K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = f16_to_f32(b.d);
        let scales = q3_k_scales(&b.scales);
        let q = unpack_q3_k(b);
        for (j, (y, q)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let dl = d_all * scales[j] as f32;
            for (y, &q) in y.iter_mut().zip(q) {
                *y = dl * q as f32;
            }
        }
    }
}

pub(crate) fn dequantize_q4_k(src: &[BlockQ4K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let min = f16_to_f32(b.dmin);
        let (sc, mn) = scales_mins_k4(&b.scales);
        let q = unpack_4bit(&b.qs);
        for (j, (y, q)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
            let d1 = d * sc[j] as f32;
            let m1 = min * mn[j] as f32;
            for (y, &q) in y.iter_mut().zip(q) {
                *y = d1 * q as f32 - m1;
            }
        }
    }
}

pub(crate) fn dequantize_q5_k(src: &[BlockQ5K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let min = f16_to_f32(b.dmin);
        let (sc, mn) = scales_mins_k4(&b.scales);
        let q = unpack_q5_k(b);
        for (j, (y, q)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
            let d1 = d * sc[j] as f32;
            let m1 = min * mn[j] as f32;
            for (y, &q) in y.iter_mut().zip(q) {
                *y = d1 * q as f32 - m1;
            }
        }
    }
}

pub(crate) fn dequantize_q6_k(src: &[BlockQ6K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_to_f32(b.d);
        let q = unpack_q6_k(b);
        for (j, (y, q)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
            let ds = d * b.scales[j] as f32;
            for (y, &q) in y.iter_mut().zip(q) {
                *y = ds * q as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products with Q8_K activations, shaped like ggml's scalar reference: the integer products
// of each super-block go into 8 i32 lanes (lane = element index mod 8), each lane is scaled into
// its own f32 running sum, and the 8 sums are added at the very end. The minimums come in through
// the activations' 16-element sums (`bsums`), so they cost 16 multiplies per super-block.

/// `lanes[l] += Σ_{i ≡ l mod 8} scale(i / SUB)·a[i]·q8[i]` over one super-block.
#[inline(always)]
fn scaled_lanes<const SUB: usize>(
    a: &[i8; QK_K],
    q8: &[i8; QK_K],
    scale: impl Fn(usize) -> i32,
) -> [i32; 8] {
    let mut aux32 = [0i32; 8];
    for (j, (a, q8)) in a.chunks_exact(SUB).zip(q8.chunks_exact(SUB)).enumerate() {
        let s = scale(j);
        for (a, q8) in a.chunks_exact(8).zip(q8.chunks_exact(8)) {
            for l in 0..8 {
                // |a·q8| <= 32·128 fits the i16 ggml uses; the sum of 256 scaled terms fits i32.
                aux32[l] += s * (a[l] as i32 * q8[l] as i32);
            }
        }
    }
    aux32
}

#[inline(always)]
pub(crate) fn vec_dot_q2_k(w: &[BlockQ2K], act: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(act) {
        let mut summs = 0i32;
        for j in 0..16 {
            summs += y.bsum(j) * (x.scales[j] >> 4) as i32;
        }
        let dall = y.d() * f16_to_f32(x.d);
        let dmin = y.d() * f16_to_f32(x.dmin);
        let q = unpack_2bit(&x.qs);
        let mut isum = 0i32;
        for (j, (q, q8)) in q.chunks_exact(16).zip(y.qs.chunks_exact(16)).enumerate() {
            let mut isuml = 0i32;
            for l in 0..16 {
                isuml += q8[l] as i32 * q[l] as i32;
            }
            isum += (x.scales[j] & 0xF) as i32 * isuml;
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

#[inline(always)]
pub(crate) fn vec_dot_q3_k(w: &[BlockQ3K], act: &[BlockQ8K]) -> f32 {
    let mut sums = [0f32; 8];
    for (x, y) in w.iter().zip(act) {
        let q = unpack_q3_k(x);
        let scales = q3_k_scales(&x.scales);
        let aux32 = scaled_lanes::<16>(&q, &y.qs, |j| scales[j] as i32);
        let d = f16_to_f32(x.d) * y.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q4_K and Q5_K differ only in how their quants unpack.
#[inline(always)]
fn vec_dot_q45_k<B>(
    w: &[B],
    act: &[BlockQ8K],
    parts: impl Fn(&B) -> (f32, f32, [u8; K_SCALE_SIZE], [u8; QK_K]),
) -> f32 {
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(act) {
        let (d, dmin, packed, q) = parts(x);
        let (sc, mn) = scales_mins_k4(&packed);
        let mut sumi = 0i32;
        for j in 0..QK_K / 16 {
            sumi += y.bsum(j) * mn[j / 2] as i32;
        }
        // 0..=31 fits i8.
        let a: [i8; QK_K] = q.map(|v| v as i8);
        let aux32 = scaled_lanes::<32>(&a, &y.qs, |j| sc[j] as i32);
        let d = d * y.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = dmin * y.d();
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

#[inline(always)]
pub(crate) fn vec_dot_q4_k(w: &[BlockQ4K], act: &[BlockQ8K]) -> f32 {
    vec_dot_q45_k(w, act, |x| {
        (
            f16_to_f32(x.d),
            f16_to_f32(x.dmin),
            x.scales,
            unpack_4bit(&x.qs),
        )
    })
}

#[inline(always)]
pub(crate) fn vec_dot_q5_k(w: &[BlockQ5K], act: &[BlockQ8K]) -> f32 {
    vec_dot_q45_k(w, act, |x| {
        (
            f16_to_f32(x.d),
            f16_to_f32(x.dmin),
            x.scales,
            unpack_q5_k(x),
        )
    })
}

#[inline(always)]
pub(crate) fn vec_dot_q6_k(w: &[BlockQ6K], act: &[BlockQ8K]) -> f32 {
    let mut sums = [0f32; 8];
    for (x, y) in w.iter().zip(act) {
        let q = unpack_q6_k(x);
        let aux32 = scaled_lanes::<16>(&q, &y.qs, |j| x.scales[j] as i32);
        let d = f16_to_f32(x.d) * y.d();
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}
