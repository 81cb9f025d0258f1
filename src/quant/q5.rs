//! 5-bit formats over 32-element blocks: Q5_0 (`x = d·(q − 16)`) and Q5_1 (`x = d·q + m`).
//!
//! The low four bits are nibbles as in Q4 (byte `j`: element `j` low, `j + 16` high); the fifth
//! bit of element `i` is bit `i` of the little-endian u32 `qh`.

use super::q4::min_max;
use super::q8::{BlockQ8_0, BlockQ8_1};
use super::{f16_to_f32, f32_to_f16, impl_block, QK};
use crate::gguf::GgmlType;

#[repr(C)]
pub(crate) struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ5_0, GgmlType::Q5_0);

#[repr(C)]
pub(crate) struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ5_1, GgmlType::Q5_1);

/// The 5-bit quants of elements `j` and `j + 16`, 0..=31.
#[inline(always)]
fn q5_pair(qs: &[u8; QK / 2], qh: u32, j: usize) -> (i32, i32) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    (
        ((qs[j] & 0x0F) as u32 | h0) as i32,
        ((qs[j] >> 4) as u32 | h1) as i32,
    )
}

pub(crate) fn dequantize_q5_0(src: &[BlockQ5_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        let qh = u32::from_le_bytes(b.qh);
        let (lo, hi) = y.split_at_mut(QK / 2);
        for j in 0..QK / 2 {
            let (q0, q1) = q5_pair(&b.qs, qh, j);
            lo[j] = (q0 - 16) as f32 * d;
            hi[j] = (q1 - 16) as f32 * d;
        }
    }
}

pub(crate) fn dequantize_q5_1(src: &[BlockQ5_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        let m = f16_to_f32(b.m);
        let qh = u32::from_le_bytes(b.qh);
        let (lo, hi) = y.split_at_mut(QK / 2);
        for j in 0..QK / 2 {
            let (q0, q1) = q5_pair(&b.qs, qh, j);
            lo[j] = q0 as f32 * d + m;
            hi[j] = q1 as f32 * d + m;
        }
    }
}

/// Packs 32 5-bit quants (`q[j]`, `q[j + 16]` per byte; fifth bits into `qh`).
#[inline(always)]
fn pack_q5(q: &[u8; QK], qs: &mut [u8; QK / 2], qh_out: &mut [u8; 4]) {
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let (q0, q1) = (q[j], q[j + QK / 2]);
        qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
        qh |= (((q0 & 0x10) as u32) >> 4) << j;
        qh |= (((q1 & 0x10) as u32) >> 4) << (j + QK / 2);
    }
    *qh_out = qh.to_le_bytes();
}

/// ggml's `quantize_row_q5_0_ref`: `d = max / -16` (`max` signed, of largest magnitude),
/// `q = min(31, trunc(x/d + 16.5))`.
pub(crate) fn quantize_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let mut q = [0u8; QK];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + 16.5) as i8).min(31) as u8;
        }
        pack_q5(&q, &mut b.qs, &mut b.qh);
    }
}

/// ggml's `quantize_row_q5_1_ref`: `m = min`, `d = (max − min) / 31`,
/// `q = trunc((x − m)/d + 0.5)` (no clamp in ggml; the value cannot exceed 31).
pub(crate) fn quantize_q5_1(src: &[f32], dst: &mut [BlockQ5_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        let mut q = [0u8; QK];
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v - min) * id + 0.5) as u8;
        }
        pack_q5(&q, &mut b.qs, &mut b.qh);
    }
}

#[inline(always)]
pub(crate) fn vec_dot_q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let qh = u32::from_le_bytes(x.qh);
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let (q0, q1) = q5_pair(&x.qs, qh, j);
            sumi0 += (q0 - 16) * y.qs[j] as i32;
            sumi1 += (q1 - 16) * y.qs[j + QK / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32;
    }
    sumf
}

#[inline(always)]
pub(crate) fn vec_dot_q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let qh = u32::from_le_bytes(x.qh);
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let (q0, q1) = q5_pair(&x.qs, qh, j);
            sumi0 += q0 * y.qs[j] as i32;
            sumi1 += q1 * y.qs[j + QK / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf +=
            (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{as_blocks, as_blocks_mut};

    /// A Q5_0 block with d = 1 whose quants are q[i] = i (0..31): nibbles i & 15, fifth bits set
    /// for i >= 16, i.e. qh = 0xFFFF0000.
    fn q5_0_ramp() -> Vec<u8> {
        let mut raw = vec![0x00u8, 0x3C, 0x00, 0x00, 0xFF, 0xFF];
        raw.extend((0..16u8).map(|j| j | (j << 4)));
        raw
    }

    #[test]
    fn q5_0_known_block() {
        let mut y = [0f32; 32];
        dequantize_q5_0(as_blocks(&q5_0_ramp()), &mut y);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, i as f32 - 16.0);
        }
        // Moving one high bit: element 3 gains 16, element 16 + 2 loses 16.
        let mut raw = q5_0_ramp();
        raw[2] = 0x08; // qh bit 3
        raw[4] = 0xFB; // clear qh bit 18
        dequantize_q5_0(as_blocks(&raw), &mut y);
        assert_eq!(y[3], 3.0);
        assert_eq!(y[18], -14.0);
    }

    #[test]
    fn q5_1_known_block() {
        // d = 0.5, m = 10, quants as in the ramp above.
        let mut raw = vec![0x00u8, 0x38, 0x00, 0x49];
        raw.extend(&q5_0_ramp()[2..]);
        let mut y = [0f32; 32];
        dequantize_q5_1(as_blocks(&raw), &mut y);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, i as f32 * 0.5 + 10.0);
        }
    }

    #[test]
    fn q5_quantize_packs_like_the_ramp() {
        // Q5_1 of 0..31: min 0, d = 1, q = i: exactly the ramp's bytes.
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let mut raw = [0u8; 24];
        quantize_q5_1(&x, as_blocks_mut(&mut raw));
        assert_eq!(&raw[..4], &[0x00, 0x3C, 0x00, 0x00]);
        assert_eq!(&raw[4..], &q5_0_ramp()[2..]);
        // Q5_0 of i - 16: max = -16 → d = 1, q = trunc(x + 16.5) = i.
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
        let mut raw = [0u8; 22];
        quantize_q5_0(&x, as_blocks_mut(&mut raw));
        assert_eq!(&raw[..], &q5_0_ramp()[..]);
    }
}
