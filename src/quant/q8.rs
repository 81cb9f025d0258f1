//! 8-bit formats: Q8_0 and Q8_1 (32 elements, f16 scale) and Q8_K (256 elements, f32 scale).
//!
//! Besides being weight formats, these are what activations are quantized to before a dot product
//! (see `vec_dot_type`), so their quantizers run once per matmul row at inference time.

use super::{f16_to_f32, f32_to_f16, impl_block, QK};
use crate::gguf::{GgmlType, QK_K};

/// `x = d * q`, q in -127..=127.
#[repr(C)]
pub(crate) struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; QK],
}
impl_block!(BlockQ8_0, GgmlType::Q8_0);

/// Q8_0 plus `s = d * Σq` (f16), which lets Q4_1/Q5_1 dots apply their minimum per block without
/// touching the quants again.
#[repr(C)]
pub(crate) struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}
impl_block!(BlockQ8_1, GgmlType::Q8_1);

/// `x = d * q` over a 256-element super-block, `d` an f32 (little-endian bytes here); `bsums` are
/// the i16 sums of each 16 quants, which the K-quant dots use to apply their per-block minimums.
#[repr(C)]
pub(crate) struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}
impl_block!(BlockQ8K, GgmlType::Q8_K);

impl BlockQ8K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i32 {
        i16::from_le_bytes(self.bsums[j]) as i32
    }
}

pub(crate) fn dequantize_q8_0(src: &[BlockQ8_0], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

pub(crate) fn dequantize_q8_1(src: &[BlockQ8_1], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK)) {
        let d = f16_to_f32(b.d);
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

pub(crate) fn dequantize_q8_k(src: &[BlockQ8K], dst: &mut [f32]) {
    for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
        let d = b.d();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = d * q as f32;
        }
    }
}

/// The absolute maximum of a block (0 for an all-zero block).
#[inline(always)]
fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// `d = amax / 127`, `q = round(x / d)` with ties away from zero (C's `roundf`).
pub(crate) fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let d = amax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// As Q8_0, plus `s = fp16(Σq · d)` with the f32 (not the rounded f16) `d`, as ggml does.
pub(crate) fn quantize_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let d = amax(x) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        b.s = f32_to_f16(sum as f32 * d);
    }
}

/// ggml's `quantize_row_q8_K_ref`: scale by `-127 / max` where `max` is the signed value of largest
/// magnitude (so it maps to -127), round to nearest even, then the 16-element sums.
pub(crate) fn quantize_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            // ggml leaves bsums untouched here; zeros are what they would sum to.
            b.d = 0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = super::k_quantize::nearest_int(iscale * v).min(127) as i8;
        }
        for (j, s) in b.bsums.iter_mut().enumerate() {
            let sum: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            *s = (sum as i16).to_le_bytes();
        }
        b.d = (1.0 / iscale).to_le_bytes();
    }
}

/// Σ x·y over Q8_0 blocks: an exact integer sum per block, scaled by `dx·dy`.
#[inline(always)]
pub(crate) fn vec_dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK {
            sumi += x.qs[j] as i32 * y.qs[j] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sumf
}

/// Q8_1 weights against Q8_1 activations (ggml has no such kernel; this mirrors Q8_0's).
#[inline(always)]
pub(crate) fn vec_dot_q8_1(w: &[BlockQ8_1], a: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK {
            sumi += x.qs[j] as i32 * y.qs[j] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sumf
}

/// Q8_K weights against Q8_K activations (ggml has no such kernel; same shape as Q8_0's).
#[inline(always)]
pub(crate) fn vec_dot_q8_k(w: &[BlockQ8K], a: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..QK_K {
            sumi += x.qs[j] as i32 * y.qs[j] as i32;
        }
        sumf += sumi as f32 * (x.d() * y.d());
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{as_blocks, as_blocks_mut};

    #[test]
    fn q8_0_known_block() {
        // d = 0.25 (f16 0x3400), qs = -16..16.
        let mut raw = vec![0x00u8, 0x34];
        raw.extend((-16i8..16).map(|q| q as u8));
        let mut y = [0f32; 32];
        dequantize_q8_0(as_blocks(&raw), &mut y);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.25);
        }
    }

    #[test]
    fn q8_0_quantize_known_values() {
        // amax = 127 → d = 1 exactly, so q = round(x) with ties away from zero.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = -2.5;
        x[2] = 2.5;
        x[3] = 0.49;
        x[4] = -126.6;
        let mut raw = [0u8; 34];
        quantize_q8_0(&x, as_blocks_mut(&mut raw));
        assert_eq!(&raw[..2], &[0x00, 0x3C]);
        assert_eq!(
            &raw[2..7].iter().map(|&b| b as i8).collect::<Vec<_>>(),
            &[127, -3, 3, 0, -127]
        );
    }

    #[test]
    fn q8_1_sum_field() {
        // d = 1: s = Σq = 127 + 1 + 1 = 129.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[5] = 1.0;
        x[31] = 1.0;
        let mut raw = [0u8; 36];
        quantize_q8_1(&x, as_blocks_mut(&mut raw));
        let b = &as_blocks::<BlockQ8_1>(&raw)[0];
        assert_eq!(f16_to_f32(b.d), 1.0);
        assert_eq!(f16_to_f32(b.s), 129.0);
        assert_eq!((b.qs[0], b.qs[5], b.qs[31]), (127, 1, 1));
    }

    #[test]
    fn q8_k_known_block() {
        // The value of largest magnitude is negative: iscale = -127 / -254 = 0.5, d = 2.
        let mut x = [0f32; QK_K];
        x[0] = -254.0;
        x[1] = 3.0; // 1.5 → 2 (ties to even)
        x[2] = 5.0; // 2.5 → 2 (ties to even)
        x[17] = 100.0;
        let mut raw = vec![0u8; 292];
        quantize_q8_k(&x, as_blocks_mut(&mut raw));
        let b = &as_blocks::<BlockQ8K>(&raw)[0];
        assert_eq!(b.d(), 2.0);
        assert_eq!((b.qs[0], b.qs[1], b.qs[2], b.qs[17]), (-127, 2, 2, 50));
        assert_eq!(b.bsum(0), -127 + 2 + 2);
        assert_eq!(b.bsum(1), 50);
        let mut y = vec![0f32; QK_K];
        dequantize_q8_k(as_blocks(&raw), &mut y);
        assert_eq!((y[0], y[1], y[17]), (-254.0, 4.0, 100.0));
    }
}
