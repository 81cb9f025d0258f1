//! Parity of every SIMD build of the kernels (see `dispatch`) with the scalar reference, for every
//! type, on seeded random data and on rows of one block, many blocks and odd block counts.
//!
//! - Quantizers (Q8_0, Q8_1, Q8_K activations): identical bytes, NaN/inf/ties/zero blocks included.
//! - F32/F16/BF16 dots: identical bits.
//! - Quantized dots, exactness: with unit scales every term is an integer, and with sparse
//!   activations (16 non-zero values per row, in adjacent pairs, from the extremes −128/−127/127
//!   and random bytes) every partial sum stays below 2^24, so any order of f32 additions is exact:
//!   both builds must return exactly Σ w·a, whatever the weight bytes.
//! - Quantized dots, tolerance: on dense data (realistic quantized rows, and random bytes with
//!   random scales) the builds may add their per-block f32 terms in different orders; each does
//!   at most `blocks + 24` rounded operations on partial sums bounded by
//!   `S = Σ_i (|w_i| + 2|min_i|)·|a_i|`, so they must agree within `2·(blocks + 24)·2⁻²⁴·S`.
//!
//! Builds the CPU cannot run are skipped with a message on stderr.

use super::dispatch::{self, Kernels};
use super::tests::XorShift;
use super::{dequantize_row, f32_to_f16, quantize_row, quantize_row_scalar, vec_dot_type};
use crate::gguf::{GgmlType, QK_K};

use GgmlType::*;

/// Every weight type `vec_dot` accepts.
pub(super) const WEIGHT_TYPES: [GgmlType; 15] = [
    F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q8_K, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
];

/// The SIMD builds this CPU runs (all but the scalar reference), announcing a skip when none.
fn simd_builds(test: &str) -> Vec<&'static Kernels> {
    let v: Vec<_> = dispatch::all().into_iter().skip(1).collect();
    if v.is_empty() {
        eprintln!("SKIP {test}: this CPU runs no SIMD build of the quant kernels");
    } else {
        let names: Vec<_> = v.iter().map(|k| k.name).collect();
        eprintln!("{test}: testing {} against scalar", names.join(", "));
    }
    v
}

pub(super) struct Rng(XorShift);

impl Rng {
    pub(super) fn new(seed: u32) -> Self {
        Rng(XorShift::new(seed))
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        ((self.0.next_u32() as u64 * n as u64) >> 32) as usize
    }
    pub(super) fn byte(&mut self) -> u8 {
        (self.0.next_u32() >> 24) as u8
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }
    /// Roughly normal, scale 1, with an occasional outlier ×20 (activations have those).
    fn value(&mut self) -> f32 {
        let g = self.unit() + self.unit() + self.unit() + self.unit() - 2.0;
        if self.below(64) == 0 {
            20.0 * g
        } else {
            g
        }
    }
    /// A block scale: random sign, magnitude 2^-12..2^0.
    fn scale(&mut self) -> f32 {
        let m = (-12.0 * self.unit()).exp2() * (1.0 + self.unit());
        if self.below(2) == 0 {
            m
        } else {
            -m
        }
    }
    pub(super) fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }
}

/// Row lengths to test for a type: one block, a few, the odd block counts of Qwen's shapes
/// (896 = 28·32, 4864 = 19·256) and a 4096-wide row; float types also get tails.
fn lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![1, 7, 8, 13, 32, 896, 4099],
        32 => vec![32, 64, 96, 896, 4096, 4864],
        _ => vec![256, 512, 768, 1536, 4864],
    }
}

/// Byte offsets, inside a block, of the f16 fields holding the scale `d` and the minimum (`m`,
/// `dmin`; for a Q8_1 weight its unused `s`).
fn f16_fields(ty: GgmlType) -> (&'static [usize], &'static [usize]) {
    match ty {
        Q4_0 | Q5_0 | Q8_0 => (&[0], &[]),
        Q4_1 | Q5_1 | Q8_1 | Q4_K | Q5_K => (&[0], &[2]),
        Q2_K => (&[80], &[82]),
        Q3_K => (&[108], &[]),
        Q6_K => (&[208], &[]),
        _ => (&[], &[]),
    }
}

/// A weight row of random bytes (every quant bit pattern) whose scale fields are replaced by
/// finite values: 1.0 when `unit`, else random scales.
pub(super) fn raw_weights(ty: GgmlType, n: usize, rng: &mut Rng, unit: bool) -> Vec<u8> {
    let mut v: Vec<u8> = (0..ty.row_bytes(n).unwrap()).map(|_| rng.byte()).collect();
    for b in v.chunks_exact_mut(ty.type_size()) {
        if ty == Q8_K {
            let d = if unit { 1.0 } else { rng.scale() };
            b[..4].copy_from_slice(&d.to_le_bytes());
        }
        let (d, m) = f16_fields(ty);
        for &o in d.iter().chain(m) {
            let s = if unit { 1.0 } else { rng.scale() };
            b[o..o + 2].copy_from_slice(&f32_to_f16(s));
        }
    }
    v
}

/// Weights from random values through the reference quantizer (float types: just encoded).
pub(super) fn real_weights(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = vec![0u8; ty.row_bytes(n).unwrap()];
    quantize_row_scalar(ty, &rng.values(n), &mut v).unwrap();
    v
}

/// Activations from random values through the reference quantizer of `vec_dot_type(ty)`.
pub(super) fn real_activations(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
    let at = vec_dot_type(ty);
    let mut v = vec![0u8; at.row_bytes(n).unwrap()];
    quantize_row_scalar(at, &rng.values(n), &mut v).unwrap();
    v
}

/// Activations in `vec_dot_type(ty)` (quantized types only) built from chosen i8 quants, with a
/// consistent `s` (Q8_1) and `bsums` (Q8_K); scale 1 when `unit`, else random.
pub(super) fn activations_from_quants(
    ty: GgmlType,
    q: &[i8],
    rng: &mut Rng,
    unit: bool,
) -> Vec<u8> {
    let at = vec_dot_type(ty);
    let mut out = Vec::with_capacity(at.row_bytes(q.len()).unwrap());
    for q in q.chunks_exact(at.block_size()) {
        let d = if unit { 1.0 } else { rng.scale() };
        let sum: i32 = q.iter().map(|&v| v as i32).sum();
        match at {
            Q8_0 => out.extend(f32_to_f16(d)),
            Q8_1 => {
                out.extend(f32_to_f16(d));
                out.extend(f32_to_f16(sum as f32 * d));
            }
            Q8_K => out.extend(d.to_le_bytes()),
            _ => unreachable!("{at} is not a quantized activation format"),
        }
        out.extend(q.iter().map(|&v| v as u8));
        if at == Q8_K {
            for s in q.chunks_exact(16) {
                out.extend((s.iter().map(|&v| v as i32).sum::<i32>() as i16).to_le_bytes());
            }
        }
    }
    out
}

/// 16 non-zero quants in 8 adjacent pairs (so the pairwise `maddubs` sums see two extremes at
/// once), drawn from −128, −127, 127 and random bytes.
pub(super) fn sparse_quants(n: usize, rng: &mut Rng) -> Vec<i8> {
    let mut q = vec![0i8; n];
    for _ in 0..8.min(n / 2) {
        let i = 2 * rng.below(n / 2);
        for v in &mut q[i..i + 2] {
            *v = match rng.below(4) {
                0 => -128,
                1 => -127,
                2 => 127,
                _ => rng.byte() as i8,
            };
        }
    }
    q
}

fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    dequantize_row(ty, bytes, &mut v).unwrap();
    v
}

/// `(Σ w·a, S)` in f64 from the dequantized rows, where `S = Σ (|w| + 2|min|)·|a|` bounds every
/// partial sum either build forms (`min` is the weight's minimum term: the row dequantized with
/// its `d` fields zeroed).
fn exact_and_magnitude(ty: GgmlType, w: &[u8], a: &[u8], n: usize) -> (f64, f64) {
    let wf = dequant(ty, w, n);
    let af = dequant(vec_dot_type(ty), a, n);
    let mut wmin = w.to_vec();
    for b in wmin.chunks_exact_mut(ty.type_size()) {
        for &o in f16_fields(ty).0 {
            b[o..o + 2].fill(0);
        }
    }
    let mf = dequant(ty, &wmin, n);
    let mut dot = 0f64;
    let mut mag = 0f64;
    for i in 0..n {
        dot += wf[i] as f64 * af[i] as f64;
        mag += (wf[i].abs() as f64 + 2.0 * mf[i].abs() as f64) * af[i].abs() as f64;
    }
    (dot, mag)
}

fn dot(k: &Kernels, ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    k.vec_dot(ty, w, a)
}

#[test]
fn simd_dots_are_exact_on_integer_data() {
    for k in simd_builds("simd_dots_are_exact_on_integer_data") {
        let mut rng = Rng::new(0x5EED_0001);
        for ty in WEIGHT_TYPES.into_iter().filter(|t| t.block_size() > 1) {
            for n in lengths(ty) {
                for rep in 0..6 {
                    let w = raw_weights(ty, n, &mut rng, true);
                    let a =
                        activations_from_quants(ty, &sparse_quants(n, &mut rng), &mut rng, true);
                    let (exact, mag) = exact_and_magnitude(ty, &w, &a, n);
                    assert!(
                        mag < (1 << 24) as f64,
                        "{ty} n={n}: the fixture is not exact"
                    );
                    let scalar = dot(&dispatch::SCALAR, ty, &w, &a);
                    let simd = dot(k, ty, &w, &a);
                    assert_eq!(scalar as f64, exact, "scalar {ty} n={n} rep={rep}");
                    assert_eq!(simd as f64, exact, "{} {ty} n={n} rep={rep}", k.name);
                }
            }
        }
    }
}

#[test]
fn simd_dots_match_scalar_within_tolerance() {
    let mut worst = 0f64;
    for k in simd_builds("simd_dots_match_scalar_within_tolerance") {
        let mut rng = Rng::new(0x5EED_0002);
        for ty in WEIGHT_TYPES.into_iter().filter(|t| t.block_size() > 1) {
            for n in lengths(ty) {
                let nb = n / ty.block_size();
                for rep in 0..8 {
                    let (w, a) = match rep % 4 {
                        0 | 1 => (
                            real_weights(ty, n, &mut rng),
                            real_activations(ty, n, &mut rng),
                        ),
                        2 => (
                            raw_weights(ty, n, &mut rng, false),
                            real_activations(ty, n, &mut rng),
                        ),
                        _ => {
                            let q: Vec<i8> = (0..n).map(|_| rng.byte() as i8).collect();
                            let a = activations_from_quants(ty, &q, &mut rng, false);
                            (raw_weights(ty, n, &mut rng, false), a)
                        }
                    };
                    let (_, mag) = exact_and_magnitude(ty, &w, &a, n);
                    let scalar = dot(&dispatch::SCALAR, ty, &w, &a) as f64;
                    let simd = dot(k, ty, &w, &a) as f64;
                    let tol = 2.0 * (nb as f64 + 24.0) * (2f64).powi(-24) * mag;
                    let diff = (simd - scalar).abs();
                    assert!(
                        diff <= tol,
                        "{} {ty} n={n} rep={rep}: simd {simd} scalar {scalar} (diff {diff:e} > {tol:e})",
                        k.name
                    );
                    if mag > 0.0 {
                        worst = worst.max(diff / mag);
                    }
                }
            }
        }
    }
    eprintln!("largest |simd − scalar| / S over all quantized dots: {worst:e}");
}

#[test]
fn simd_float_dots_are_bit_identical() {
    for k in simd_builds("simd_float_dots_are_bit_identical") {
        let mut rng = Rng::new(0x5EED_0003);
        for ty in [F32, F16, BF16] {
            for n in lengths(ty) {
                for _ in 0..4 {
                    let w = real_weights(ty, n, &mut rng);
                    let a = real_activations(ty, n, &mut rng);
                    let scalar = dot(&dispatch::SCALAR, ty, &w, &a);
                    let simd = dot(k, ty, &w, &a);
                    assert_eq!(simd.to_bits(), scalar.to_bits(), "{} {ty} n={n}", k.name);
                }
            }
        }
    }
}

/// `vec_dot_rows` gives every row the same bits as `vec_dot` (the multi-row kernels keep each
/// row's operation order), in every build, for row counts around the 4-, 8- and 16-row groupings
/// (and 50: three 16-row groups of rows 3 apart, see `simd_common::strided_groups`, plus a tail).
#[test]
fn dot_rows_match_single_row_dots_bit_for_bit() {
    let mut rng = Rng::new(0x5EED_0006);
    for k in dispatch::all() {
        for ty in WEIGHT_TYPES {
            for n in [
                ty.block_size() * 3,
                if ty.block_size() == QK_K { 1536 } else { 896 },
            ] {
                let rb = ty.row_bytes(n).unwrap();
                for rows in [1, 3, 4, 5, 8, 11, 16, 19, 35, 50] {
                    let w: Vec<u8> = (0..rows)
                        .flat_map(|_| real_weights(ty, n, &mut rng))
                        .collect();
                    let a = real_activations(ty, n, &mut rng);
                    let mut out = vec![f32::NAN; rows];
                    k.vec_dot_rows(ty, rb, &w, &a, &mut out);
                    for (r, got) in out.iter().enumerate() {
                        let want = k.vec_dot(ty, &w[r * rb..(r + 1) * rb], &a);
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{} {ty} n={n} row {r}/{rows}",
                            k.name
                        );
                    }
                }
            }
        }
    }
    // The public entry point, on the selected build.
    let (ty, n) = (Q8_0, 896);
    let w: Vec<u8> = (0..6).flat_map(|_| real_weights(ty, n, &mut rng)).collect();
    let a = real_activations(ty, n, &mut rng);
    let mut out = [0f32; 6];
    super::vec_dot_rows(ty, n, &w, &a, &mut out);
    let rb = ty.row_bytes(n).unwrap();
    for (r, got) in out.iter().enumerate() {
        assert_eq!(
            got.to_bits(),
            super::vec_dot(ty, n, &w[r * rb..], &a).to_bits()
        );
    }
}

/// Rows that stress the activation quantizers: ordinary values, outliers, exact halfway cases
/// (blocks whose scale comes out as exactly 1), all-zero blocks, ties between +max and −max,
/// tiny and huge magnitudes, −0.0, ±inf and NaN.
fn quantizer_inputs(n: usize, block: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    let mut rows = vec![rng.values(n), (0..n).map(|_| 1e-3 * rng.value()).collect()];
    // Halfway cases: |max| = 127 gives d = 1 (Q8_0/Q8_1: amax/127) and iscale = 1 (Q8_K: the
    // max is negative), so x = k + 0.5 is a tie that Q8_0 rounds away from zero and Q8_K to even.
    let mut ties: Vec<f32> = (0..n)
        .map(|_| (rng.below(254) as f32 - 127.0) + 0.5)
        .collect();
    for b in ties.chunks_exact_mut(block) {
        b[rng.below(block)] = -127.0;
    }
    rows.push(ties);
    let mut special = rng.values(n);
    let first_blocks = n / block;
    for (i, b) in special.chunks_exact_mut(block).enumerate() {
        match i % 8 {
            0 => b.fill(0.0),
            1 => {
                let j = rng.below(block);
                b[j] = 50.0;
                b[(j + 1 + rng.below(block - 1)) % block] = -50.0;
            }
            2 => b[rng.below(block)] = f32::NAN,
            3 => {
                b[rng.below(block)] = if rng.below(2) == 0 {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                }
            }
            4 => b.iter_mut().for_each(|v| *v *= 1e-41),
            5 => b.iter_mut().for_each(|v| *v = -0.0),
            6 => b.iter_mut().for_each(|v| *v *= 1e37),
            _ => b.fill(f32::NAN),
        }
    }
    if first_blocks > 0 {
        rows.push(special);
    }
    rows
}

#[test]
fn simd_quantizers_write_identical_bytes() {
    for k in simd_builds("simd_quantizers_write_identical_bytes") {
        let mut rng = Rng::new(0x5EED_0004);
        for at in [Q8_0, Q8_1, Q8_K] {
            let lens: &[usize] = if at == Q8_K {
                &[256, 512, 1536, 4864]
            } else {
                &[32, 64, 96, 896, 4864]
            };
            for &n in lens {
                for _ in 0..4 {
                    for (r, x) in quantizer_inputs(n, at.block_size(), &mut rng)
                        .iter()
                        .enumerate()
                    {
                        let bytes = at.row_bytes(n).unwrap();
                        let mut want = vec![0xAAu8; bytes];
                        let mut got = vec![0x55u8; bytes];
                        assert!(dispatch::SCALAR.quantize_activation(at, x, &mut want));
                        assert!(k.quantize_activation(at, x, &mut got));
                        if let Some(i) = (0..bytes).find(|&i| want[i] != got[i]) {
                            let blk = i / at.type_size();
                            let bs = at.block_size();
                            panic!(
                                "{} {at} n={n} input {r}: byte {i} (block {blk}) differs: \
                                 scalar {:?} simd {:?}, inputs {:?}",
                                k.name,
                                &want[blk * at.type_size()..(blk + 1) * at.type_size()],
                                &got[blk * at.type_size()..(blk + 1) * at.type_size()],
                                &x[blk * bs..(blk + 1) * bs]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The public entry points go through the selected build and agree with the scalar ones.
#[test]
fn public_entry_points_use_the_selected_build() {
    eprintln!(
        "quant kernels selected for this CPU: {}",
        super::vec_dot_path()
    );
    let mut rng = Rng::new(0x5EED_0005);
    for ty in WEIGHT_TYPES {
        let n = if ty.block_size() == QK_K { 512 } else { 96 };
        let w = real_weights(ty, n, &mut rng);
        let x = rng.values(n);
        let at = vec_dot_type(ty);
        let mut a = vec![0u8; at.row_bytes(n).unwrap()];
        let mut a_ref = a.clone();
        quantize_row(at, &x, &mut a).unwrap();
        quantize_row_scalar(at, &x, &mut a_ref).unwrap();
        assert_eq!(a, a_ref, "quantize_row({at})");
        let got = super::vec_dot(ty, n, &w, &a);
        assert_eq!(
            got.to_bits(),
            dispatch::selected().vec_dot(ty, &w, &a).to_bits()
        );
        let (_, mag) = exact_and_magnitude(ty, &w, &a, n);
        let scalar = super::vec_dot_scalar(ty, n, &w, &a);
        assert!(
            (got as f64 - scalar as f64).abs() <= 1e-5 * mag,
            "{ty}: {got} vs {scalar}"
        );
    }
}

/// The AVX-512 build feeds each block's exact integer into the same per-row f32 chain as the
/// AVX2 build for Q4_K, Q6_K and Q5_0 (see `x86_avx512`), so the two must agree bit for bit, on
/// realistic rows and on raw random bytes with the extreme activations; skipped (with a line on
/// stderr) where the CPU lacks either build.
#[test]
fn avx512_matches_avx2_bit_for_bit() {
    let builds = dispatch::all();
    let find = |name: &str| builds.iter().copied().find(|k| k.name == name);
    let (Some(avx2), Some(avx512)) = (find("avx2"), find("avx512")) else {
        eprintln!("SKIP avx512_matches_avx2_bit_for_bit: this CPU lacks AVX-512 F/BW/VL/VNNI");
        return;
    };
    let mut rng = Rng::new(0x5EED_0512);
    for ty in [Q4_K, Q6_K, Q5_0] {
        for n in lengths(ty) {
            for rep in 0..6 {
                let w = if rep % 2 == 0 {
                    real_weights(ty, n, &mut rng)
                } else {
                    raw_weights(ty, n, &mut rng, false)
                };
                let a = match rep % 3 {
                    0 => real_activations(ty, n, &mut rng),
                    1 => activations_from_quants(ty, &sparse_quants(n, &mut rng), &mut rng, false),
                    _ => {
                        let q: Vec<i8> = (0..n).map(|_| rng.byte() as i8).collect();
                        activations_from_quants(ty, &q, &mut rng, false)
                    }
                };
                let (x, y) = (dot(avx2, ty, &w, &a), dot(avx512, ty, &w, &a));
                assert_eq!(x.to_bits(), y.to_bits(), "{ty} n={n} rep={rep}: {x} vs {y}");
            }
        }
    }
}
