//! ggml's reference quantizers for the K-quants (`quantize_row_q{2..6}_K_ref`, no importance
//! matrix), reproduced operation for operation so the bytes match ggml's: same float expression
//! order, same rounding helper, same search loops. They run at conversion time only.
//!
//! The shape is the same for every format: fit each sub-block on its own (a scale, and for the
//! "x = a·q − b" formats a minimum), quantize those per-sub-block scales against their maximum
//! with a few bits, then requantize every element with the scales as they will be decoded.

use super::k_quants::{
    q3_k_scales, scale_min_k4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, K_SCALE_SIZE,
};
use super::{f16_to_f32, f32_to_f16};
use crate::gguf::QK_K;

/// Below this a sub-block counts as all zero (ggml's GROUP_MAX_EPS).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, as ggml does it: adding 1.5·2²³ leaves the rounded integer in
/// the low mantissa bits. Exact for |x| < 2²²; outside that (and for NaN) it returns the same
/// meaningless value ggml gets, which the callers then clamp, as ggml's do.
#[inline(always)]
pub(crate) fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `make_qkx2_quants`: fit `x ≈ scale·L − min` (`L` in 0..=nmax, `min` >= 0) minimizing the
/// weighted squared (or, with `use_mad`, absolute) error. Starts from the plain min/max fit, then
/// tries `nstep + 1` slightly different inverse scales, each followed by a weighted least-squares
/// solve for scale and min. Writes the best `L` and returns `(scale, min)`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let err = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The signed value of largest magnitude and that magnitude.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// ggml's `make_qx_quants` in the one form the Q6_K reference uses (`rmse_type` 1: weights x², no
/// importance weights): symmetric `x ≈ scale·L`, `L + nmax` in 0..2·nmax written to `l_out`.
/// Tries 18 inverse scales around `−nmax / max` and keeps the one with the best weighted fit.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..x.len()].fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let l = quant(iscale, v);
        l_out[i] = (l + nmax) as i8;
        let (w, l) = (v * v, l as f32);
        sumlx += w * v * l;
        suml2 += w * l * l;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let (w, l) = (v * v, quant(iscale, v) as f32);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l_out[i] = (nmax + quant(iscale, v)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse` (the form the Q3_K reference uses): symmetric
/// `x ≈ scale·L`, then up to 5 passes of moving single elements to a better level while that
/// improves the x²-weighted fit. Writes `L + nmax` (0..2·nmax) and returns the scale.
fn make_q3_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let (w, l) = (x[i] * x[i], l as f32);
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in &mut l_out[..n] {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Packs 2-bit levels (element order) into the Q2_K/Q3_K `qs` layout.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for (q, l) in qs.chunks_exact_mut(32).zip(l.chunks_exact(128)) {
        for i in 0..32 {
            q[i] = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
}

pub(crate) fn quantize_q2_k(src: &[f32], dst: &mut [BlockQ2K]) {
    const Q4SCALE: f32 = 15.0;
    for (x, y) in src.chunks_exact(QK_K).zip(dst) {
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let mut weights = [0f32; 16];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let ls = &mut l[16 * j..16 * j + 16];
            let (s, m) = make_qkx2_quants(3, xs, &weights, ls, &mut laux, -0.5, 0.1, 15, true);
            (scales[j], mins[j]) = (s, m);
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }

        // 4-bit scales and mins against their maxima.
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (q, &s) in y.scales.iter_mut().zip(&scales) {
                *q = nearest_int(iscale * s) as u8;
            }
            y.d = f32_to_f16(max_scale / Q4SCALE);
        } else {
            y.scales = [0; QK_K / 16];
            y.d = f32_to_f16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (q, &m) in y.scales.iter_mut().zip(&mins) {
                *q |= (nearest_int(iscale * m) << 4) as u8;
            }
            y.dmin = f32_to_f16(max_min / Q4SCALE);
        } else {
            y.dmin = f32_to_f16(0.0);
        }

        let (d_all, dmin_all) = (f16_to_f32(y.d), f16_to_f32(y.dmin));
        for j in 0..QK_K / 16 {
            let d = d_all * (y.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * (y.scales[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, &mut y.qs);
    }
}

pub(crate) fn quantize_q3_k(src: &[f32], dst: &mut [BlockQ3K]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            let s = scales[j].abs();
            if s > amax {
                amax = s;
                max_scale = scales[j];
            }
        }

        // 6-bit signed scales (stored + 32) against the one of largest magnitude.
        y.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                let q = nearest_int(iscale * s) as i8; // ggml stores it in an int8_t first
                let q = (q.clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    y.scales[j] = q & 0xF;
                } else {
                    y.scales[j - 8] |= (q & 0xF) << 4;
                }
                y.scales[8 + j % 4] |= (q >> 4) << (2 * (j / 4));
            }
            y.d = f32_to_f16(1.0 / iscale);
        } else {
            y.d = f32_to_f16(0.0);
        }

        let d_all = f16_to_f32(y.d);
        let sc = q3_k_scales(&y.scales);
        for j in 0..QK_K / 16 {
            let d = d_all * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
            }
        }

        // High bits: element 32k + m goes to bit k of hmask[m].
        y.hmask = [0; QK_K / 8];
        let mut low = [0u8; QK_K];
        for (j, (&v, lo)) in l.iter().zip(low.iter_mut()).enumerate() {
            let v = v as u8;
            if v > 3 {
                y.hmask[j % 32] |= 1 << (j / 32);
                *lo = v - 4;
            } else {
                *lo = v;
            }
        }
        pack_2bit(&low, &mut y.qs);
    }
}

/// Packs 8 6-bit scales and mins the way [`scale_min_k4`] reads them: sub-blocks 0..4 in the low 6
/// bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8 as nibbles in bytes 8..12 with
/// their top 2 bits in the spare top bits of bytes 0..8.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut packed = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    packed
}

/// What Q4_K and Q5_K share: fit each 32-element sub-block as `scale·q − min`, quantize the 8
/// scales and 8 mins to 6 bits against their maxima (packed as `scale_min_k4` reads them), then
/// requantize every element with the decoded scales. Returns `(d, dmin, scales, levels)`.
fn quantize_scale_min_k(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let ls = &mut l[32 * j..32 * j + 32];
        let (s, m) = make_qkx2_quants(nmax, xs, &weights, ls, &mut laux, rmin, 0.1, nstep, false);
        (scales[j], mins[j]) = (s, m);
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..QK_K / 32 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);

    let (d_all, dmin_all) = (f16_to_f32(d), f16_to_f32(dmin));
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dd = d_all * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

pub(crate) fn quantize_q4_k(src: &[f32], dst: &mut [BlockQ4K]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst) {
        let (d, dmin, scales, l) = quantize_scale_min_k(x, 15, -1.0, 20);
        (y.d, y.dmin, y.scales) = (d, dmin, scales);
        for (q, l) in y.qs.chunks_exact_mut(32).zip(l.chunks_exact(64)) {
            for i in 0..32 {
                q[i] = l[i] | (l[i + 32] << 4);
            }
        }
    }
}

pub(crate) fn quantize_q5_k(src: &[f32], dst: &mut [BlockQ5K]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst) {
        let (d, dmin, scales, l) = quantize_scale_min_k(x, 31, -0.5, 15);
        (y.d, y.dmin, y.scales) = (d, dmin, scales);
        y.qh = [0; QK_K / 8];
        for (c, (q, l)) in
            y.qs.chunks_exact_mut(32)
                .zip(l.chunks_exact(64))
                .enumerate()
        {
            for i in 0..32 {
                let (lo, hi) = (l[i], l[i + 32]);
                y.qh[i] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
                q[i] = (lo & 0xF) | ((hi & 0xF) << 4);
            }
        }
    }
}

pub(crate) fn quantize_q6_k(src: &[f32], dst: &mut [BlockQ6K]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..QK_K / 16 {
            let s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y.ql = [0; QK_K / 2];
            y.qh = [0; QK_K / 4];
            y.scales = [0; QK_K / 16];
            y.d = f32_to_f16(0.0);
            continue;
        }

        // 8-bit signed scales against the one of largest magnitude (which maps to −128).
        let iscale = -128.0 / max_scale;
        y.d = f32_to_f16(1.0 / iscale);
        for (q, &s) in y.scales.iter_mut().zip(&scales) {
            *q = nearest_int(iscale * s).min(127) as i8;
        }
        let d_all = f16_to_f32(y.d);
        for j in 0..QK_K / 16 {
            let d = d_all * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
            }
        }

        // Levels are 0..=63 now.
        for h in 0..2 {
            let l = &l[128 * h..128 * h + 128];
            for i in 0..32 {
                let (q1, q2, q3, q4) = (
                    l[i] as u8,
                    l[i + 32] as u8,
                    l[i + 64] as u8,
                    l[i + 96] as u8,
                );
                y.ql[64 * h + i] = (q1 & 0xF) | ((q3 & 0xF) << 4);
                y.ql[64 * h + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
                y.qh[32 * h + i] =
                    (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
            }
        }
    }
}
