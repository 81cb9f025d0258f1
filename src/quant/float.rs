//! F32, F16 and BF16 rows (little-endian, one element per "block"), and their dot products with
//! f32 activations.
//!
//! The element conversions are branch-free bit manipulations so that whole rows vectorize; `half`
//! is the cross-check in the tests.

/// f16 bits → f32, exact for every input. Normal numbers only need their exponent rebased (a
/// shift and an add), subnormals are `mantissa · 2^-24` (an exact int → float conversion), and
/// inf/NaN keep their payload under an all-ones exponent. Branch-free selects, so rows vectorize.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    // i32 throughout: SIMD has signed compares only, and every value here is below 2^16.
    let h = h as i32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let normal = (em << 13) + ((127 - 15) << 23);
    let inf_nan = (em << 13) | 0x7f80_0000;
    let subnormal = (em as f32 * f32::from_bits(0x3380_0000)).to_bits() as i32; // 2^-24
    let bits = if em >= 0x7c00 {
        inf_nan
    } else if em >= 0x0400 {
        normal
    } else {
        subnormal
    };
    f32::from_bits((sign | bits) as u32)
}

/// f32 → f16 bits, rounding to nearest even (ggml's `ggml_compute_fp32_to_fp16`; NaN becomes the
/// quiet NaN 0x7E00 with the sign kept). Scaling by 2^112 then 2^-110 lets the FPU do the rounding.
#[inline(always)]
pub(crate) fn f32_to_f16_bits(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// bf16 bits → f32: bf16 is the top half of an f32.
#[inline(always)]
pub(crate) fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 → bf16 bits, rounding to nearest even; NaN stays NaN with the quiet bit forced
/// (ggml's GGML_FP32_TO_BF16).
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(f: f32) -> u16 {
    let u = f.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Weight element encodings of the SIMD float kernels (a const parameter, so each kernel is
/// compiled per type).
pub(crate) const E_F32: u8 = 0;
pub(crate) const E_F16: u8 = 1;
pub(crate) const E_BF16: u8 = 2;

/// Bytes per weight element of encoding `e`.
pub(crate) const fn elem_bytes(e: u8) -> usize {
    if e == E_F32 {
        4
    } else {
        2
    }
}

/// Runs `$body` with `$e` bound to the const encoding of float type `$ty` (which must be F32,
/// F16 or BF16).
macro_rules! with_elem {
    ($ty:expr, $e:ident => $body:expr) => {
        match $ty {
            $crate::gguf::GgmlType::F32 => {
                const $e: u8 = $crate::quant::float::E_F32;
                $body
            }
            $crate::gguf::GgmlType::F16 => {
                const $e: u8 = $crate::quant::float::E_F16;
                $body
            }
            _ => {
                const $e: u8 = $crate::quant::float::E_BF16;
                $body
            }
        }
    };
}
pub(crate) use with_elem;

/// Activation bytes a token block of the matrix product may span: it stays in L2 while the
/// weight row tiles stream by it (each row tile against every token tile of the block).
const TOKEN_BLOCK_BYTES: usize = 512 * 1024;
/// Activation bytes of a register tile that may stay in L1 while weight rows stream by.
const X_TILE_L1_BYTES: usize = 24 * 1024;
/// Weight bytes of the row blocks that stream by an L1-resident activation tile (from L2).
const ROW_BLOCK_BYTES: usize = 512 * 1024;

/// The matrix product of float weights (`ES` bytes per element, rows of `n` elements back to
/// back in `w`) and `n_tok` f32 activation rows of `arb` bytes in `act`, for the SIMD builds:
/// `tile` computes the dot products of an `R`×`T` register tile (each a canonical chain, see
/// [`LANES`]) from rows cut to `n` elements. Short tiles at the edges repeat their last row or
/// activation row (those results are dropped). Results go to `out` one tile at a time.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn gemm_tiles<const ES: usize, const R: usize, const T: usize>(
    n: usize,
    w: &[u8],
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut super::GemmOut,
    mut tile: impl FnMut([&[u8]; R], [&[u8]; T]) -> [[f32; T]; R],
) {
    let rb = n * ES;
    let rows = w.len() / rb.max(1);
    if rows == 0 || n_tok == 0 || n == 0 {
        return;
    }
    let block = (TOKEN_BLOCK_BYTES / (n * 4)).max(1).div_ceil(T) * T;
    let row = |r: usize| &w[r.min(rows - 1) * rb..][..rb];
    let tok = |t: usize| &act[t.min(n_tok - 1) * arb..][..n * 4];
    let mut vals = [[0f32; R]; T];
    let mut run = |r0: usize, t0: usize, t_end: usize| {
        let nr = R.min(rows - r0);
        let nt = T.min(t_end - t0);
        let dots = tile(
            std::array::from_fn(|i| row(r0 + i)),
            std::array::from_fn(|j| tok(t0 + j)),
        );
        for (j, v) in vals.iter_mut().enumerate() {
            for (i, v) in v.iter_mut().enumerate() {
                *v = dots[i][j];
            }
        }
        if nr == R {
            out(t0, r0, R, &vals.as_flattened()[..nt * R]);
        } else {
            for (j, v) in vals.iter().enumerate().take(nt) {
                out(t0 + j, r0, nr, &v[..nr]);
            }
        }
    };
    // Where a tile's activation rows fit in L1, they stay there while the weight rows of a
    // block (sized for L2) stream by: each weight byte then serves T activation rows, where the
    // other order (below) re-reads the activations from L2 for every R weight rows.
    let x_in_l1 = T * n * 4 <= X_TILE_L1_BYTES;
    let row_block = (ROW_BLOCK_BYTES / rb).max(1).div_ceil(R) * R;
    for b0 in (0..n_tok).step_by(block) {
        let b1 = (b0 + block).min(n_tok);
        if x_in_l1 {
            for rb0 in (0..rows).step_by(row_block) {
                let rb1 = (rb0 + row_block).min(rows);
                for t0 in (b0..b1).step_by(T) {
                    for r0 in (rb0..rb1).step_by(R) {
                        run(r0, t0, b1);
                    }
                }
            }
        } else {
            for r0 in (0..rows).step_by(R) {
                for t0 in (b0..b1).step_by(T) {
                    run(r0, t0, b1);
                }
            }
        }
    }
}

/// `out[r]` = the dot product of row `r` of `w` (`ES` bytes per element, rows of `rb` bytes)
/// with the f32 row `act` (cut to the row's elements), `R` rows at a time through `tile` (see
/// [`gemm_tiles`]). The rows of a group are `⌊rows / R⌋` apart: R long sequential streams,
/// which the hardware prefetchers follow (see `simd_common::strided_groups`); the rows left
/// over go one at a time (a tile repeating that row).
#[inline(always)]
pub(crate) fn rows_tiles<const ES: usize, const R: usize>(
    rb: usize,
    w: &[u8],
    act: &[u8],
    out: &mut [f32],
    mut tile: impl FnMut([&[u8]; R], [&[u8]; 1]) -> [[f32; 1]; R],
) {
    let rb = rb.max(1);
    let act = &act[..(rb / ES * 4).min(act.len())];
    let rows = out.len().min(w.len() / rb);
    let s = rows / R;
    let row = |r: usize| &w[r * rb..(r + 1) * rb];
    for g in 0..s {
        let dots = tile(std::array::from_fn(|k| row(g + k * s)), [act]);
        for (k, d) in dots.iter().enumerate() {
            out[g + k * s] = d[0];
        }
    }
    for (r, o) in out.iter_mut().enumerate().take(rows).skip(R * s) {
        *o = tile([row(r); R], [act])[0][0];
    }
}

#[inline(always)]
fn f32_at(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline(always)]
fn u16_at(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

pub(crate) fn dequantize_f32(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *y = f32_at(b);
    }
}

pub(crate) fn dequantize_f16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = f16_bits_to_f32(u16_at(b));
    }
}

pub(crate) fn dequantize_bf16(src: &[u8], dst: &mut [f32]) {
    for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *y = bf16_bits_to_f32(u16_at(b));
    }
}

pub(crate) fn quantize_f32(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(4)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

pub(crate) fn quantize_f16(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_f16_bits(*x).to_le_bytes());
    }
}

pub(crate) fn quantize_bf16(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16_bits(*x).to_le_bytes());
    }
}

/// Lanes of the float dot products' canonical chain. Every build computes
/// `acc[i mod LANES] = fma(w[i], x[i], acc[i mod LANES])` for the elements in order (the tail
/// continuing the same lanes), then [`reduce_lanes`] adds the lanes pairwise. One f32 fma chain
/// per lane is what a vector register does natively (16 lanes: one AVX-512 register, two AVX2,
/// four NEON), so every build returns these bits at full speed and the matrix kernels (one chain
/// per weight row and activation row) agree with the row kernels. (ggml's scalar reference sums
/// in f64; its SIMD paths, like this, in f32 lanes with fma.)
pub(crate) const LANES: usize = 16;

/// The sum of the lanes: lane `l` + lane `l + 8`, then `+ 4`, `+ 2`, `+ 1` (a vector register's
/// halving reduction, done here in scalar so every build shares it).
#[inline(always)]
fn reduce_lanes(acc: [f32; LANES]) -> f32 {
    let s8: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l + 8]);
    let s4: [f32; 4] = std::array::from_fn(|l| s8[l] + s8[l + 4]);
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// Σ w[i]·x[i] for a row of `act.len() / 4` elements, `ES` bytes per weight element decoded by
/// `load`: the canonical chain (see [`LANES`]) from zeroed lanes.
#[inline(always)]
fn dot_lanes<const ES: usize>(w: &[u8], act: &[u8], load: impl Fn(&[u8]) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let wc = w.chunks_exact(ES * LANES);
    let ac = act.chunks_exact(4 * LANES);
    let (wt, at) = (wc.remainder(), ac.remainder());
    for (wb, ab) in wc.zip(ac) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = load(&wb[ES * l..ES * l + ES]).mul_add(f32_at(&ab[4 * l..4 * l + 4]), *a);
        }
    }
    finish_lanes::<ES>(acc, wt, at, load)
}

/// The end of the canonical chain, shared by every build: the tail elements (fewer than
/// [`LANES`], `ES` bytes each in `wt`, f32 in `at`) continue lanes 0.., then the lanes are
/// reduced.
#[inline(always)]
fn finish_lanes<const ES: usize>(
    mut acc: [f32; LANES],
    wt: &[u8],
    at: &[u8],
    load: impl Fn(&[u8]) -> f32,
) -> f32 {
    for (a, (wb, ab)) in acc
        .iter_mut()
        .zip(wt.chunks_exact(ES).zip(at.chunks_exact(4)))
    {
        *a = load(wb).mul_add(f32_at(ab), *a);
    }
    reduce_lanes(acc)
}

/// [`finish_lanes`] for weight encoding `E` (see [`E_F32`]), for the SIMD builds' tails.
#[inline(always)]
pub(crate) fn finish_elem<const E: u8>(acc: [f32; LANES], wt: &[u8], at: &[u8]) -> f32 {
    match E {
        E_F32 => finish_lanes::<4>(acc, wt, at, f32_at),
        E_F16 => finish_lanes::<2>(acc, wt, at, |b| f16_bits_to_f32(u16_at(b))),
        _ => finish_lanes::<2>(acc, wt, at, |b| bf16_bits_to_f32(u16_at(b))),
    }
}

#[inline(always)]
pub(crate) fn vec_dot_f32(w: &[u8], act: &[u8]) -> f32 {
    dot_lanes::<4>(w, act, f32_at)
}

#[inline(always)]
pub(crate) fn vec_dot_f16(w: &[u8], act: &[u8]) -> f32 {
    dot_lanes::<2>(w, act, |b| f16_bits_to_f32(u16_at(b)))
}

#[inline(always)]
pub(crate) fn vec_dot_bf16(w: &[u8], act: &[u8]) -> f32 {
    dot_lanes::<2>(w, act, |b| bf16_bits_to_f32(u16_at(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::XorShift;
    use half::{bf16, f16};

    #[test]
    fn f16_to_f32_matches_half_for_all_bit_patterns() {
        for h in 0..=u16::MAX {
            let ours = f16_bits_to_f32(h);
            let theirs = f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
        }
    }

    /// f32 inputs that exercise every rounding path: random bit patterns, halfway cases, the
    /// f16 overflow/underflow edges and the specials.
    fn f32_probes() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65519.99,
            65520.0,
            1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            5.960_464_5e-8, // smallest f16 subnormal
            2.980_232_2e-8, // half of it: ties to even → 0
            2.980_233e-8,
            6.097_555_e-5,      // largest f16 subnormal
            1.0 + 1.0 / 2048.0, // tie between 1.0 and the next f16 → even (1.0)
            1.0 + 3.0 / 2048.0, // tie → even (upwards)
            1.0 + 1.0 / 256.0,  // bf16 tie → 1.0
            1.0 + 3.0 / 256.0,
        ];
        let mut rng = XorShift::new(7);
        for _ in 0..200_000 {
            v.push(f32::from_bits(rng.next_u32()));
        }
        v
    }

    #[test]
    fn f32_to_f16_matches_half_round_to_nearest_even() {
        for x in f32_probes() {
            let ours = f32_to_f16_bits(x);
            if x.is_nan() {
                assert_eq!(ours & 0x7fff, 0x7E00, "{x}");
            } else {
                assert_eq!(
                    ours,
                    f16::from_f32(x).to_bits(),
                    "{x:e} ({:#010x})",
                    x.to_bits()
                );
            }
        }
    }

    #[test]
    fn f32_to_bf16_matches_half_round_to_nearest_even() {
        for x in f32_probes() {
            let ours = f32_to_bf16_bits(x);
            assert_eq!(
                ours,
                bf16::from_f32(x).to_bits(),
                "{x:e} ({:#010x})",
                x.to_bits()
            );
            let back = bf16_bits_to_f32(ours);
            if !x.is_nan() {
                assert_eq!(back.to_bits(), bf16::from_bits(ours).to_f32().to_bits());
            }
        }
    }

    #[test]
    fn known_float_rows() {
        // F16 0x3C00 = 1.0, 0xC000 = -2.0, 0x0001 = 2^-24, 0x7BFF = 65504; BF16 0x3F80 = 1.0,
        // 0xC040 = -3.0.
        let mut y = [0f32; 4];
        dequantize_f16(&[0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0xFF, 0x7B], &mut y);
        assert_eq!(y, [1.0, -2.0, 2f32.powi(-24), 65504.0]);
        let mut y = [0f32; 2];
        dequantize_bf16(&[0x80, 0x3F, 0x40, 0xC0], &mut y);
        assert_eq!(y, [1.0, -3.0]);
        let mut b = [0u8; 4];
        quantize_bf16(&[1.0, -3.0], &mut b);
        assert_eq!(b, [0x80, 0x3F, 0x40, 0xC0]);
        quantize_f16(&[1.0, -2.0], &mut b);
        assert_eq!(b, [0x00, 0x3C, 0x00, 0xC0]);
    }

    #[test]
    fn float_dot_handles_tails() {
        // 19 elements: one full group of 16 lanes and a tail of 3.
        let w: Vec<f32> = (0..19).map(|i| i as f32 - 5.0).collect();
        let x: Vec<f32> = (0..19).map(|i| 0.5 * i as f32).collect();
        let want: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        let mut wb = vec![0u8; 76];
        let mut xb = vec![0u8; 76];
        quantize_f32(&w, &mut wb);
        quantize_f32(&x, &mut xb);
        assert_eq!(vec_dot_f32(&wb, &xb), want);
        let mut wh = vec![0u8; 38];
        quantize_f16(&w, &mut wh);
        assert_eq!(vec_dot_f16(&wh, &xb), want);
        quantize_bf16(&w, &mut wh);
        assert_eq!(vec_dot_bf16(&wh, &xb), want);
    }
}
