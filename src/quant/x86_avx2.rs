//! AVX2 + FMA + F16C kernels: dot products of every weight type with its activation format, and
//! the activation quantizers (Q8_0, Q8_1, Q8_K).
//!
//! Every function here is a safe `#[target_feature]` function: it may only be *called* from code
//! that knows the CPU has AVX2, FMA and F16C, which in this crate is `dispatch`, after
//! `is_x86_feature_detected!`. The only `unsafe` blocks are the unaligned loads and stores, each
//! through a helper that checks the slice is long enough first (and one CPUID read).
//!
//! Three groups of dot kernels: one weight row at a time (256-bit), four rows sharing the
//! activation work (`vec_dot_rows`), and 128-bit versions of the 32-element nibble formats for
//! cores that split 256-bit operations (Zen 1, the test machine; `dispatch` picks them there).
//!
//! Exactness, compared with the scalar reference in the sibling modules:
//! - integer parts are exact for every input byte. No saturating shortcut: ggml's i8·i8 trick
//!   `maddubs(|x|, sign(y, x))` is wrong when y = −128, so full-range i8·i8 products (Q8_x)
//!   go through i16 `madd`; small signed weights use `maddubs(|y|, sign(x, y))`, which never
//!   negates the activation; unsigned·signed `maddubs` is used only where no pair can saturate;
//! - the quantizers produce the same bytes as the scalar ones, NaN and ±inf inputs included;
//! - F32/F16/BF16 dots return the same bits (the canonical fma lanes of `float::LANES`, see
//!   `float`);
//! - the quantized dots sum their exact per-block integers in f32 in another order than the
//!   reference (8 lanes with FMA for the 32-element formats and Q8_K; for Q5_0 and the K-quants
//!   Q2_K..Q6_K one fma chain per row over whole blocks, shared with the matrix kernels, see
//!   `gemm`), so they differ from it by a few ulps of the sum of the magnitudes of the block
//!   terms (the parity tests bound it).

use std::arch::x86_64::*;

use super::q4::{BlockQ4_0, BlockQ4_1};
use super::q5::{BlockQ5_0, BlockQ5_1};
use super::q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::simd_common::strided_groups;
use super::{as_blocks, GemmOut, QK};
use crate::gguf::{GgmlType, QK_K};

mod float;
mod gemm;

pub(super) use gemm::{
    chain_lanes, fold_pairs, gemm_with, lanes_f32, lanes_i16, rows_by, tile_l32_mins, AccL32,
    PanelL32,
};

/// Whether this CPU can run the kernels of this module.
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

// ---------------------------------------------------------------------------------------------
// Prefetching.

/// How far ahead of the block being computed the one-row-at-a-time kernels prefetch (see
/// [`prefetch_ahead`]), in bytes. The hardware prefetcher alone does not run far enough ahead to
/// hide DRAM latency at these kernels' compute rate. Issued per block, these prefetches keep a
/// steady stream of requests in flight; issued as one burst per row (as before) they stalled on
/// the line-fill buffers (`examples/bench_matvec --threads 2`, share of a plain read's rate,
/// AVX-512: Q4_K 0.82 -> 1.04, Q6_K 0.88 -> 1.1, Q5_K 0.72 -> 0.9; AVX2 alike).
pub(super) const PREFETCH_AHEAD: usize = 4096;

/// [`PREFETCH_AHEAD`] for each of the four row streams of the Q8_0 decode kernel: 16 KiB in all
/// stays well inside L1 (1, 2 and 4 KiB measured alike; 0.93 -> ~1.0 of the read rate).
const AHEAD4: usize = 1024;

/// Fetches towards L1 the bytes `ahead` bytes past block `x` of a row being read block by block:
/// called once per block, it keeps a steady stream of requests `ahead` bytes in front of the
/// kernel (one burst per row or group instead stalled on the line-fill buffers). Every line is
/// fetched: the blocks after `x` start in the lines between this block's.
#[inline(always)]
pub(super) fn prefetch_ahead<T>(x: &T, ahead: usize) {
    let p = (x as *const T).cast::<i8>().wrapping_add(ahead);
    for off in (0..size_of::<T>()).step_by(64) {
        // SAFETY: a prefetch is a hint: it never faults and changes nothing, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off)) };
    }
}

/// Fetches the cache lines of `w[from..from + len]` (clamped to `w`) towards L1.
#[inline(always)]
pub(super) fn prefetch(w: &[u8], from: usize, len: usize) {
    if let Some(bytes) = w.get(from.min(w.len())..from.saturating_add(len).min(w.len())) {
        for line in bytes.iter().step_by(64) {
            // SAFETY: a prefetch is a hint; `line` points into `w` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((line as *const u8).cast()) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loads, stores and reductions.

/// The first 32 bytes of `s` (bytes or i8s).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load256<T: Byte>(s: &[T]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: `s` has at least 32 one-byte elements; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The first 16 bytes of `s`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load128<T: Byte>(s: &[T]) -> __m128i {
    assert!(s.len() >= 16);
    // SAFETY: `s` has at least 16 one-byte elements; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// The first 8 f32 of `s`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_ps(s: &[f32]) -> __m256 {
    assert!(s.len() >= 8);
    // SAFETY: `s` has at least 8 f32s; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// Stores `v` into the first 32 bytes of `d`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store256<T: Byte>(d: &mut [T], v: __m256i) {
    assert!(d.len() >= 32);
    // SAFETY: `d` has at least 32 one-byte elements, borrowed exclusively; no alignment needed.
    unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), v) }
}

/// One-byte element types whose slices the loads above may read (`u8`, `i8`).
pub(super) trait Byte: Copy {}
impl Byte for u8 {}
impl Byte for i8 {}

/// Little-endian f16 bytes to f32 (exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f16_to_f32(h: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(h) as i32),
    ))
}

/// f32 to little-endian f16 bytes, rounding to nearest even (the same as `half`'s conversion for
/// every non-NaN input; the quantizers never convert a NaN).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f32_to_f16(x: f32) -> [u8; 2] {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    (_mm_cvtsi128_si32(h) as u16).to_le_bytes()
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hmax_ps(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// |v|.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

// ---------------------------------------------------------------------------------------------
// Integer building blocks. All exact: see the bounds next to each.

/// Σ x·y over 32 i8 pairs as 8 i32 partial sums (sign-extended to i16 and `madd`: exact for
/// every byte, −128 included).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_i8x32(x: &[i8], y: &[i8]) -> __m256i {
    let x0 = _mm256_cvtepi8_epi16(load128(x));
    let x1 = _mm256_cvtepi8_epi16(load128(&x[16..]));
    let y0 = _mm256_cvtepi8_epi16(load128(y));
    let y1 = _mm256_cvtepi8_epi16(load128(&y[16..]));
    _mm256_add_epi32(_mm256_madd_epi16(x0, y0), _mm256_madd_epi16(x1, y1))
}

/// 16 i16 sums of adjacent pairs `u·y` for unsigned `u` <= 63 and any i8 `y`: |pair| <= 2·63·128
/// = 16128, so `maddubs` never saturates.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mul_u6_i8(u: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(u, y)
}

/// 16 i16 lanes summed in adjacent pairs into 8 i32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn sum_i16_pairs(v: __m256i) -> __m256i {
    _mm256_madd_epi16(v, _mm256_set1_epi16(1))
}

/// The 32 nibbles of 16 bytes: low nibbles (elements 0..16) in the low lane, high nibbles
/// (elements 16..32) in the high lane, the layout of Q4_0/Q4_1/Q5_0/Q5_1.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles_32(qs: &[u8]) -> __m256i {
    let q = load128(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(q), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 0x10 in byte `i` where bit `i` of `qh` is set, else 0 (the fifth bit of Q5_0/Q5_1).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fifth_bits_32(qh: [u8; 4]) -> __m256i {
    _mm256_and_si256(bits_set_32(qh), _mm256_set1_epi8(0x10))
}

/// 0xFF in byte `i` where bit `i` of `qh` is set, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bits_set_32(qh: [u8; 4]) -> __m256i {
    let v = _mm256_set1_epi32(i32::from_le_bytes(qh));
    // Byte i takes byte i / 8 of qh (shuffles stay within 128-bit lanes; both lanes hold qh).
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

/// 16 i16 sums of adjacent pairs `x·y` for i8 `x` in −64..=64 and any i8 `y`, as
/// `maddubs(|y|, sign(x, y))`: |y| <= 128 is a valid unsigned byte and negating `x` cannot
/// overflow, so each product is exact and |pair| <= 2·64·128 fits i16. (ggml's variant takes
/// |x| and negates `y`, which is wrong for y = −128.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mul_small_i8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_abs_epi8(y), _mm256_sign_epi8(x, y))
}

/// A 16-byte shuffle that puts byte `2i` in bytes 0..8 and byte `2i + 1` in bytes 8..16: the two
/// 16-element sub-block scales of 32 consecutive elements.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale_pair_shuffle(i: usize) -> __m128i {
    let rep = 0x0101_0101_0101_0101u64;
    _mm_set_epi64x(
        (rep * (2 * i as u64 + 1)) as i64,
        (rep * (2 * i as u64)) as i64,
    )
}

/// The i8 scales `2i` (elements 0..16 of a 32-run) and `2i + 1` (16..32) as 16 i16, matching the
/// pair sums of [`mul_u6_i8`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale_pair_i16(scales: __m128i, i: usize) -> __m256i {
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, scale_pair_shuffle(i)))
}

/// Runs `f` over the blocks with two independent accumulators (to overlap the FMA latency) and
/// returns their horizontal sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn two_acc<X, Y>(
    w: &[X],
    a: &[Y],
    mut f: impl FnMut(&X, &Y, __m256) -> __m256,
) -> __m256 {
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let (wp, ap) = (w.chunks_exact(2), a.chunks_exact(2));
    let (wr, ar) = (wp.remainder(), ap.remainder());
    for (x, y) in wp.zip(ap) {
        prefetch_ahead(&x[0], PREFETCH_AHEAD);
        prefetch_ahead(&x[1], PREFETCH_AHEAD);
        acc0 = f(&x[0], &y[0], acc0);
        acc1 = f(&x[1], &y[1], acc1);
    }
    if let (Some(x), Some(y)) = (wr.first(), ar.first()) {
        acc0 = f(x, y, acc0);
    }
    _mm256_add_ps(acc0, acc1)
}

// ---------------------------------------------------------------------------------------------
// Dot products.

/// One weight row against its activations, both cut to exactly one row (see `quant::vec_dot`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn vec_dot(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => float::dot(ty, w, act),
        Q4_0 => dot_q4_0(as_blocks(w), as_blocks(act)),
        Q4_1 => dot_q4_1(as_blocks(w), as_blocks(act)),
        Q5_0 => gemm::dot_q5_0(as_blocks(w), as_blocks(act)),
        Q5_1 => dot_q5_1(as_blocks(w), as_blocks(act)),
        Q8_0 => dot_q8_0(as_blocks(w), as_blocks(act)),
        Q8_1 => dot_q8_1(as_blocks(w), as_blocks(act)),
        Q8_K => dot_q8_k(as_blocks(w), as_blocks(act)),
        Q2_K => gemm::dot_q2_k(as_blocks(w), as_blocks(act)),
        Q3_K => gemm::dot_q3_k(as_blocks(w), as_blocks(act)),
        Q4_K => gemm::dot_q4_k(as_blocks(w), as_blocks(act)),
        Q5_K => gemm::dot_q5_k(as_blocks(w), as_blocks(act)),
        Q6_K => gemm::dot_q6_k(as_blocks(w), as_blocks(act)),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    hsum_ps(two_acc(w, a, |x, y, acc| {
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8x32(&x.qs, &y.qs)), acc)
    }))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_1(w: &[BlockQ8_1], a: &[BlockQ8_1]) -> f32 {
    hsum_ps(two_acc(w, a, |x, y, acc| {
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8x32(&x.qs, &y.qs)), acc)
    }))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_k(w: &[BlockQ8K], a: &[BlockQ8K]) -> f32 {
    hsum_ps(two_acc(w, a, |x, y, acc| {
        let mut sumi = _mm256_setzero_si256();
        for j in 0..QK_K / 32 {
            let r = 32 * j..32 * j + 32;
            sumi = _mm256_add_epi32(sumi, dot_i8x32(&x.qs[r.clone()], &y.qs[r]));
        }
        _mm256_fmadd_ps(_mm256_set1_ps(x.d() * y.d()), _mm256_cvtepi32_ps(sumi), acc)
    }))
}

/// `Σ (q − 8)·y` of a Q4_0 block: nibbles 0..=15 with an offset of 8.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    hsum_ps(two_acc(w, a, |x, y, acc| {
        let q = _mm256_sub_epi8(nibbles_32(&x.qs), _mm256_set1_epi8(8));
        let p = mul_small_i8(q, load256(&y.qs));
        let d = _mm256_set1_ps(f16_to_f32(x.d) * f16_to_f32(y.d));
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum_i16_pairs(p)), acc)
    }))
}

/// Q4_1/Q5_1 against Q8_1: `d·dy·Σ q·qy` vectorized, plus `m·s` summed on the side.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_x_1<X>(w: &[X], a: &[BlockQ8_1], parts: impl Fn(&X) -> ([u8; 2], [u8; 2], __m256i)) -> f32 {
    let mut summs = _mm256_setzero_ps();
    let acc = two_acc(w, a, |x, y, acc| {
        let (d, m, q) = parts(x);
        let p = mul_u6_i8(q, load256(&y.qs));
        let dd = _mm256_set1_ps(f16_to_f32(d) * f16_to_f32(y.d));
        // Only lane 0 of `summs` is used; a vector keeps the compiler from chaining scalars.
        summs = _mm256_add_ps(summs, _mm256_set1_ps(f16_to_f32(m) * f16_to_f32(y.s)));
        _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sum_i16_pairs(p)), acc)
    });
    hsum_ps(acc) + _mm256_cvtss_f32(summs)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    dot_x_1(w, a, |x| (x.d, x.m, nibbles_32(&x.qs)))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    dot_x_1(w, a, |x| {
        (
            x.d,
            x.m,
            _mm256_or_si256(nibbles_32(&x.qs), fifth_bits_32(x.qh)),
        )
    })
}

/// Many weight rows against many activation rows (see `quant::gemm`) for the types with a
/// matrix kernel; false (nothing done) for the others.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    float::try_gemm(ty, rb, w, act, arb, n_tok, out)
        || gemm::gemm(ty, rb, w, qrb, act, arb, n_tok, out)
}

/// [`gemm`] for the build with 128-bit nibble kernels: the 32-element nibble formats keep their
/// own single-row arithmetic there, so they take the generic path built from it.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_128(
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
    float::try_gemm(ty, rb, w, act, arb, n_tok, out)
        || !matches!(ty, Q4_0 | Q4_1 | Q5_0 | Q5_1)
            && gemm::gemm(ty, rb, w, qrb, act, arb, n_tok, out)
}

// ---------------------------------------------------------------------------------------------
// Several weight rows against one activation row: the activation work of a block (loading,
// sign-extending, converting its scale) is done once for 4 rows. Each row keeps the exact
// operation order of its single-row kernel, so the results are the same bits.

/// `out[r]` = the dot product of row `r` of `w` (rows of `rb` bytes back to back) with `act`.
/// `w` holds at least `out.len()` rows and `act` is one activation row (checked by the caller).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn vec_dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    rows_impl::<false>(ty, rb, w, act, out)
}

/// [`vec_dot_rows`] for the build with 128-bit nibble kernels.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn vec_dot_rows_128(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    rows_impl::<true>(ty, rb, w, act, out)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn rows_impl<const NARROW: bool>(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    let done = match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            return float::dot_rows(ty, rb, w, act, out)
        }
        GgmlType::Q8_0 => strided_groups(w, rb, out, |r| dot_q8_0_x4(r, as_blocks(act))),
        GgmlType::Q5_0 if NARROW => {
            strided_groups(w, rb, out, |r| dot_q5_0_128_x4(r, as_blocks(act)))
        }
        _ if gemm::dot_rows(ty, rb, w, act, out) => return,
        _ => 0,
    };
    let rows = w
        .get(done * rb..)
        .unwrap_or_default()
        .chunks_exact(rb.max(1));
    for (o, r) in out[done..].iter_mut().zip(rows) {
        *o = if NARROW {
            vec_dot_128(ty, r, act)
        } else {
            vec_dot(ty, r, act)
        };
    }
}

/// Four Q8_0 rows, each exactly as [`dot_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0_x4(w: [&[BlockQ8_0]; 4], a: &[BlockQ8_0]) -> [f32; 4] {
    let nb = a.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    // The even and odd blocks' accumulators as two arrays indexed by constants: indexed by
    // `i & 1` they lived in memory whenever this function was not inlined into an unrolled
    // caller (a store-to-load chain per block, ~25% slower).
    let mut acc0 = [_mm256_setzero_ps(); 4];
    let mut acc1 = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 2 <= nb {
        q8_0_x4_block(&w, &a[i], i, &mut acc0);
        q8_0_x4_block(&w, &a[i + 1], i + 1, &mut acc1);
        i += 2;
    }
    if i < nb {
        q8_0_x4_block(&w, &a[i], i, &mut acc0);
    }
    std::array::from_fn(|r| hsum_ps(_mm256_add_ps(acc0[r], acc1[r])))
}

/// Block `i` of four Q8_0 rows against the activation block `y`, into `acc`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_0_x4_block(w: &[&[BlockQ8_0]; 4], y: &BlockQ8_0, i: usize, acc: &mut [__m256; 4]) {
    let y0 = _mm256_cvtepi8_epi16(load128(&y.qs));
    let y1 = _mm256_cvtepi8_epi16(load128(&y.qs[16..]));
    let dy = f16_to_f32(y.d);
    for (row, acc) in w.iter().zip(acc) {
        let x = &row[i];
        prefetch_ahead(x, AHEAD4);
        let x0 = _mm256_cvtepi8_epi16(load128(&x.qs));
        let x1 = _mm256_cvtepi8_epi16(load128(&x.qs[16..]));
        let s = _mm256_add_epi32(_mm256_madd_epi16(x0, y0), _mm256_madd_epi16(x1, y1));
        let d = _mm256_set1_ps(f16_to_f32(x.d) * dy);
        *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), *acc);
    }
}

/// Four Q5_0 rows, each exactly as [`dot_q5_0_128`].
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0_128_x4(w: [&[BlockQ5_0]; 4], a: &[BlockQ8_0]) -> [f32; 4] {
    let nb = a.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    let f0 = _mm_set1_epi8(0xF0u8 as i8);
    let mut acc = [[_mm_setzero_ps(); 2]; 4];
    for i in 0..nb {
        let y = &a[i];
        let (y0, y1) = (load128(&y.qs), load128(&y.qs[16..]));
        let (a0, a1) = (_mm_abs_epi8(y0), _mm_abs_epi8(y1));
        let dy = f16_to_f32(y.d);
        for (row, acc) in w.iter().zip(&mut acc) {
            let x = &row[i];
            let (lo, hi) = nibbles_128(&x.qs);
            let (s0, s1) = bits_set_128(x.qh);
            let q0 = _mm_or_si128(lo, _mm_andnot_si128(s0, f0));
            let q1 = _mm_or_si128(hi, _mm_andnot_si128(s1, f0));
            let p0 = _mm_maddubs_epi16(a0, _mm_sign_epi8(q0, y0));
            let p1 = _mm_maddubs_epi16(a1, _mm_sign_epi8(q1, y1));
            acc[i & 1] = fma_pairs_128(p0, p1, f16_to_f32(x.d) * dy, acc[i & 1]);
        }
    }
    acc.map(|[a0, a1]| hsum_ps128(_mm_add_ps(a0, a1)))
}

// ---------------------------------------------------------------------------------------------
// 128-bit variants of the 32-element nibble formats, for cores that split every 256-bit
// operation in two (AMD Zen and Zen+): there the 256-bit versions pay for the lane crossing
// (`vinserti128`, 256-bit broadcasts) and for 8-lane float work that 4 lanes do as well, and the
// 128-bit ones run ~15% faster. Elsewhere the 256-bit ones win.

/// Whether this CPU executes 256-bit AVX2 operations as two 128-bit halves: AMD family 17h
/// models below 30h (Zen, Zen+) and Hygon family 18h (Dhyana, a Zen core).
pub(super) fn splits_256() -> bool {
    // SAFETY: `cpuid` is available on every x86_64 CPU and only reads identification registers.
    // (`__cpuid` became a safe function in later Rust versions, hence the allow.)
    #[allow(unused_unsafe)]
    let (v, f) = unsafe { (__cpuid(0), __cpuid(1)) };
    let vendor = [v.ebx, v.edx, v.ecx];
    let amd = vendor == [0x6874_7541, 0x6974_6E65, 0x444D_4163]; // "AuthenticAMD"
    let hygon = vendor == [0x6F67_7948, 0x6E65_476E, 0x656E_6975]; // "HygonGenuine"
    let base_family = (f.eax >> 8) & 0xF;
    let family = if base_family == 0xF {
        base_family + ((f.eax >> 20) & 0xFF)
    } else {
        base_family
    };
    let model = ((f.eax >> 4) & 0xF) | (((f.eax >> 16) & 0xF) << 4);
    (amd && family == 0x17 && model < 0x30) || (hygon && family == 0x18)
}

/// [`vec_dot`] with the 128-bit kernels for Q4_0, Q4_1, Q5_0 and Q5_1.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn vec_dot_128(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    use GgmlType::*;
    match ty {
        Q4_0 => dot_q4_0_128(as_blocks(w), as_blocks(act)),
        Q4_1 => dot_q4_1_128(as_blocks(w), as_blocks(act)),
        Q5_0 => dot_q5_0_128(as_blocks(w), as_blocks(act)),
        Q5_1 => dot_q5_1_128(as_blocks(w), as_blocks(act)),
        _ => vec_dot(ty, w, act),
    }
}

/// Elements 0..16 (low nibbles) and 16..32 (high nibbles) of a 32-element nibble block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn nibbles_128(qs: &[u8]) -> (__m128i, __m128i) {
    let q = load128(qs);
    let m4 = _mm_set1_epi8(0x0F);
    (
        _mm_and_si128(q, m4),
        _mm_and_si128(_mm_srli_epi16::<4>(q), m4),
    )
}

/// 0xFF in byte `i` of the first (elements 0..16) or second (16..32) vector where bit `i` of
/// `qh` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bits_set_128(qh: [u8; 4]) -> (__m128i, __m128i) {
    let h = _mm_cvtsi32_si128(i32::from_le_bytes(qh));
    let bit = _mm_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let spread = |lo: i8, hi: i8| {
        let idx = _mm_set_epi64x(
            i64::from_le_bytes([hi as u8; 8]),
            i64::from_le_bytes([lo as u8; 8]),
        );
        _mm_cmpeq_epi8(_mm_and_si128(_mm_shuffle_epi8(h, idx), bit), bit)
    };
    (spread(0, 1), spread(2, 3))
}

/// As [`two_acc`], with 4-lane accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn two_acc_128<X, Y>(w: &[X], a: &[Y], mut f: impl FnMut(&X, &Y, __m128) -> __m128) -> f32 {
    let mut acc0 = _mm_setzero_ps();
    let mut acc1 = _mm_setzero_ps();
    let (wp, ap) = (w.chunks_exact(2), a.chunks_exact(2));
    let (wr, ar) = (wp.remainder(), ap.remainder());
    for (x, y) in wp.zip(ap) {
        prefetch_ahead(&x[0], PREFETCH_AHEAD);
        prefetch_ahead(&x[1], PREFETCH_AHEAD);
        acc0 = f(&x[0], &y[0], acc0);
        acc1 = f(&x[1], &y[1], acc1);
    }
    if let (Some(x), Some(y)) = (wr.first(), ar.first()) {
        acc0 = f(x, y, acc0);
    }
    hsum_ps128(_mm_add_ps(acc0, acc1))
}

/// A block's 16 i16 pair sums (two vectors) summed in i16 (the callers bound each pair sum by
/// 2^13, so the sum fits) and then into 4 i32, converted and scaled into `acc`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fma_pairs_128(p0: __m128i, p1: __m128i, d: f32, acc: __m128) -> __m128 {
    let s = _mm_madd_epi16(_mm_add_epi16(p0, p1), _mm_set1_epi16(1));
    _mm_fmadd_ps(_mm_set1_ps(d), _mm_cvtepi32_ps(s), acc)
}

/// `maddubs(|y|, sign(x, y))` on 16 bytes, see [`mul_small_i8`]; |pair| <= 2·16·128 here.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn mul_small_i8_128(x: __m128i, y: __m128i) -> __m128i {
    _mm_maddubs_epi16(_mm_abs_epi8(y), _mm_sign_epi8(x, y))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0_128(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let eight = _mm_set1_epi8(8);
    two_acc_128(w, a, |x, y, acc| {
        let (lo, hi) = nibbles_128(&x.qs);
        let p0 = mul_small_i8_128(_mm_sub_epi8(lo, eight), load128(&y.qs));
        let p1 = mul_small_i8_128(_mm_sub_epi8(hi, eight), load128(&y.qs[16..]));
        fma_pairs_128(p0, p1, f16_to_f32(x.d) * f16_to_f32(y.d), acc)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0_128(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let f0 = _mm_set1_epi8(0xF0u8 as i8);
    two_acc_128(w, a, |x, y, acc| {
        let (lo, hi) = nibbles_128(&x.qs);
        let (s0, s1) = bits_set_128(x.qh);
        // q − 16 as i8: the nibble where the fifth bit is set, else the nibble | 0xF0.
        let q0 = _mm_or_si128(lo, _mm_andnot_si128(s0, f0));
        let q1 = _mm_or_si128(hi, _mm_andnot_si128(s1, f0));
        let p0 = mul_small_i8_128(q0, load128(&y.qs));
        let p1 = mul_small_i8_128(q1, load128(&y.qs[16..]));
        fma_pairs_128(p0, p1, f16_to_f32(x.d) * f16_to_f32(y.d), acc)
    })
}

/// Q4_1/Q5_1 against Q8_1 on 128-bit vectors; `quants` gives elements 0..16 and 16..32 (each
/// <= 31, so a pair sum is at most 2·31·128 < 2^13).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_x_1_128<X>(
    w: &[X],
    a: &[BlockQ8_1],
    parts: impl Fn(&X) -> ([u8; 2], [u8; 2], __m128i, __m128i),
) -> f32 {
    let mut summs = _mm_setzero_ps();
    let sum = two_acc_128(w, a, |x, y, acc| {
        let (d, m, q0, q1) = parts(x);
        let p0 = _mm_maddubs_epi16(q0, load128(&y.qs));
        let p1 = _mm_maddubs_epi16(q1, load128(&y.qs[16..]));
        summs = _mm_add_ss(summs, _mm_set_ss(f16_to_f32(m) * f16_to_f32(y.s)));
        fma_pairs_128(p0, p1, f16_to_f32(d) * f16_to_f32(y.d), acc)
    });
    sum + _mm_cvtss_f32(summs)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1_128(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    dot_x_1_128(w, a, |x| {
        let (lo, hi) = nibbles_128(&x.qs);
        (x.d, x.m, lo, hi)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1_128(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let b16 = _mm_set1_epi8(0x10);
    dot_x_1_128(w, a, |x| {
        let (lo, hi) = nibbles_128(&x.qs);
        let (s0, s1) = bits_set_128(x.qh);
        (
            x.d,
            x.m,
            _mm_or_si128(lo, _mm_and_si128(s0, b16)),
            _mm_or_si128(hi, _mm_and_si128(s1, b16)),
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers, byte for byte the scalar ones in `q8.rs`.

/// Rust's `x.round() as i8` on 8 lanes, as i32: round half away from zero, then the saturating
/// cast (NaN → 0, clamp to −128..=127).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn round_away_sat_i8(x: __m256) -> __m256i {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
    // x − trunc(x) is exact; a fraction of at least one half rounds away from zero.
    let frac = abs_ps(_mm256_sub_ps(x, t));
    let away = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let one = _mm256_or_ps(_mm256_and_ps(x, _mm256_set1_ps(-0.0)), _mm256_set1_ps(1.0));
    let r = _mm256_add_ps(t, _mm256_and_ps(away, one));
    let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
    let r = _mm256_min_ps(
        _mm256_max_ps(r, _mm256_set1_ps(-128.0)),
        _mm256_set1_ps(127.0),
    );
    _mm256_cvtps_epi32(r)
}

/// Packs 4×8 i32 in −128..=127 into 32 i8 in element order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_i8(v: [__m256i; 4]) -> __m256i {
    let a = _mm256_packs_epi32(v[0], v[1]);
    let b = _mm256_packs_epi32(v[2], v[3]);
    // Lane-wise packing interleaves 4-element groups; put them back in order.
    _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(a, b),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
    )
}

/// Quantizes one 32-element block to i8 with `amax / 127` (Q8_0/Q8_1); returns the f32 scale,
/// the quants and their i32 sum.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn quantize_block_32(x: &[f32]) -> (f32, __m256i, i32) {
    let v = [
        load_ps(x),
        load_ps(&x[8..]),
        load_ps(&x[16..]),
        load_ps(&x[24..]),
    ];
    // max_ps returns its second operand when either is NaN: NaN elements are skipped, as
    // `f32::max` skips them in the scalar fold.
    let mut m = _mm256_setzero_ps();
    for v in v {
        m = _mm256_max_ps(abs_ps(v), m);
    }
    let d = hmax_ps(m) / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    // (Plain loops rather than `array::map` closures, which LLVM does not inline here.)
    let mut q = [_mm256_setzero_si256(); 4];
    for (q, v) in q.iter_mut().zip(v) {
        *q = round_away_sat_i8(_mm256_mul_ps(v, id));
    }
    let sum = hsum_epi32(_mm256_add_epi32(
        _mm256_add_epi32(q[0], q[1]),
        _mm256_add_epi32(q[2], q[3]),
    ));
    (d, pack_i8(q), sum)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, q, _) = quantize_block_32(x);
        b.d = f32_to_f16(d);
        store256(&mut b.qs, q);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    for (x, b) in src.chunks_exact(QK).zip(dst) {
        let (d, q, sum) = quantize_block_32(x);
        b.d = f32_to_f16(d);
        b.s = f32_to_f16(sum as f32 * d);
        store256(&mut b.qs, q);
    }
}

/// ggml's `quantize_row_q8_K_ref`, as `q8::quantize_q8_k`: the signed value of largest magnitude
/// (the first one, NaN skipped) maps to −127, `nearest_int` rounding, the i8 cast truncating.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn quantize_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst) {
        let mut m = _mm256_setzero_ps();
        for c in x.chunks_exact(8) {
            m = _mm256_max_ps(abs_ps(load_ps(c)), m);
        }
        let amax = hmax_ps(m);
        if amax == 0.0 {
            b.d = 0f32.to_le_bytes();
            b.qs = [0; QK_K];
            b.bsums = [[0; 2]; QK_K / 16];
            continue;
        }
        // The scalar loop keeps the first element whose magnitude is the maximum.
        let target = _mm256_set1_ps(amax);
        let mut max = amax;
        for (i, c) in x.chunks_exact(8).enumerate() {
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(abs_ps(load_ps(c)), target));
            if hit != 0 {
                max = x[8 * i + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let vscale = _mm256_set1_ps(iscale);
        let magic = _mm256_set1_ps(12_582_912.0);
        let mant = _mm256_set1_epi32(0x007F_FFFF);
        let half = _mm256_set1_epi32(0x0040_0000);
        let lim = _mm256_set1_epi32(127);
        let low8 = _mm256_set1_epi32(0xFF);
        let mut chunks = [_mm256_setzero_si256(); QK_K / 32];
        for (j, (xc, out)) in x.chunks_exact(32).zip(&mut chunks).enumerate() {
            // nearest_int(iscale·v): the product and the sum rounded separately (no FMA).
            let mut q = [_mm256_setzero_si256(); 4];
            for (q, xv) in q.iter_mut().zip(xc.chunks_exact(8)) {
                let val = _mm256_add_ps(_mm256_mul_ps(vscale, load_ps(xv)), magic);
                let i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(val), mant), half);
                // `.min(127) as i8`: clamp above, then keep the low byte (as 0..=255, which
                // the unsigned packs below pass through unchanged).
                *q = _mm256_and_si256(_mm256_min_epi32(i, lim), low8);
            }
            let a = _mm256_packus_epi32(q[0], q[1]);
            let b2 = _mm256_packus_epi32(q[2], q[3]);
            let packed = _mm256_permutevar8x32_epi32(
                _mm256_packus_epi16(a, b2),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
            );
            store256(&mut b.qs[32 * j..], packed);
            *out = packed;
        }
        // bsums: sums of 16 quants. Per 32-chunk, 8 i32 sums of 4 (lanes 0..4: the chunk's first
        // 16, lanes 4..8: its second 16), then two rounds of hadd gather the sums of 16.
        let mut s4 = chunks;
        for s in &mut s4 {
            *s = _mm256_madd_epi16(
                _mm256_maddubs_epi16(_mm256_set1_epi8(1), *s),
                _mm256_set1_epi16(1),
            );
        }
        let h01 = _mm256_hadd_epi32(s4[0], s4[1]);
        let h23 = _mm256_hadd_epi32(s4[2], s4[3]);
        let h45 = _mm256_hadd_epi32(s4[4], s4[5]);
        let h67 = _mm256_hadd_epi32(s4[6], s4[7]);
        // Low lanes: bsums 0, 2, 4, 6 (resp. 8..14); high lanes: 1, 3, 5, 7 (resp. 9..15).
        let e0 = _mm256_hadd_epi32(h01, h23);
        let e1 = _mm256_hadd_epi32(h45, h67);
        // |bsum| <= 16·128: the signed packs are exact. Lanes: [0 2 4 6 8 10 12 14 | 1 3 .. 15].
        let p = _mm256_packs_epi32(e0, e1);
        let lo = _mm256_castsi256_si128(p);
        let hi = _mm256_extracti128_si256::<1>(p);
        let ordered = _mm256_set_m128i(_mm_unpackhi_epi16(lo, hi), _mm_unpacklo_epi16(lo, hi));
        store256(b.bsums.as_flattened_mut(), ordered);
        b.d = (1.0 / iscale).to_le_bytes();
    }
}
