//! Cross-cutting tests of the quant module: sizes, round trips, dot products, dispatch.

/// A tiny deterministic generator (xorshift32) so the tests need no `rand`.
pub(crate) struct XorShift(u32);

impl XorShift {
    pub fn new(seed: u32) -> Self {
        XorShift(seed.max(1))
    }

    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

use super::*;
use crate::gguf::QK_K;

impl XorShift {
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// Roughly standard normal (Irwin–Hall with 4 terms, rescaled).
    pub fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * 3f32.sqrt()
    }
}

/// Test data with the shapes real tensors have: mostly normal values at a per-256 scale that varies
/// over six orders of magnitude, some outliers, and the corner cases every quantizer must survive
/// (all zero, constant, all positive, a single spike).
fn test_row(seed: u32, n: usize) -> Vec<f32> {
    let mut rng = XorShift::new(seed);
    let mut x = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(QK_K) {
        let scale = 10f32.powf(rng.uniform() * 6.0 - 3.0);
        let len = QK_K.min(n - chunk * QK_K);
        let kind = if n >= 4 * QK_K { chunk % 8 } else { 0 };
        for i in 0..len {
            let v = match kind {
                1 => 0.0,
                2 => scale,
                3 => scale * rng.uniform(),
                4 if i == 77 => scale * 50.0,
                4 => 0.0,
                5 if i % 37 == 0 => scale * 20.0 * rng.normal(),
                _ => scale * rng.normal(),
            };
            x.push(v);
        }
    }
    x
}

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

fn dequantize(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n];
    dequantize_row(ty, q, &mut y).unwrap();
    y
}

/// Largest |x| of each `bs`-element block, repeated per element.
fn block_amax(x: &[f32], bs: usize) -> Vec<f32> {
    x.chunks(bs)
        .flat_map(|b| {
            let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            std::iter::repeat_n(m, b.len())
        })
        .collect()
}

/// Half a unit in the last place of the smallest f16 subnormal: the absolute error an f16 scale
/// field can carry however small the block, on top of its 2^-11 relative error.
const F16_ABS: f32 = 1.0 / (1u32 << 25) as f32;

/// Round-trip error bounds: |x − deq(q(x))| <= rel·amax + abs·F16_ABS where amax is the block's
/// (K-quants: the super-block's) largest magnitude, and the RMS error over all blocks, each error
/// taken relative to its block's amax, stays below `rms`.
///
/// For the 32-element formats `rel` is the worst case worked out from the format plus the f16
/// rounding of `d` (e.g. Q4_0: `d = amax/8` and the far end of the range clamps from q = 16 to 15,
/// an error of one step, 1/8, plus 8·2^-11 for d's rounding); `abs` is the largest multiplier of
/// `d` (and `m`). For the K-quants, whose ggml search has no closed-form bound, `rel` and `rms`
/// are the worst seen on this data plus about 10%.
fn round_trip_bound(ty: GgmlType) -> (f32, f32, f32) {
    use GgmlType::*;
    let e = 1.0 / 2048.0; // f16 relative rounding
    match ty {
        Q4_0 => (1.0 / 8.0 + 8.0 * e / 8.0, 8.0, 0.06),
        Q4_1 => (1.0 / 15.0 + 3.0 * e, 16.0, 0.05),
        Q5_0 => (1.0 / 16.0 + 16.0 * e / 16.0, 16.0, 0.03),
        Q5_1 => (1.0 / 31.0 + 3.0 * e, 32.0, 0.024),
        Q8_0 | Q8_1 => (1.0 / 254.0 + e, 127.0, 0.004),
        Q8_K => (1.0 / 254.0 * (1.0 + 1e-6), 0.0, 0.004),
        Q2_K => (0.45, 60.0, 0.17),
        Q3_K => (0.21, 128.0, 0.095),
        Q4_K => (0.076, 1008.0, 0.041),
        Q5_K => (0.037, 2016.0, 0.021),
        Q6_K => (0.018, 4096.0, 0.012),
        F32 | F16 | BF16 => unreachable!("checked exactly"),
    }
}

#[test]
fn round_trip_quantized_types_within_bounds() {
    for ty in GgmlType::ALL.into_iter().filter(|t| t.is_quantized()) {
        let n = 16 * QK_K;
        let x = test_row(11, n);
        let y = dequantize(ty, &quantize(ty, &x), n);
        let amax = block_amax(&x, ty.block_size());
        let (rel, abs, rms) = round_trip_bound(ty);
        let mut se = 0f64;
        for i in 0..n {
            let err = (x[i] - y[i]).abs();
            let bound = rel * amax[i] + abs * F16_ABS;
            assert!(
                err <= bound,
                "{ty}: x[{i}] = {}, got {}, error {err} > {bound}",
                x[i],
                y[i]
            );
            if amax[i] > 0.0 {
                se += (err as f64 / amax[i] as f64).powi(2);
            }
        }
        let rmse = (se / n as f64).sqrt();
        assert!(
            rmse <= rms as f64,
            "{ty}: relative RMS error {rmse} > {rms}"
        );
    }
}

#[test]
fn round_trip_float_types_match_half() {
    let x = test_row(5, 4096);
    assert_eq!(
        dequantize(GgmlType::F32, &quantize(GgmlType::F32, &x), x.len()),
        x
    );
    let y = dequantize(GgmlType::F16, &quantize(GgmlType::F16, &x), x.len());
    for (a, b) in x.iter().zip(&y) {
        assert_eq!(half::f16::from_f32(*a).to_f32().to_bits(), b.to_bits());
    }
    let y = dequantize(GgmlType::BF16, &quantize(GgmlType::BF16, &x), x.len());
    for (a, b) in x.iter().zip(&y) {
        assert_eq!(half::bf16::from_f32(*a).to_f32().to_bits(), b.to_bits());
    }
}

#[test]
fn q8_0_round_trip_is_nearly_exact_on_representable_values() {
    // Integers −127..=127 with amax 127: d = 1 exactly, so every value survives.
    let x: Vec<f32> = (0..256).map(|i| ((i * 37) % 255) as f32 - 127.0).collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8_K] {
        let mut x = x.clone();
        for b in x.chunks_mut(32) {
            b[0] = 127.0; // every 32-block reaches 127
        }
        assert_eq!(dequantize(ty, &quantize(ty, &x), x.len()), x, "{ty}");
    }
}

#[test]
fn all_zero_rows_stay_zero() {
    let x = vec![0f32; 2 * QK_K];
    for ty in GgmlType::ALL {
        let y = dequantize(ty, &quantize(ty, &x), x.len());
        assert!(y.iter().all(|v| *v == 0.0), "{ty}");
    }
}

#[test]
fn block_structs_match_type_sizes() {
    use std::mem::size_of;
    fn check<B: Block>() {
        assert_eq!(size_of::<B>(), B::TYPE.type_size(), "{}", B::TYPE);
    }
    check::<q4::BlockQ4_0>();
    check::<q4::BlockQ4_1>();
    check::<q5::BlockQ5_0>();
    check::<q5::BlockQ5_1>();
    check::<q8::BlockQ8_0>();
    check::<q8::BlockQ8_1>();
    check::<q8::BlockQ8K>();
    check::<k_quants::BlockQ2K>();
    check::<k_quants::BlockQ3K>();
    check::<k_quants::BlockQ4K>();
    check::<k_quants::BlockQ5K>();
    check::<k_quants::BlockQ6K>();
}

#[test]
fn wrong_sizes_are_errors_not_panics() {
    for ty in GgmlType::ALL {
        let n = 2 * QK_K;
        let bytes = ty.row_bytes(n).unwrap();
        let mut y = vec![0f32; n];
        let q = vec![0u8; bytes + 1];
        for src in [&q[..bytes - 1], &q[..]] {
            assert!(matches!(
                dequantize_row(ty, src, &mut y),
                Err(Error::InvalidArgument(_))
            ));
        }
        let mut q = vec![0u8; bytes - 1];
        assert!(matches!(
            quantize_row(ty, &y, &mut q),
            Err(Error::InvalidArgument(_))
        ));
        if ty.block_size() > 1 {
            // n not a multiple of the block size
            let mut y = vec![0f32; n - 1];
            assert!(dequantize_row(ty, &q, &mut y).is_err());
            assert!(quantize_row(ty, &y, &mut q).is_err());
        }
    }
}

#[test]
#[cfg_attr(debug_assertions, should_panic(expected = "vec_dot"))]
fn vec_dot_on_short_input_returns_zero() {
    let w = vec![0u8; 10];
    assert_eq!(vec_dot(GgmlType::Q4_0, 64, &w, &w), 0.0);
}

#[test]
fn quantize_activation_reuses_the_buffer() {
    let x = test_row(3, 4096);
    let mut buf = Vec::with_capacity(16 * 1024);
    let ptr = buf.as_ptr();
    for ty in GgmlType::ALL {
        quantize_activation(ty, &x, &mut buf);
        let at = vec_dot_type(ty);
        assert_eq!(buf.len(), at.row_bytes(x.len()).unwrap());
        assert_eq!(buf, quantize(at, &x), "{ty}");
        assert_eq!(buf.as_ptr(), ptr, "{ty}: reallocated");
    }
}

#[test]
fn vec_dot_types_are_ggmls() {
    use GgmlType::*;
    for (w, a) in [
        (F32, F32),
        (F16, F32),
        (BF16, F32),
        (Q4_0, Q8_0),
        (Q5_0, Q8_0),
        (Q8_0, Q8_0),
        (Q4_1, Q8_1),
        (Q5_1, Q8_1),
        (Q2_K, Q8_K),
        (Q3_K, Q8_K),
        (Q4_K, Q8_K),
        (Q5_K, Q8_K),
        (Q6_K, Q8_K),
        (Q8_K, Q8_K),
    ] {
        assert_eq!(vec_dot_type(w), a);
    }
}

/// Row lengths to test a type at: a single block up to a 4096-wide row.
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![1, 7, 32, 100, 4096],
        32 => vec![32, 96, 256, 4096],
        _ => vec![256, 768, 4096],
    }
}

/// vec_dot(w, q8(x)) against the f64 dot of the dequantized rows.
///
/// Against deq(w)·deq(q8(x)) the math is the same up to f32 rounding (and, for Q4_1/Q5_1, the
/// f16 rounding of Q8_1's `s`), so the difference stays within 1e-5 of Σ|w||x|. Against deq(w)·x
/// the activations' own rounding adds at most Σ|w_i|·(half a step of x's block) — that step being
/// amax/127 of the 32- or 256-element block (plus f16 rounding of Q8_0/Q8_1's `d`).
#[test]
fn vec_dot_matches_dequantized_dot() {
    for ty in GgmlType::ALL {
        let at = vec_dot_type(ty);
        for n in lengths(ty) {
            let w = quantize(ty, &test_row(100 + n as u32, n));
            let x = test_row(200 + n as u32, n);
            let mut a = Vec::new();
            quantize_activation(ty, &x, &mut a);
            let got = vec_dot(ty, n, &w, &a) as f64;

            let wd = dequantize(ty, &w, n);
            let ad = dequantize(at, &a, n);
            let exact: f64 = wd.iter().zip(&ad).map(|(p, q)| *p as f64 * *q as f64).sum();
            let mag: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(p, q)| (*p as f64 * *q as f64).abs())
                .sum();
            let mut tol = 1e-5 * mag + 1e-30;
            if at == GgmlType::Q8_1 {
                // m·s uses s = fp16(d·Σq) rather than the exact d·Σq.
                for (wb, xb) in w.chunks(ty.type_size()).zip(a.chunks(at.type_size())) {
                    let m = f16_to_f32([wb[2], wb[3]]) as f64;
                    let s = f16_to_f32([xb[2], xb[3]]) as f64;
                    tol += (m * s).abs() / 2048.0 + m.abs() * F16_ABS as f64;
                }
            }
            assert!(
                (got - exact).abs() <= tol,
                "{ty} n={n}: vec_dot {got} vs dequantized {exact} (tol {tol})"
            );

            let vs_f32: f64 = wd.iter().zip(&x).map(|(p, q)| *p as f64 * *q as f64).sum();
            let bs = at.block_size().max(1);
            let step = if at == GgmlType::F32 {
                vec![0f32; n]
            } else {
                let e = if at == GgmlType::Q8_K {
                    0.0
                } else {
                    1.0 / 2048.0
                };
                block_amax(&x, bs)
                    .iter()
                    .map(|m| m / 254.0 + m * e + 127.0 * F16_ABS)
                    .collect()
            };
            let act_tol: f64 = wd
                .iter()
                .zip(&step)
                .map(|(p, s)| (*p as f64 * *s as f64).abs())
                .sum();
            assert!(
                (got - vs_f32).abs() <= tol + act_tol,
                "{ty} n={n}: vec_dot {got} vs f32 dot {vs_f32} (tol {})",
                tol + act_tol
            );
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Bit-exactness with ggml, pinned: FNV-1a hashes of the bytes ggml's own `quantize_row_*_ref`
/// produces for `test_row(2024, 4096)`, as printed by `tests/ggml_oracle` (which also compares our
/// bytes with ggml's directly, on more data). Regenerate them with the oracle, never by hand.
#[test]
fn quantizer_goldens_match_ggml() {
    use GgmlType::*;
    let goldens = [
        (F16, 0x61a4_f8bd_4bda_5a7f_u64),
        (BF16, 0x1cf4_da01_4bf9_d9b6),
        (Q4_0, 0xb6a7_736f_5565_dd60),
        (Q4_1, 0xbbdb_c7ad_7b90_ec5e),
        (Q5_0, 0xaae7_fb59_e1dc_70df),
        (Q5_1, 0xd926_73fb_2a0a_cd3c),
        (Q8_0, 0xd986_92cc_1843_003a),
        (Q8_1, 0xb98b_5884_c3c8_e8cc),
        (Q8_K, 0xd161_d143_5e06_e801),
        (Q2_K, 0x6824_9e8b_c1de_670c),
        (Q3_K, 0x2154_bf0f_2a66_5db2),
        (Q4_K, 0xb7a8_58e6_d9ce_9811),
        (Q5_K, 0x95e2_e5e9_00fa_79d2),
        (Q6_K, 0xc700_64f7_fa7d_abee),
    ];
    let x = test_row(2024, 4096);
    for (ty, want) in goldens {
        assert_eq!(
            fnv1a(&quantize(ty, &x)),
            want,
            "{ty}: bytes differ from ggml's"
        );
    }
}
