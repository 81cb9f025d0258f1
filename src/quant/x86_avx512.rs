//! AVX-512 kernels (F + BW + VL + VNNI) for the hot types: one- and two-row kernels for Q2_K,
//! Q4_K, Q5_K and Q6_K, one- and eight-row Q8_0 and sixteen-row Q5_0 kernels, matrix kernels for
//! Q4_K, Q6_K and Q5_0, the float types (F32/F16/BF16, `float`: 512-bit fma tiles), and wider
//! tiles for AVX2's matrix kernel of Q8_0 (`gemm::tile_l32_bytes`, this build's Q8_0 bits), Q4_0,
//! Q4_1 and Q5_1 (`gemm::tile_l32`, AVX2's bits). Everything else runs the AVX2 build: Q3_K and
//! single Q5_0 rows (no faster with VNNI, measured), the matrix kernels of Q5_K and Q2_K (whose
//! float chains the row kernels here keep, so batched and single-sequence results stay
//! bit-identical), the other types and the activation quantizers. Every CPU with these AVX-512
//! subsets also has AVX2, FMA and F16C (`detected` checks all of them), so delegating is always
//! valid.
//!
//! On a CPU with AMX (Sapphire Rapids and later), `amx` runs the Q4_K, Q6_K and Q5_0 matrix
//! products on tile registers instead of VNNI, with the same block integers and float chains,
//! so the same bits (the `avx512-amx` build in `dispatch`).
//!
//! As in `x86_avx2`, every function is a safe `#[target_feature]` function that `dispatch` calls
//! only after `detected`; the only `unsafe` blocks are unaligned loads and stores through helpers
//! that check the slice length first.
//!
//! The integer work moves to VNNI: `vpdpbusd` (u8 × s8, four products summed into each i32 lane,
//! no saturation) takes the unsigned weight quants (0..=15, 0..=31, 0..=63) against the signed
//! activations, and `vpdpwssd` (i16 × i16 pairs into i32) applies the K-quants' sub-block scales.
//! All integer parts are exact (the bound is next to each use).
//!
//! The float part: for the K-quants and Q5_0 each block's exact integer enters the same per-row
//! f32 chain as in the AVX2 build (`acc = fma(d_w·d_a, float(block integer), acc)`, see
//! `x86_avx2::gemm`), so this build returns the same bits as the AVX2 one for them, and the
//! matrix kernels (its own or AVX2's) return the bits of its `vec_dot`. Q8_0 keeps AVX2's chain
//! of 8 lane integers per block, but its lanes are the four consecutive products `vpdpbusd`
//! sums (AVX2 widens to i16 and pairs other elements): the same block integers grouped
//! otherwise, so its results may differ from the AVX2 build's in the last bits. That made its
//! eight-row decode kernel about twice as fast in cache (`bench_dot`, rows GB/s 12.6 → 26.8)
//! and its matrix-vector products from DRAM a little closer to the read bandwidth
//! (`bench_matvec --threads 2`, three alternating runs: 0.78–0.80 → 0.83–0.97).

use std::arch::x86_64::*;

use super::k_quants::{BlockQ2K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::q5::BlockQ5_0;
use super::q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};

use super::simd_common::k4_scales_mins;
use super::x86_avx2::{self as avx2, f16_to_f32, hsum_epi32, hsum_ps, load128, load256, Byte};
use super::{as_blocks, block_bytes, GemmOut};
use crate::gguf::GgmlType;

pub(super) mod amx;
mod float;
pub(super) mod gemm;

/// Whether this CPU can run the kernels of this module (and the AVX2 ones they delegate to).
pub(super) fn detected() -> bool {
    avx2::detected()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

// ---------------------------------------------------------------------------------------------
// Loads and small helpers.

/// The first 64 bytes of `s`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn ld512<T: Byte>(s: &[T]) -> __m512i {
    assert!(s.len() >= 64);
    // SAFETY: `s` has at least 64 one-byte elements; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
}

/// The first 32 bytes of `s` in both 256-bit halves.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn bcast256<T: Byte>(s: &[T]) -> __m512i {
    _mm512_broadcast_i64x4(load256(s))
}

/// The sum of the 16 i32 lanes of `v`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn hsum512(v: __m512i) -> i32 {
    hsum_epi32(_mm256_add_epi32(
        _mm512_castsi512_si256(v),
        _mm512_extracti64x4_epi64::<1>(v),
    ))
}

/// Row `k` of a 16-row group whose block vector goes into the low (`false`) or high (`true`) 256
/// bits of pair vector `p` (0..8) for [`reduce16`]: `p` < 4 pairs rows `p` and `p + 4`, `p` ≥ 4
/// pairs rows `p + 4` and `p + 8`, so that the reduction's 128-bit lanes come out in row order.
const fn pair_row(p: usize, high: bool) -> usize {
    let base = if p < 4 { p } else { p + 4 };
    if high {
        base + 4
    } else {
        base
    }
}

/// Lane `r` = the sum of the 8 i32 lanes of row `r`'s 256-bit half of `z` (paired as in
/// [`pair_row`]). Exact: i32 additions of the callers' bounded sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn reduce16(z: &[__m512i; 8]) -> __m512i {
    let pair = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    };
    let quad = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
    };
    // Per 128-bit lane L of u0: [Σ z0, Σ z1, Σ z2, Σ z3] over the four elements of that lane.
    let u0 = quad(pair(z[0], z[1]), pair(z[2], z[3]));
    let u1 = quad(pair(z[4], z[5]), pair(z[6], z[7]));
    // u0's lanes hold elements 0..4 and 4..8 of rows 0..4, then of rows 4..8; u1's the same for
    // rows 8..12 and 12..16. Add each row group's two lanes, in row order.
    let a = _mm512_shuffle_i32x4::<0b10_00_10_00>(u0, u1);
    let b = _mm512_shuffle_i32x4::<0b11_01_11_01>(u0, u1);
    _mm512_add_epi32(a, b)
}

// ---------------------------------------------------------------------------------------------
// Entry points.

/// One weight row against its activations, both cut to exactly one row (see `quant::vec_dot`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    use GgmlType::*;
    match ty {
        Q4_K => dot_q4_k(as_blocks(w), as_blocks(act)),
        Q5_K => dot_q5_k(as_blocks(w), as_blocks(act)),
        Q6_K => dot_q6_k(as_blocks(w), as_blocks(act)),
        Q2_K => dot_q2_k(as_blocks(w), as_blocks(act)),
        F32 | F16 | BF16 => float::dot(ty, w, act),
        Q8_0 => dot_q8_0(as_blocks(w), as_blocks(act)),
        // Not specialised here: the AVX2 kernels (this CPU has AVX2, FMA and F16C). For a single
        // Q5_0 row they are as fast as a VNNI version (measured), and their float chain is the
        // one `dot16_q5_0` and the matrix kernel keep.
        _ => avx2::vec_dot(ty, w, act),
    }
}

/// `out[r]` = [`vec_dot`] of row `r` of `w` (rows of `rb` bytes back to back) against `act`, bit
/// for bit.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn vec_dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    use GgmlType::*;
    match ty {
        Q4_K => avx2::rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q4_k(r, a),
            |r, a| dot_q4_k(r, a),
        ),
        Q6_K => avx2::rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q6_k(r, a),
            |r, a| dot_q6_k(r, a),
        ),
        Q5_K => avx2::rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q5_k(r, a),
            |r, a| dot_q5_k(r, a),
        ),
        Q2_K => avx2::rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q2_k(r, a),
            |r, a| dot_q2_k(r, a),
        ),
        Q5_0 => avx2::rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot16_q5_0(r, a),
            |r, _| avx2::vec_dot(Q5_0, block_bytes(r), act),
        ),
        Q8_0 => avx2::rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot8_q8_0(r, a),
            |r, a| dot_q8_0(r, a),
        ),
        F32 | F16 | BF16 => float::dot_rows(ty, rb, w, act, out),
        // Not specialised here: the AVX2 kernels.
        _ => avx2::vec_dot_rows(ty, rb, w, act, out),
    }
}

/// The matrix product (see `Kernels::gemm`): the kernels of `gemm` for Q4_K, Q6_K and Q5_0
/// (with `AMX`, their AMX tiles: the same bits; only for a CPU where `amx::detected` holds), the
/// AVX2 ones (which exist for no other type this build specialises) otherwise.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm<const AMX: bool>(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    use GgmlType::*;
    match ty {
        Q4_K | Q6_K | Q5_0 => {
            let amx = AMX && amx::detected();
            gemm::gemm(ty, rb, w, qrb, act, arb, n_tok, out, amx)
        }
        F32 | F16 | BF16 => float::try_gemm(ty, rb, w, act, arb, n_tok, out),
        // AVX2's matrix kernel with this build's tiles: for Q8_0 `gemm::tile_l32_bytes`, which
        // keeps the bits of this build's Q8_0 row kernels; for the others (which run AVX2's
        // row kernels, above) `gemm::tile_l32`, which keeps AVX2's.
        Q8_0 | Q4_0 | Q4_1 | Q5_1 => {
            // SAFETY: this function's features are the ones `gemm_with` needs for WIDE.
            unsafe { avx2::gemm_with::<true>(ty, rb, w, qrb, act, arb, n_tok, out) }
        }
        // Every other type runs AVX2's row kernels (above), so AVX2's matrix kernels, which
        // give their bits, may run for them (Q5_K among them).
        _ => avx2::gemm(ty, rb, w, qrb, act, arb, n_tok, out),
    }
}

/// The AVX2 activation quantizers (no AVX-512 version: they are a small part of the work).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    avx2::quantize_q8_0(src, dst)
}

/// See [`quantize_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn quantize_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    avx2::quantize_q8_1(src, dst)
}

/// See [`quantize_q8_0`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn quantize_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    avx2::quantize_q8_k(src, dst)
}

// ---------------------------------------------------------------------------------------------
// Row drivers.

// ---------------------------------------------------------------------------------------------
// Q4_K.

/// Elements `64c..64c+64` of a Q4_K block as quants 0..=15: the low nibbles of `qs[32c..32c+32]`
/// then their high nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q4k_quants64(x: &BlockQ4K, c: usize) -> __m512i {
    let q = bcast256(&x.qs[32 * c..]);
    let q = _mm512_srlv_epi64(q, _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4));
    _mm512_and_si512(q, _mm512_set1_epi8(0x0F))
}

/// The activation block's 8 sub-block sums (of 32 activations each) as i16 lanes 0..8: |bsum|
/// ≤ 16·128, so the pairwise sums of `y.bsums` fit i16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q8k_sums_of_32(y: &BlockQ8K) -> __m128i {
    let b = load256(y.bsums.as_flattened());
    _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b))
}

/// Elements `64c..64c+64` of a Q5_K block as quants 0..=31: Q4_K's nibbles plus the fifth
/// bit, bit `2c` (first 32 elements) or `2c + 1` (last 32) of `qh[l]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q5k_quants64(x: &BlockQ5K, c: usize) -> __m512i {
    let q = _mm512_srlv_epi64(
        bcast256(&x.qs[32 * c..]),
        _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4),
    );
    let q = _mm512_and_si512(q, _mm512_set1_epi8(0x0F));
    let bits = _mm512_mask_blend_epi64(
        0xF0,
        _mm512_set1_epi8((1u8 << (2 * c)) as i8),
        _mm512_set1_epi8((1u8 << (2 * c + 1)) as i8),
    );
    let fifth = _mm512_test_epi8_mask(bcast256(&x.qh), bits);
    _mm512_mask_add_epi8(q, fifth, q, _mm512_set1_epi8(16))
}

/// The header of a Q4_K or Q5_K block: `(d, dmin, packed scales and minimums)`.
type K45Header<X> = fn(&X) -> ([u8; 2], [u8; 2], &[u8; 12]);

/// One Q4_K/Q5_K block against one Q8_K block (`b32`: [`q8k_sums_of_32`] of it), as lanes whose
/// sums are the block's exact integers: `Σ_j sc_j·Σ q·y` over the 16 i32 lanes of the first,
/// `Σ_j mn_j·bsum_j` over the 4 of the second. `quants(x, c)`: elements `64c..64c+64`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn k45_block_lanes<X>(
    x: &X,
    y: &BlockQ8K,
    b32: __m128i,
    header: K45Header<X>,
    quants: impl Fn(&X, usize) -> __m512i,
) -> (__m512i, __m128i) {
    let (sc, mn) = k4_scales_mins(header(x).2);
    // Minimums: Σ_j mn_j·(the sum of sub-block j's 32 activations).
    let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
    let summ = _mm_madd_epi16(mins, b32);
    // Scale j in i32 lane j, as an i16 with a zero upper half (for `dpwssd`).
    let sc32 = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(sc as i64));
    let mut sumi = _mm512_setzero_si512();
    for c in 0..4 {
        let (j0, j1) = (2 * c as i32, 2 * c as i32 + 1);
        let q = quants(x, c);
        // Lanes 0..8: sub-block 2c, 8..16: 2c + 1; each lane ≤ 4·31·128 = 15872 (Q5_K; 7680
        // for Q4_K): fits i16.
        let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, ld512(&y.qs[64 * c..]));
        let idx = _mm512_setr_epi32(
            j0, j0, j0, j0, j0, j0, j0, j0, j1, j1, j1, j1, j1, j1, j1, j1,
        );
        sumi = _mm512_dpwssd_epi32(sumi, p, _mm512_permutexvar_epi32(idx, sc32));
    }
    (sumi, summ)
}

/// One Q4_K/Q5_K row against one activation row: the float chains of `x86_avx2::gemm`
/// (`acc = fma(d_a·d, block integer, acc)`, the same for the minimums, result `acc − accm`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dot_k45<X>(
    w: &[X],
    a: &[BlockQ8K],
    header: K45Header<X>,
    quants: impl Fn(&X, usize) -> __m512i,
) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (x, y) in w.iter().zip(a) {
        avx2::prefetch_ahead(x, avx2::PREFETCH_AHEAD);
        let (sumi, summ) = k45_block_lanes(x, y, q8k_sums_of_32(y), header, &quants);
        let (d, dmin, _) = header(x);
        acc = (y.d() * f16_to_f32(d)).mul_add(hsum512(sumi) as f32, acc);
        accm = (y.d() * f16_to_f32(dmin)).mul_add(hsum_epi32_128(summ) as f32, accm);
    }
    acc - accm
}

/// The sum of the 4 i32 lanes of `v`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn hsum_epi32_128(v: __m128i) -> i32 {
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
    _mm_cvtsi128_si32(v)
}

/// The 8 i32 lanes of the two 256-bit halves of `v` added: the same sum in another order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn fold512(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// Two Q4_K/Q5_K rows, each with the bits of [`dot_k45`]: the activation block's sub-block
/// sums and the horizontal sums are shared, and the two rows' float chains (and their minimum
/// chains) run in the lanes of one vector: the same f32 multiply and fma per lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn dot2_k45<X>(
    w: [&[X]; 2],
    a: &[BlockQ8K],
    header: K45Header<X>,
    quants: impl Fn(&X, usize) -> __m512i,
) -> [f32; 2] {
    // Lanes: [row 0, row 1, row 0's minimums, row 1's].
    let mut acc = _mm_setzero_ps();
    for ((x0, x1), y) in w[0].iter().zip(w[1]).zip(a) {
        avx2::prefetch_ahead(x0, avx2::PREFETCH_AHEAD);
        avx2::prefetch_ahead(x1, avx2::PREFETCH_AHEAD);
        let b32 = q8k_sums_of_32(y);
        let (s0, m0) = k45_block_lanes(x0, y, b32, header, &quants);
        let (s1, m1) = k45_block_lanes(x1, y, b32, header, &quants);
        // [Σ s0, Σ s1, Σ m0, Σ m1], exact i32 sums in another order.
        let s = avx2::fold_pairs(fold512(s0), fold512(s1));
        let ints = _mm_hadd_epi32(s, _mm_hadd_epi32(m0, m1));
        let ((d0, dmin0, _), (d1, dmin1, _)) = (header(x0), header(x1));
        acc = avx2::chain_lanes(acc, y.d(), [d0, d1, dmin0, dmin1], ints);
    }
    let v = avx2::lanes_f32(acc);
    [v[0] - v[2], v[1] - v[3]]
}

fn q4k_header(x: &BlockQ4K) -> ([u8; 2], [u8; 2], &[u8; 12]) {
    (x.d, x.dmin, &x.scales)
}

fn q5k_header(x: &BlockQ5K) -> ([u8; 2], [u8; 2], &[u8; 12]) {
    (x.d, x.dmin, &x.scales)
}

/// One Q4_K row against one activation row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q4_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    dot_k45(w, a, q4k_header, |x, c| q4k_quants64(x, c))
}

/// Two Q4_K rows, each with the bits of [`dot_q4_k`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot2_q4_k(w: [&[BlockQ4K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    dot2_k45(w, a, q4k_header, |x, c| q4k_quants64(x, c))
}

/// One Q5_K row against one activation row (the bits of AVX2's `dot_q5_k`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q5_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    dot_k45(w, a, q5k_header, |x, c| q5k_quants64(x, c))
}

/// Two Q5_K rows, each with the bits of [`dot_q5_k`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot2_q5_k(w: [&[BlockQ5K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    dot2_k45(w, a, q5k_header, |x, c| q5k_quants64(x, c))
}

// ---------------------------------------------------------------------------------------------
// Q2_K: 16 sub-blocks of 16 elements. (Q3_K, laid out alike, runs AVX2's kernels: a VNNI
// version was no faster than AVX2's once both unpacked the scales in vector registers.)
//
// The float chain is AVX2's (the canonical one every path of this type keeps, see
// `x86_avx2::gemm`): per block the exact integer and the exact minimums integer, then
// `acc = fma(d_a·d, integer, acc)` and `accm = fma(d_a·dmin, minimums, accm)`, result
// `acc − accm`.

/// Elements `64t..64t+64` (`t` = 0..4) of a Q2_K block as quants 0..=3: element
/// `128h + 32k + l` is `(qs[32h + l] >> 2k) & 3`, so for `t = 2h + c` they are `qs[32h..]`
/// shifted by `4c` (first 32) and `4c + 2` (last 32).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q2k_quants64(qs: &[u8; 64], t: usize) -> __m512i {
    let (h, c) = (t / 2, t % 2);
    let s = 4 * c as i64;
    let q = _mm512_srlv_epi64(
        bcast256(&qs[32 * h..]),
        _mm512_setr_epi64(s, s, s, s, s + 2, s + 2, s + 2, s + 2),
    );
    _mm512_and_si512(q, _mm512_set1_epi8(0x03))
}

/// One Q2_K block's exact integers `(Σ_j sc_j·Σ q·y, Σ_j mn_j·bsum_j)` as lanes to be summed.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q2k_block_lanes(x: &BlockQ2K, y: &BlockQ8K) -> (__m512i, __m256i) {
    let packed = load128(&x.scales);
    let m4 = _mm_set1_epi8(0x0F);
    // Minimums (high nibbles) against the 16 sub-block sums: pairs ≤ 2·15·2048, i32.
    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), m4));
    let summ = _mm256_madd_epi16(mins, load256(y.bsums.as_flattened()));
    // Scale j (low nibble) in i32 lane j with a zero upper half (`dpwssd` multiplies i16
    // halves).
    let sc32 = _mm512_cvtepu8_epi32(_mm_and_si128(packed, m4));
    let mut sumi = _mm512_setzero_si512();
    for t in 0..4 {
        // i32 lane L: elements 64t + 4L..+4, sub-block 4t + L/4; ≤ 4·3·128: an i16.
        let p = _mm512_dpbusd_epi32(
            _mm512_setzero_si512(),
            q2k_quants64(&x.qs, t),
            ld512(&y.qs[64 * t..]),
        );
        let j = 4 * t as i32;
        let idx = _mm512_setr_epi32(
            j,
            j,
            j,
            j,
            j + 1,
            j + 1,
            j + 1,
            j + 1,
            j + 2,
            j + 2,
            j + 2,
            j + 2,
            j + 3,
            j + 3,
            j + 3,
            j + 3,
        );
        // |p·sc| ≤ 1536·15 per term, four terms per lane: i32.
        sumi = _mm512_dpwssd_epi32(sumi, p, _mm512_permutexvar_epi32(idx, sc32));
    }
    (sumi, summ)
}

/// One Q2_K row against one activation row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q2_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (x, y) in w.iter().zip(a) {
        avx2::prefetch_ahead(x, avx2::PREFETCH_AHEAD);
        let (sumi, summ) = q2k_block_lanes(x, y);
        acc = (y.d() * f16_to_f32(x.d)).mul_add(hsum512(sumi) as f32, acc);
        accm = (y.d() * f16_to_f32(x.dmin)).mul_add(hsum_epi32(summ) as f32, accm);
    }
    acc - accm
}

/// Two Q2_K rows, each with the bits of [`dot_q2_k`]: shared horizontal sums, and both rows'
/// chains and minimum chains in the lanes of one vector.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot2_q2_k(w: [&[BlockQ2K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    // Lanes: [row 0, row 1, row 0's minimums, row 1's].
    let mut acc = _mm_setzero_ps();
    for ((x0, x1), y) in w[0].iter().zip(w[1]).zip(a) {
        avx2::prefetch_ahead(x0, avx2::PREFETCH_AHEAD);
        avx2::prefetch_ahead(x1, avx2::PREFETCH_AHEAD);
        let (s0, m0) = q2k_block_lanes(x0, y);
        let (s1, m1) = q2k_block_lanes(x1, y);
        // [Σ s0, Σ s1, Σ m0, Σ m1]: exact i32 sums in another order.
        let ints = _mm_hadd_epi32(
            avx2::fold_pairs(fold512(s0), fold512(s1)),
            avx2::fold_pairs(m0, m1),
        );
        acc = avx2::chain_lanes(acc, y.d(), [x0.d, x1.d, x0.dmin, x1.dmin], ints);
    }
    let v = avx2::lanes_f32(acc);
    [v[0] - v[2], v[1] - v[3]]
}

// ---------------------------------------------------------------------------------------------
// Q6_K.

/// Elements `128h..128h+64` (`hi` false) or `128h+64..128h+128` (`hi` true) of a Q6_K block as
/// quants 0..=63 (not yet minus 32).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q6k_quants64(x: &BlockQ6K, h: usize, hi: bool) -> __m512i {
    // Element 128h + 32k + l: low 4 bits from the low (k < 2) or high (k ≥ 2) nibble of
    // ql[64h + 32(k % 2) + l], top 2 bits from bits 2k, 2k + 1 of qh[32h + l].
    let ql = ld512(&x.ql[64 * h..]);
    let qh = bcast256(&x.qh[32 * h..]);
    let (l, top) = if hi {
        // k = 2: bits 4, 5 in place; k = 3: bits 6, 7 shifted right by 2 (upper 256 bits).
        let s = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
        (_mm512_srli_epi16::<4>(ql), _mm512_srlv_epi64(qh, s))
    } else {
        // k = 0: bits 0, 1 shifted left by 4; k = 1: bits 2, 3 shifted left by 2.
        let s = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2);
        (ql, _mm512_sllv_epi64(qh, s))
    };
    _mm512_or_si512(
        _mm512_and_si512(l, _mm512_set1_epi8(0x0F)),
        _mm512_and_si512(top, _mm512_set1_epi8(0x30)),
    )
}

/// One Q6_K block against one Q8_K block as 8 i32 lanes whose sum is the block's exact integer
/// `Σ_h sc_h·Σ q·y − 32·Σ_h sc_h·bsum_h` (in wrapping i32 arithmetic, which the true value fits).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q6k_block_lanes(x: &BlockQ6K, y: &BlockQ8K) -> __m256i {
    let scales = load128(&x.scales);
    let sc16 = _mm256_cvtepi8_epi16(scales);
    // Scale h in i32 lane h as an i16 with a zero upper half (for `dpwssd`).
    let sc32 = _mm512_cvtepu16_epi32(sc16);
    let mut sumi = _mm512_setzero_si512();
    for c in 0..4 {
        let q = q6k_quants64(x, c / 2, c % 2 == 1);
        // Lanes 4s..4s+4: sub-block 4c + s; each lane ≤ 4·63·128 = 32256: fits i16.
        let p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, ld512(&y.qs[64 * c..]));
        let b = 4 * c as i32;
        let idx = _mm512_setr_epi32(
            b,
            b,
            b,
            b,
            b + 1,
            b + 1,
            b + 1,
            b + 1,
            b + 2,
            b + 2,
            b + 2,
            b + 2,
            b + 3,
            b + 3,
            b + 3,
            b + 3,
        );
        sumi = _mm512_dpwssd_epi32(sumi, p, _mm512_permutexvar_epi32(idx, sc32));
    }
    // The quants' offset: −32·Σ_h sc_h·bsum_h.
    let off = _mm256_madd_epi16(sc16, load256(y.bsums.as_flattened()));
    let sumi = _mm256_add_epi32(
        _mm512_castsi512_si256(sumi),
        _mm512_extracti64x4_epi64::<1>(sumi),
    );
    _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(off))
}

/// One Q6_K row against one activation row: the float chain of `x86_avx2::gemm`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q6_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in w.iter().zip(a) {
        avx2::prefetch_ahead(x, avx2::PREFETCH_AHEAD);
        let s = hsum_epi32(q6k_block_lanes(x, y));
        acc = (f16_to_f32(x.d) * y.d()).mul_add(s as f32, acc);
    }
    acc
}

/// Two Q6_K rows, each with the bits of [`dot_q6_k`]: one horizontal reduction for both, and
/// the two float chains in the lanes of one vector (the same f32 multiply and fma per lane).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot2_q6_k(w: [&[BlockQ6K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    let mut acc = _mm_setzero_ps();
    for ((x0, x1), y) in w[0].iter().zip(w[1]).zip(a) {
        avx2::prefetch_ahead(x0, avx2::PREFETCH_AHEAD);
        avx2::prefetch_ahead(x1, avx2::PREFETCH_AHEAD);
        // [Σ row 0, Σ row 1, …] of the lanes: exact i32 sums in another order.
        let s = avx2::fold_pairs(q6k_block_lanes(x0, y), q6k_block_lanes(x1, y));
        let ints = _mm_hadd_epi32(s, s);
        acc = avx2::chain_lanes(acc, y.d(), [x0.d, x1.d, [0; 2], [0; 2]], ints);
    }
    let v = avx2::lanes_f32(acc);
    [v[0], v[1]]
}

// ---------------------------------------------------------------------------------------------
// Q5_0.

/// A Q5_0 block's 32 quants, 0..=31 (not yet minus 16), element order: nibbles, plus 16 where
/// the block's `qh` bit is set.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q5_0_quants(x: &BlockQ5_0) -> __m256i {
    let q = load128(&x.qs);
    let q = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
        _mm256_set1_epi8(0x0F),
    );
    _mm256_mask_add_epi8(q, u32::from_le_bytes(x.qh), q, _mm256_set1_epi8(16))
}

/// Two Q5_0 blocks' quants (as [`q5_0_quants`]), `x0`'s in the low 256 bits, `x1`'s in the
/// high.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q5_0_quants2(x0: &BlockQ5_0, x1: &BlockQ5_0) -> __m512i {
    let q = _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_broadcastsi128_si256(load128(&x0.qs))),
        _mm256_broadcastsi128_si256(load128(&x1.qs)),
    );
    // Low nibbles (elements 0..16) in the first 128 bits of each half, high ones in the second.
    let q = _mm512_srlv_epi64(q, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
    let hb = u32::from_le_bytes(x0.qh) as u64 | (u32::from_le_bytes(x1.qh) as u64) << 32;
    // (q & 0x0F) | (16 where the block's bit is set), in one ternary-logic operation: written
    // as `and` then a masked add, it compiled to three (the add became an `or`, which has no
    // byte-masked form, and a blend), and this kernel is bound by its vector operations.
    let h = _mm512_maskz_mov_epi8(hb, _mm512_set1_epi8(16));
    _mm512_ternarylogic_epi32::<0xEA>(q, _mm512_set1_epi8(0x0F), h)
}

/// Sixteen Q5_0 rows (of equal length), each with the bits of the
/// single-row dot (AVX2's: `acc = fma(d_w·d_a, float(Σ (q − 16)·y), acc)` per block), two rows
/// per vector and rows in lanes for the float work.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot16_q5_0(w: [&[BlockQ5_0]; 16], a: &[BlockQ8_0]) -> [f32; 16] {
    let mut acc = _mm512_setzero_ps();
    for (i, y) in a.iter().enumerate().take(w[0].len()) {
        let yv = bcast256(&y.qs);
        // −16·Σ y, spread over the 8 lanes of each half.
        let start = _mm512_sub_epi32(
            _mm512_setzero_si512(),
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(16), yv),
        );
        let mut z = [_mm512_setzero_si512(); 8];
        for (p, z) in z.iter_mut().enumerate() {
            let x0 = &w[pair_row(p, false)][i];
            let x1 = &w[pair_row(p, true)][i];
            *z = _mm512_dpbusd_epi32(start, q5_0_quants2(x0, x1), yv);
        }
        let h: [u16; 16] = std::array::from_fn(|r| u16::from_le_bytes(w[r][i].d));
        acc = fma16(h, f16_to_f32(y.d), reduce16(&z), acc);
    }
    let mut out = [0f32; 16];
    // SAFETY: `out` is 16 writable f32; no alignment needed.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), acc) };
    out
}

/// `acc + (d_r·dy)·float(sumi_r)` in lane `r`, `d_r` the f16 bits `h[r]`: the per-row chain step
/// `fma(d_w·d_a, float(block integer), acc)` for 16 rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn fma16(h: [u16; 16], dy: f32, sumi: __m512i, acc: __m512) -> __m512 {
    // SAFETY: `h` is 16 readable u16 (32 bytes); no alignment needed.
    let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(h.as_ptr().cast()) });
    _mm512_fmadd_ps(
        _mm512_mul_ps(d, _mm512_set1_ps(dy)),
        _mm512_cvtepi32_ps(sumi),
        acc,
    )
}

// ---------------------------------------------------------------------------------------------
// Q8_0.
/// How far ahead of each of its 8 row streams the Q8_0 decode kernel prefetches, in bytes (8 KiB
/// in all: well inside L1).
const Q8_0_AHEAD: usize = 1024;

/// The 8 lane integers of a Q8_0 block pair (`x` weights, `y` activations): lane `l` holds the
/// exact `Σ x·y` of elements `4l..4l + 4`, the four products `vpdpbusd` sums. It takes unsigned
/// bytes, so the weights go in as `x + 128` (`x ^ 0x80`) and the sum starts from `−128·Σ y` of
/// the lane's elements (|lane| <= 4·255·128 at every step: no overflow, exact for every byte).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn q8_0_lanes(x: &[i8; 32], y: &[i8; 32]) -> __m256i {
    let bias = _mm256_set1_epi8(i8::MIN);
    let yv = load256(y);
    let start = _mm256_sub_epi32(
        _mm256_setzero_si256(),
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias, yv),
    );
    _mm256_dpbusd_epi32(start, _mm256_xor_si256(load256(x), bias), yv)
}

/// One Q8_0 row: AVX2's float chain (`x86_avx2::two_acc`: `fma(d_w·d_a, float(lane), acc)`, even
/// and odd blocks in two accumulators, `hsum_ps` of their sum) over this build's lane integers
/// ([`q8_0_lanes`]: four consecutive elements per lane where AVX2 widens to i16 and pairs
/// elements `2l, 2l + 1` with `16 + 2l, 17 + 2l`). Same integers per block, grouped otherwise,
/// so the result may differ from the AVX2 build's in the last bits; [`dot8_q8_0`] and the matrix
/// kernel (AVX2's `gemm_l32` with quads when WIDE) keep this one's.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    hsum_ps(avx2::two_acc(w, a, |x, y, acc| {
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q8_0_lanes(&x.qs, &y.qs)), acc)
    }))
}

/// Block `i` of the eight rows of [`dot8_q8_0`] against the activation block `y`, into `acc`
/// (rows 2k and 2k + 1 in `acc[k]`). A macro, expanded in the target-feature function that
/// uses it: as a `#[inline]` function, called three times, LLVM kept it out of line, and the
/// call (the accumulators through memory, the row pointers reloaded, registers saved) cost
/// about a third of the kernel's time in cache; `#[inline(always)]` is not allowed with
/// `#[target_feature]`.
macro_rules! q8_0_x8_block {
    ($w:expr, $y:expr, $i:expr, $acc:expr) => {{
        let (w, y, i, acc): (&[&[BlockQ8_0]; 8], &BlockQ8_0, usize, &mut [__m512; 4]) =
            ($w, $y, $i, $acc);
        for r in w {
            avx2::prefetch_ahead(&r[i], Q8_0_AHEAD);
        }
        let bias = _mm512_set1_epi8(i8::MIN);
        let yv = _mm512_broadcast_i64x4(load256(&y.qs));
        let start = _mm512_sub_epi32(
            _mm512_setzero_si512(),
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, yv),
        );
        // d_w·d_a of each row, AVX2's f32 product; then spread over each row's 8 lanes
        // (lanes 0..8 take row 2k's, 8..16 row 2k + 1's).
        let h = |r: usize| u16::from_le_bytes(w[r][i].d) as i64;
        let lo = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
        let hi = h(4) | h(5) << 16 | h(6) << 32 | h(7) << 48;
        let d = _mm256_mul_ps(
            _mm256_cvtph_ps(_mm_set_epi64x(hi, lo)),
            _mm256_set1_ps(f16_to_f32(y.d)),
        );
        let d = _mm512_castps256_ps512(d);
        for (k, acc) in acc.iter_mut().enumerate() {
            let (r0, r1) = (2 * k as i32, 2 * k as i32 + 1);
            let pick = _mm512_setr_epi32(
                r0, r0, r0, r0, r0, r0, r0, r0, r1, r1, r1, r1, r1, r1, r1, r1,
            );
            let x = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(load256(&w[2 * k][i].qs)),
                load256(&w[2 * k + 1][i].qs),
            );
            let s = _mm512_dpbusd_epi32(start, _mm512_xor_si512(x, bias), yv);
            let dk = _mm512_permutexvar_ps(pick, d);
            *acc = _mm512_fmadd_ps(dk, _mm512_cvtepi32_ps(s), *acc);
        }
    }};
}

/// Eight Q8_0 rows (of equal length), each with the bits of [`dot_q8_0`]: rows 2k and 2k + 1
/// share a vector (lanes 0..8 and 8..16), the activation block and its `−128·Σ y` start are
/// made once for all eight rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot8_q8_0(w: [&[BlockQ8_0]; 8], a: &[BlockQ8_0]) -> [f32; 8] {
    let nb = a.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    // Cut to `nb` blocks, so that the compiler sees every index below in bounds.
    let (w, a) = (w.map(|r| &r[..nb]), &a[..nb]);
    // The even and odd blocks' accumulators as two arrays indexed by constants (see AVX2's
    // `dot_q8_0_x4`: indexed by `i & 1` they live in memory).
    let (mut acc0, mut acc1) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
    let mut i = 0;
    while i + 2 <= nb {
        q8_0_x8_block!(&w, &a[i], i, &mut acc0);
        q8_0_x8_block!(&w, &a[i + 1], i + 1, &mut acc1);
        i += 2;
    }
    if i < nb {
        q8_0_x8_block!(&w, &a[i], i, &mut acc0);
    }
    let mut out = [0f32; 8];
    for k in 0..4 {
        let v = _mm512_add_ps(acc0[k], acc1[k]);
        out[2 * k] = hsum_ps(_mm512_castps512_ps256(v));
        out[2 * k + 1] = hsum_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
            _mm512_castps_pd(v),
        )));
    }
    out
}
