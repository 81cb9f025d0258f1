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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::k_quantize::pack_scale_min_k4;
    use crate::quant::{as_blocks, f32_to_f16};

    fn deq<B: crate::quant::Block>(f: fn(&[B], &mut [f32]), raw: &[u8]) -> Vec<f32> {
        let mut y = vec![0f32; QK_K];
        f(as_blocks(raw), &mut y);
        y
    }

    /// Worked by hand from the bit layout (see `scale_min_k4`'s doc).
    #[test]
    fn scale_min_k4_known_bytes() {
        let q = [
            0xC1, 0x42, 0x83, 0x04, 0x45, 0xC6, 0x07, 0x88, 0x9A, 0xBC, 0xDE, 0xF0,
        ];
        let want = [
            (1, 5),
            (2, 6),
            (3, 7),
            (4, 8),
            // j = 4: low nibble of 0x9A = 0xA | top bits of 0xC1 (3) << 4 = 58;
            //        high nibble 0x9 | top bits of 0x45 (1) << 4 = 25.
            (58, 25),
            (28, 59),
            (46, 13),
            (0, 47),
        ];
        for (j, w) in want.iter().enumerate() {
            assert_eq!(scale_min_k4(j, &q), *w, "j = {j}");
        }
    }

    #[test]
    fn scale_min_k4_packing_round_trips() {
        for seed in 0..16u8 {
            let ls: [u8; 8] = std::array::from_fn(|j| (seed * 7 + 13 * j as u8) & 63);
            let lm: [u8; 8] = std::array::from_fn(|j| (seed * 3 + 23 * j as u8) & 63);
            let packed = pack_scale_min_k4(&ls, &lm);
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &packed), (ls[j], lm[j]));
            }
        }
    }

    /// Worked by hand: low nibbles from bytes 0..8, high 2 bits from bytes 8..12.
    const Q3_SCALE_BYTES: [u8; 12] = [
        0x21,
        0x43,
        0x65,
        0x87,
        0xA9,
        0xCB,
        0xED,
        0x0F,
        0b1110_0100,
        0b0001_1011,
        0xFF,
        0x00,
    ];
    const Q3_SCALES: [i8; 16] = [
        -31, 19, 21, -25, -7, 11, 29, -17, 2, -12, 22, -24, 26, -20, 30, -32,
    ];

    #[test]
    fn q3_k_scales_known_bytes() {
        assert_eq!(q3_k_scales(&Q3_SCALE_BYTES), Q3_SCALES);
    }

    #[test]
    fn q3_k_known_block() {
        // d = 1; every hmask bit set (no −4) except bit 0 of hmask[0] (element 0).
        // qs[0] = 0b11_10_01_00 → low bits 0, 1, 2, 3 for elements 0, 32, 64, 96;
        // qs[32] = 3 → element 128 has low bits 3.
        let mut raw = vec![0xFFu8; 32];
        raw[0] = 0xFE;
        let mut qs = [0u8; 64];
        qs[0] = 0b11_10_01_00;
        qs[32] = 3;
        raw.extend(qs);
        raw.extend(Q3_SCALE_BYTES);
        raw.extend(f32_to_f16(1.0));
        let y = deq(dequantize_q3_k, &raw);
        let mut want = [0f32; QK_K];
        want[0] = -31.0 * -4.0; // q = 0 − 4, scale 0
        want[32] = 21.0; // q = 1, scale 2
        want[64] = -7.0 * 2.0; // scale 4
        want[96] = 29.0 * 3.0; // scale 6
        want[128] = 2.0 * 3.0; // scale 8
        assert_eq!(y, want);
    }

    #[test]
    fn q2_k_known_block() {
        // d = 0.5, dmin = 1; scale byte j = j | (15 − j) << 4.
        let mut raw: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let mut qs = [0u8; 64];
        qs[0] = 0b11_10_01_00; // elements 0, 32, 64, 96 → 0, 1, 2, 3
        qs[33] = 0b01_00_00_11; // elements 129 → 3, 225 → 1
        raw.extend(qs);
        raw.extend(f32_to_f16(0.5));
        raw.extend(f32_to_f16(1.0));
        let y = deq(dequantize_q2_k, &raw);
        // x = 0.5·(scale & 15)·q − (scale >> 4) with scale index = element / 16.
        let mut want: Vec<f32> = (0..QK_K).map(|i| -(15.0 - (i / 16) as f32)).collect();
        want[0] = -15.0;
        want[32] = 0.5 * 2.0 * 1.0 - 13.0;
        want[64] = 0.5 * 4.0 * 2.0 - 11.0;
        want[96] = 0.5 * 6.0 * 3.0 - 9.0;
        want[129] = 0.5 * 8.0 * 3.0 - 7.0;
        want[225] = 0.5 * 14.0 * 1.0 - 1.0;
        assert_eq!(y, want);
    }

    /// A Q4_K block with d = 1, dmin = 0.5, sub-block j having scale j + 1 and min j, and byte
    /// 32c + l = (l % 16) | (15 − l % 16) << 4.
    fn q4_k_block() -> Vec<u8> {
        let ls: [u8; 8] = std::array::from_fn(|j| j as u8 + 1);
        let lm: [u8; 8] = std::array::from_fn(|j| j as u8);
        let mut raw = Vec::new();
        raw.extend(f32_to_f16(1.0));
        raw.extend(f32_to_f16(0.5));
        raw.extend(pack_scale_min_k4(&ls, &lm));
        for _ in 0..4 {
            raw.extend((0..32u8).map(|l| (l % 16) | ((15 - l % 16) << 4)));
        }
        raw
    }

    #[test]
    fn q4_k_known_block() {
        let raw = q4_k_block();
        // The scales by hand: sub-blocks 0..4 are plain bytes, 4..8 nibbles (all < 16 here).
        assert_eq!(
            &raw[4..16],
            &[1, 2, 3, 4, 0, 1, 2, 3, 0x45, 0x56, 0x67, 0x78]
        );
        let y = deq(dequantize_q4_k, &raw);
        for c in 0..4 {
            for l in 0..32 {
                let lo = (l % 16) as f32;
                let (s0, s1) = ((2 * c + 1) as f32, (2 * c + 2) as f32);
                assert_eq!(y[64 * c + l], s0 * lo - 0.5 * (2 * c) as f32);
                assert_eq!(
                    y[64 * c + 32 + l],
                    s1 * (15.0 - lo) - 0.5 * (2 * c + 1) as f32
                );
            }
        }
    }

    #[test]
    fn q5_k_known_block() {
        // The Q4_K block above plus high bits: qh[l] bit 0 for even l (elements 0..32 even),
        // bit 7 for l < 4 (elements 224..228).
        let q4 = q4_k_block();
        let mut raw = q4[..16].to_vec();
        let qh: Vec<u8> = (0..32)
            .map(|l| u8::from(l % 2 == 0) | if l < 4 { 0x80 } else { 0 })
            .collect();
        raw.extend(&qh);
        raw.extend(&q4[16..]);
        let y5 = deq(dequantize_q5_k, &raw);
        let y4 = deq(dequantize_q4_k, &q4);
        for i in 0..QK_K {
            let scale = (i / 32 + 1) as f32;
            let high = (i < 32 && i % 2 == 0) || (224..228).contains(&i);
            let want = if high { y4[i] + 16.0 * scale } else { y4[i] };
            assert_eq!(y5[i], want, "element {i}");
        }
    }

    #[test]
    fn q6_k_known_block() {
        // ql[i] = i, qh[i] = 37·i mod 256, scales[j] = j − 8, d = 0.25.
        let mut raw: Vec<u8> = (0..128u8).collect();
        raw.extend((0..64u32).map(|i| (37 * i % 256) as u8));
        raw.extend((0..16i8).map(|j| (j - 8) as u8));
        raw.extend(f32_to_f16(0.25));
        let y = deq(dequantize_q6_k, &raw);
        // Worked by hand:
        // element 0: ql[0] & 15 = 0, qh[0] bits 0-1 = 0 → q = −32, scale −8 → 64.
        assert_eq!(y[0], 64.0);
        // element 65 (half 0, k = 2, l = 1): ql[1] >> 4 = 0, qh[1] = 37 bits 4-5 = 2 → q = 0.
        assert_eq!(y[65], 0.0);
        // element 37 (k = 1, l = 5): ql[37] & 15 = 5, qh[5] = 185 bits 2-3 = 2 → q = 37 − 32 = 5,
        // scale index 2 → −6.
        assert_eq!(y[37], 0.25 * -6.0 * 5.0);
        // element 227 (half 1, k = 3, l = 3): ql[64 + 35] = 99 >> 4 = 6, qh[35] = 15 bits 6-7 = 0
        // → q = −26, scale index 14 → 6.
        assert_eq!(y[227], 0.25 * 6.0 * -26.0);

        // Every element, decoded the way ggml's loop walks the block (per half, per l, four
        // quarters at once).
        for h in 0..2 {
            for l in 0..32 {
                let ql = |i: usize| raw[64 * h + i];
                let qh = raw[128 + 32 * h + l];
                let sc = |k: usize| (raw[192 + 8 * h + l / 16 + 2 * k] as i8) as f32;
                let q = [
                    (ql(l) & 0xF) | (qh & 3) << 4,
                    (ql(l + 32) & 0xF) | ((qh >> 2) & 3) << 4,
                    (ql(l) >> 4) | ((qh >> 4) & 3) << 4,
                    (ql(l + 32) >> 4) | ((qh >> 6) & 3) << 4,
                ];
                for (k, q) in q.iter().enumerate() {
                    let want = 0.25 * sc(k) * (*q as i32 - 32) as f32;
                    assert_eq!(y[128 * h + 32 * k + l], want, "h {h} l {l} k {k}");
                }
            }
        }
    }
}
