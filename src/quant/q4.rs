//! 4-bit formats over 32-element blocks: Q4_0 (`x = d·(q − 8)`) and Q4_1 (`x = d·q + m`).
//!
//! Quants are nibbles: byte `j` holds element `j` in its low nibble and element `j + 16` in its
//! high nibble.

use super::q8::{BlockQ8_0, BlockQ8_1};
use super::{f16_to_f32, f32_to_f16, impl_block, QK};
use crate::gguf::GgmlType;

#[repr(C)]
pub(crate) struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ4_0, GgmlType::Q4_0);

#[repr(C)]
pub(crate) struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}
impl_block!(BlockQ4_1, GgmlType::Q4_1);

pub(crate) fn dequantize_q4_0(src: &[BlockQ4_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        let (lo, hi) = y.split_at_mut(QK / 2);
        for j in 0..QK / 2 {
            lo[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            hi[j] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub(crate) fn dequantize_q4_1(src: &[BlockQ4_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        let m = f16_to_f32(b.m);
        let (lo, hi) = y.split_at_mut(QK / 2);
        for j in 0..QK / 2 {
            lo[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            hi[j] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// ggml's `quantize_row_q4_0_ref`: `d = max / -8` with `max` the signed value of largest magnitude
/// (it maps to q = 0, the far end of the range), `q = min(15, trunc(x/d + 8.5))`.
pub(crate) fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for j in 0..QK / 2 {
            // `as i8` truncates toward zero like C's (int8_t) cast for these in-range values.
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// ggml's `quantize_row_q4_1_ref`: `m = min`, `d = (max − min) / 15`,
/// `q = min(15, trunc((x − m)/d + 0.5))`.
pub(crate) fn quantize_q4_1(src: &[f32], dst: &mut [BlockQ4_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        for j in 0..QK / 2 {
            let q0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// The minimum and maximum of a block, starting from ±FLT_MAX as ggml does.
#[inline(always)]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
pub(crate) fn vec_dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = (x.qs[j] & 0x0F) as i32 - 8;
            let v1 = (x.qs[j] >> 4) as i32 - 8;
            sumi0 += v0 * y.qs[j] as i32;
            sumi1 += v1 * y.qs[j + QK / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += sumi as f32 * f16_to_f32(x.d) * f16_to_f32(y.d);
    }
    sumf
}

/// `Σ (d·q + m)·y = d·dy·Σ q·qy + m·s`, where `s = dy·Σ qy` comes with the Q8_1 block.
#[inline(always)]
pub(crate) fn vec_dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let (mut sumi0, mut sumi1) = (0i32, 0i32);
        for j in 0..QK / 2 {
            let v0 = (x.qs[j] & 0x0F) as i32;
            let v1 = (x.qs[j] >> 4) as i32;
            sumi0 += v0 * y.qs[j] as i32;
            sumi1 += v1 * y.qs[j + QK / 2] as i32;
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

    #[test]
    fn q4_0_known_block() {
        // d = 0.5 (f16 0x3800); byte j = j | (15 - j) << 4, so element j is (j - 8)·0.5 and
        // element 16 + j is (7 - j)·0.5.
        let mut raw = vec![0x00u8, 0x38];
        raw.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize_q4_0(as_blocks(&raw), &mut y);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[16 + j], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_1_known_block() {
        // d = 2 (0x4000), m = -1 (0xBC00); all bytes 0xA3: low nibble 3, high nibble 10.
        let mut raw = vec![0x00u8, 0x40, 0x00, 0xBC];
        raw.extend([0xA3u8; 16]);
        let mut y = [0f32; 32];
        dequantize_q4_1(as_blocks(&raw), &mut y);
        assert!(y[..16].iter().all(|&v| v == 5.0));
        assert!(y[16..].iter().all(|&v| v == 19.0));
    }

    #[test]
    fn q4_0_quantize_known_values() {
        // max = -8 → d = 1, id = 1: q = min(15, trunc(x + 8.5)).
        let mut x = [0f32; 32];
        x[0] = -8.0; // 0
        x[1] = 7.0; // 15
        x[2] = 7.9; // 16 → clamped to 15
        x[16] = 0.4; // 8
        x[17] = -3.6; // trunc(4.9) = 4
        let mut raw = [0u8; 18];
        quantize_q4_0(&x, as_blocks_mut(&mut raw));
        assert_eq!(&raw[..2], &[0x00, 0x3C]); // d = 1
        let b = &as_blocks::<BlockQ4_0>(&raw)[0];
        assert_eq!(b.qs[0], 8 << 4); // low nibble 0
        assert_eq!(b.qs[1], 15 | (4 << 4));
        assert_eq!(b.qs[2], 15 | (8 << 4));
        assert_eq!(b.qs[3], 8 | (8 << 4)); // zeros sit at q = 8
                                           // The sign of d follows max: negate the block and d = -1, quants unchanged.
        let neg: Vec<f32> = x.iter().map(|v| -v).collect();
        let mut raw2 = [0u8; 18];
        quantize_q4_0(&neg, as_blocks_mut(&mut raw2));
        assert_eq!(&raw2[..2], &[0x00, 0xBC]);
        assert_eq!(&raw2[2..], &raw[2..]);
    }

    #[test]
    fn q4_1_quantize_known_values() {
        // min = 0, max = 15 → d = 1, m = 0.
        let x: Vec<f32> = (0..32).map(|i| (i % 16) as f32).collect();
        let mut raw = [0u8; 20];
        quantize_q4_1(&x, as_blocks_mut(&mut raw));
        let b = &as_blocks::<BlockQ4_1>(&raw)[0];
        assert_eq!((f16_to_f32(b.d), f16_to_f32(b.m)), (1.0, 0.0));
        for j in 0..16 {
            assert_eq!(b.qs[j], (j as u8) | ((j as u8) << 4));
        }
    }
}
