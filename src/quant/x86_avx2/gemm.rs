//! Matrix products on AVX2 for the weight types of the real models (Q4_K, Q5_K, Q6_K, Q5_0,
//! Q8_0), the other K-quants (Q3_K, Q2_K) and the other 32-element formats (Q4_0, Q4_1, Q5_1):
//! many weight rows against many activation rows, and the row kernels decode and `vec_dot` use.
//!
//! # The arithmetic every path shares
//!
//! For each weight row and activation row, each block `b` contributes exact integers (the
//! K-quants' scales included), and the row's result is a float chain over the blocks in order:
//!
//! - Q5_0: `acc = fma(d_w·d_a, float(Σ (q − 16)·y), acc)`;
//! - Q6_K: `acc = fma(d_w·d_a, float(Σ_h sc_h·Σ q·y − 32·Σ_h sc_h·bsum_h), acc)` (q in 0..=63,
//!   `bsum_h` the activation's sum over sub-block `h`, which the quantizer stores);
//! - Q4_K and Q5_K: `acc = fma(d_a·d, float(Σ_j sc_j·Σ q·y), acc)`, `accm = fma(d_a·dmin,
//!   float(Σ_j mn_j·bsum_j), accm)`, result `acc − accm` (q in 0..=15, or 0..=31 with Q5_K's
//!   fifth bit; `bsum_j` the activation's sum over the 32 elements of sub-block `j`);
//! - Q3_K: `acc = fma(d_a·d, float(Σ_j (sc_j − 32)·Σ q·y), acc)` (q in −4..=3 over the 16
//!   sub-blocks `j` of 16 elements; the kernels compute it as `Σ_j (sc_j − 32)·(Σ (q + 4)·y −
//!   4·bsum_j)`, `bsum_j` the activation's sum over sub-block `j`);
//! - Q2_K: `acc = fma(d_a·d, float(Σ_j sc_j·Σ q·y), acc)`, `accm = fma(d_a·dmin,
//!   float(Σ_j mn_j·bsum_j), accm)`, result `acc − accm` (q in 0..=3, `sc_j` and `mn_j` the
//!   low and high nibbles of scale byte `j`, 16-element sub-blocks);
//! - Q8_0, Q4_0, Q4_1, Q5_1: per lane, as their `vec_dot`s (see the section on them below).
//!
//! Integer sums are exact in any order, so a kernel is free to lay the work out as it likes;
//! the float chain is the same in all of them, so the matrix kernel, the 8-row kernel and the
//! single-row `vec_dot` agree bit for bit (the parity tests pin this).
//!
//! # Two layouts
//!
//! - Decode (few activation rows): each weight row is read as stored, its block's integer
//!   partial sums land in the 8 lanes of a vector (K in lanes) and are added up into one exact
//!   integer per block; for Q5_0's short blocks, 8 rows' vectors are reduced together
//!   ([`reduce8`]) so the float work is done for 8 rows at once.
//! - Prefill (many activation rows): 8 weight rows are first repacked into a panel where lane
//!   `r` of each 32-byte group holds 4 consecutive quants of row `r` (rows in lanes), so one
//!   broadcast of 4 activation bytes feeds 8 rows at once and each unpacked weight group is
//!   reused by [`NR`] activation rows. The panel covers a chunk of the blocks (it lives on the
//!   stack, sized for L1); the float accumulators carry across chunks, keeping block order.

use std::arch::x86_64::*;
use std::mem::size_of;

use super::super::k_quants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::super::q4::{BlockQ4_0, BlockQ4_1};
use super::super::q5::{BlockQ5_0, BlockQ5_1};
use super::super::q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::super::simd_common::{group_rows, k4_scales_mins, q3_k_scale_words, strided_groups};
use super::super::x86_avx512::gemm as avx512_gemm;
use super::super::{as_blocks, GemmOut, QK};
use super::{
    bits_set_32, f16_to_f32, fifth_bits_32, hsum_epi32, load128, load256, mul_small_i8, nibbles_32,
    prefetch, prefetch_ahead, scale_pair_i16, sum_i16_pairs, PREFETCH_AHEAD,
};
use crate::gguf::{GgmlType, QK_K};

/// Weight rows per panel group and per decode group: the 8 i32 lanes of a vector.
const MR: usize = 8;
/// Activation rows per register tile of the matrix kernel.
const NR: usize = 4;
/// Activation rows whose accumulators stay live while a row group's panels stream by.
const TC: usize = 256;
/// Fewest activation rows the panel kernels take (the 32-element formats' packing is cheaper,
/// see [`min_tokens`]).
const MIN_TOKENS: usize = 4;

/// Fewest activation rows the matrix kernel of `ty` takes; fewer go through the row kernels.
fn min_tokens(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_1 => 2,
        // Q3_K's packing costs more (the third bit, 6-bit scales): at 4 and 5 activation rows
        // the row kernels are ~3% and ~7% faster, at 6 the panels ~15% (bench_gemm, 4864 cols).
        GgmlType::Q3_K => 6,
        _ => MIN_TOKENS,
    }
}
/// Bytes of panel a chunk of blocks may fill (on the stack, meant to stay in L1).
const PANEL_BYTES: usize = 32 * 1024;

/// The weight types with kernels here.
fn has_gemm(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        Q4_K | Q5_K | Q6_K | Q3_K | Q2_K | Q5_0 | Q8_0 | Q4_0 | Q4_1 | Q5_1
    )
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// The 32 bytes of `v` as a vector.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld(v: &[u8; 32]) -> __m256i {
    // SAFETY: `v` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn st(v: &mut [u8; 32], x: __m256i) {
    // SAFETY: `v` is 32 writable bytes, borrowed exclusively; no alignment needed.
    unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld_ps(v: &[f32; 8]) -> __m256 {
    // SAFETY: `v` is 8 readable f32; no alignment needed.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn st_ps(v: &mut [f32; 8], x: __m256) {
    // SAFETY: `v` is 8 writable f32, borrowed exclusively; no alignment needed.
    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), x) }
}

/// 4 bytes broadcast to all 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bcast4(b: &[i8], i: usize) -> __m256i {
    let w = [b[i] as u8, b[i + 1] as u8, b[i + 2] as u8, b[i + 3] as u8];
    _mm256_set1_epi32(i32::from_le_bytes(w))
}

/// Lane `r` = the sum of the 8 lanes of `v[r]` (exact: i32 additions of the callers' bounded
/// partial sums).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn reduce8(v: &[__m256i; 8]) -> __m256i {
    let a01 = _mm256_hadd_epi32(v[0], v[1]);
    let a23 = _mm256_hadd_epi32(v[2], v[3]);
    let a45 = _mm256_hadd_epi32(v[4], v[5]);
    let a67 = _mm256_hadd_epi32(v[6], v[7]);
    // Per 128-bit half: [Σ v0, Σ v1, Σ v2, Σ v3] over that half's lanes.
    let b0 = _mm256_hadd_epi32(a01, a23);
    let b1 = _mm256_hadd_epi32(a45, a67);
    let lo = _mm256_permute2x128_si256::<0x20>(b0, b1);
    let hi = _mm256_permute2x128_si256::<0x31>(b0, b1);
    _mm256_add_epi32(lo, hi)
}

/// Transposes 8×8 i32: lane `r` of output `g` is lane `g` of input `r`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(v[0], v[1]);
    let t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    let t2 = _mm256_unpacklo_epi32(v[2], v[3]);
    let t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    let t4 = _mm256_unpacklo_epi32(v[4], v[5]);
    let t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    let t6 = _mm256_unpacklo_epi32(v[6], v[7]);
    let t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// Transposes 8 rows' 32-element vectors (element order) into 8 panel groups and stores them.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_transposed(rows: [__m256i; 8], out: &mut [[u8; 32]]) {
    for (o, v) in out.iter_mut().zip(transpose8(rows)) {
        st(o, v);
    }
}

/// An i16 value in both halves of each lane: `[x_r, x_r]` for row `r`.
fn pair16(x: [i16; 8]) -> [u8; 32] {
    let mut o = [0u8; 32];
    for (r, &v) in x.iter().enumerate() {
        o[4 * r..4 * r + 2].copy_from_slice(&v.to_le_bytes());
        o[4 * r + 2..4 * r + 4].copy_from_slice(&v.to_le_bytes());
    }
    o
}

/// `[a_r, b_r]` in lane `r`.
fn two16(a: [i16; 8], b: [i16; 8]) -> [u8; 32] {
    let mut o = [0u8; 32];
    for r in 0..8 {
        o[4 * r..4 * r + 2].copy_from_slice(&a[r].to_le_bytes());
        o[4 * r + 2..4 * r + 4].copy_from_slice(&b[r].to_le_bytes());
    }
    o
}

// ---------------------------------------------------------------------------------------------
// Q4_K and Q5_K: the same block header (`d`, `dmin`, 8 packed 6-bit scales and minimums) and
// the same arithmetic; Q5_K's quants carry a fifth bit (0..=31 instead of 0..=15). The kernels
// are generic over the block (`HeaderK45`) and a function giving its quants 64 at a time
// (`quants(x, c)`: elements `64c..64c+32` and `64c+32..64c+64`, see [`q4k_quants`] and
// [`q5k_quants`]).

/// The header of a Q4_K or Q5_K block: `(d, dmin, packed scales and minimums)`.
trait HeaderK45 {
    fn header(&self) -> ([u8; 2], [u8; 2], &[u8; 12]);
}

impl HeaderK45 for BlockQ4K {
    #[inline(always)]
    fn header(&self) -> ([u8; 2], [u8; 2], &[u8; 12]) {
        (self.d, self.dmin, &self.scales)
    }
}

impl HeaderK45 for BlockQ5K {
    #[inline(always)]
    fn header(&self) -> ([u8; 2], [u8; 2], &[u8; 12]) {
        (self.d, self.dmin, &self.scales)
    }
}

/// Elements `64c..64c+32` and `64c+32..64c+64` of a Q4_K (or Q5_K) block's nibbles `qs`,
/// 0..=15.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4k_quants(qs: &[u8; QK_K / 2], c: usize) -> (__m256i, __m256i) {
    let q = load256(&qs[32 * c..]);
    let m4 = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(q, m4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
    )
}

/// 0x10 in byte `l` where bit `k` of byte `l` of `qh` is set, else 0: Q5_K's fifth bit of
/// element `32k + l`. (Shifting the 16-bit lanes by at most 4 brings no other bit of the lane
/// to bit 4 or 12.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5k_fifth_bits(qh: __m256i, k: usize) -> __m256i {
    let s = match k {
        0 => _mm256_slli_epi16::<4>(qh),
        1 => _mm256_slli_epi16::<3>(qh),
        2 => _mm256_slli_epi16::<2>(qh),
        3 => _mm256_slli_epi16::<1>(qh),
        4 => qh,
        5 => _mm256_srli_epi16::<1>(qh),
        6 => _mm256_srli_epi16::<2>(qh),
        _ => _mm256_srli_epi16::<3>(qh),
    };
    _mm256_and_si256(s, _mm256_set1_epi8(0x10))
}

/// Elements `64c..64c+32` and `64c+32..64c+64` of a Q5_K block, 0..=31.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5k_quants(x: &BlockQ5K, c: usize) -> (__m256i, __m256i) {
    let (lo, hi) = q4k_quants(&x.qs, c);
    let qh = load256(&x.qh);
    (
        _mm256_or_si256(lo, q5k_fifth_bits(qh, 2 * c)),
        _mm256_or_si256(hi, q5k_fifth_bits(qh, 2 * c + 1)),
    )
}

/// 8 rows × one Q4_K or Q5_K block, rows in lanes.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct PanelK45 {
    /// Group `g`: elements `4g..4g+4` (0..=15 for Q4_K, 0..=31 for Q5_K) of each row.
    q: [[u8; 32]; QK_K / 4],
    /// Sub-block `j`'s scale of row `r` in both i16 halves of lane `r`.
    sc: [[u8; 32]; 8],
    /// Sub-block `j`'s minimum of row `r` in both i16 halves of lane `r` (against the two
    /// 16-element activation sums of sub-block `j`).
    mn: [[u8; 32]; 8],
    d: [f32; 8],
    dmin: [f32; 8],
}

const ZERO_K45: PanelK45 = PanelK45 {
    q: [[0; 32]; QK_K / 4],
    sc: [[0; 32]; 8],
    mn: [[0; 32]; 8],
    d: [0.0; 8],
    dmin: [0.0; 8],
};

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_k45<X: HeaderK45>(
    rows: [&[X]; 8],
    b0: usize,
    out: &mut [PanelK45],
    quants: impl Fn(&X, usize) -> (__m256i, __m256i),
) {
    for (i, p) in out.iter_mut().enumerate() {
        let blocks: [&X; 8] = std::array::from_fn(|r| &rows[r][b0 + i]);
        for (c, groups) in p.q.chunks_exact_mut(16).enumerate() {
            let q: [(__m256i, __m256i); 8] = std::array::from_fn(|r| quants(blocks[r], c));
            let (g0, g1) = groups.split_at_mut(8);
            store_transposed(q.map(|q| q.0), g0);
            store_transposed(q.map(|q| q.1), g1);
        }
        let mut sc = [[0i16; 8]; 8];
        let mut mn = [[0i16; 8]; 8];
        for (r, x) in blocks.iter().enumerate() {
            let (d, dmin, scales) = x.header();
            let (s, m) = k4_scales_mins(scales);
            for j in 0..8 {
                sc[j][r] = ((s >> (8 * j)) & 0xFF) as i16;
                mn[j][r] = ((m >> (8 * j)) & 0xFF) as i16;
            }
            p.d[r] = f16_to_f32(d);
            p.dmin[r] = f16_to_f32(dmin);
        }
        for j in 0..8 {
            p.sc[j] = pair16(sc[j]);
            p.mn[j] = pair16(mn[j]);
        }
    }
}

/// Accumulates blocks `b0..b0 + panel.len()` of 8 rows against `NR` activation rows.
///
/// Each `maddubs` i16 is a pair `q·y + q'·y'` with |y| ≤ 128; the pairs of a sub-block's 8
/// groups are summed in i16 `8 / SPLIT` groups at a time, then widened by the scale's `madd`:
/// Q4_K (q ≤ 15, `SPLIT` 1): |pair| ≤ 2·15·128 = 3840, 8 of them ≤ 30720; Q5_K (q ≤ 31,
/// `SPLIT` 2): |pair| ≤ 2·31·128 = 7936, 4 of them ≤ 31744. Both fit i16 (and no pair
/// saturates `maddubs`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_k45<const SPLIT: usize>(
    panel: &[PanelK45],
    b0: usize,
    acts: [&[BlockQ8K]; NR],
    acc: &mut [[[f32; 8]; 2]],
) {
    const { assert!(SPLIT == 1 || SPLIT == 2) };
    for (i, p) in panel.iter().enumerate() {
        let ys: [&BlockQ8K; NR] = std::array::from_fn(|t| &acts[t][b0 + i]);
        let mut sumi = [_mm256_setzero_si256(); NR];
        for j in 0..8 {
            let sc = ld(&p.sc[j]);
            for h in 0..SPLIT {
                let mut s16 = [_mm256_setzero_si256(); NR];
                for g in 8 * h / SPLIT..8 * (h + 1) / SPLIT {
                    let w = ld(&p.q[8 * j + g]);
                    for t in 0..NR {
                        let prod = _mm256_maddubs_epi16(w, bcast4(&ys[t].qs, 32 * j + 4 * g));
                        s16[t] = _mm256_add_epi16(s16[t], prod);
                    }
                }
                for t in 0..NR {
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s16[t], sc));
                }
            }
        }
        let d = ld_ps(&p.d);
        let dmin = ld_ps(&p.dmin);
        for t in 0..NR {
            let y = ys[t];
            let mut summ = _mm256_setzero_si256();
            for j in 0..8 {
                let b = [y.bsums[2 * j], y.bsums[2 * j + 1]];
                let b = _mm256_set1_epi32(i32::from_le_bytes([b[0][0], b[0][1], b[1][0], b[1][1]]));
                summ = _mm256_add_epi32(summ, _mm256_madd_epi16(ld(&p.mn[j]), b));
            }
            let yd = _mm256_set1_ps(y.d());
            let a = &mut acc[t];
            let s = _mm256_fmadd_ps(
                _mm256_mul_ps(d, yd),
                _mm256_cvtepi32_ps(sumi[t]),
                ld_ps(&a[0]),
            );
            st_ps(&mut a[0], s);
            let m = _mm256_fmadd_ps(
                _mm256_mul_ps(dmin, yd),
                _mm256_cvtepi32_ps(summ),
                ld_ps(&a[1]),
            );
            st_ps(&mut a[1], m);
        }
    }
}

/// The exact per-block integers of one Q4_K/Q5_K row against one activation row, K in lanes:
/// `(Σ_j sc_j·Σ q·y, Σ_j mn_j·bsum_j)` spread over 8 lanes each.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn k45_block_lanes<X: HeaderK45>(
    x: &X,
    y: &BlockQ8K,
    quants: impl Fn(&X, usize) -> (__m256i, __m256i),
) -> (__m256i, __m256i) {
    let (sc, mn) = k4_scales_mins(x.header().2);
    let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
    let b = load256(y.bsums.as_flattened());
    // |bsum| ≤ 16·128: the pairwise sums (32-element sums) fit i16.
    let b32 = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
    let summ = _mm256_zextsi128_si256(_mm_madd_epi16(mins, b32));
    let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
    let mut sumi = _mm256_setzero_si256();
    for c in 0..4 {
        let (q0, q1) = quants(x, c);
        let y0 = load256(&y.qs[64 * c..]);
        let y1 = load256(&y.qs[64 * c + 32..]);
        let s0 = _mm256_shuffle_epi8(
            scales,
            _mm256_set1_epi16(0x0100 * (4 * c as i16 + 1) + 4 * c as i16),
        );
        let s1 = _mm256_shuffle_epi8(
            scales,
            _mm256_set1_epi16(0x0100 * (4 * c as i16 + 3) + 4 * c as i16 + 2),
        );
        // Pairs q·y ≤ 2·31·128 (q ≤ 15 for Q4_K, ≤ 31 for Q5_K): no saturation; times a
        // 6-bit scale, i32.
        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, y0), s0);
        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, y1), s1);
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    (sumi, summ)
}

/// One Q4_K/Q5_K row against one activation row (`vec_dot`): the float chains of the module
/// doc, block by block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot_k45<X: HeaderK45>(
    w: &[X],
    a: &[BlockQ8K],
    quants: impl Fn(&X, usize) -> (__m256i, __m256i),
) -> f32 {
    // Lanes: [the chain, the minimums' chain, unused, unused]: one horizontal reduction and
    // one fma for both (each lane the same f32 multiply and fma as a scalar chain).
    let mut acc = _mm_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        prefetch_ahead(x, PREFETCH_AHEAD);
        let (sumi, summ) = k45_block_lanes(x, y, &quants);
        // [Σ sumi, Σ summ, …]: exact i32 sums.
        let f = fold_pairs(sumi, summ);
        let ints = _mm_hadd_epi32(f, f);
        let (d, dmin, _) = x.header();
        acc = chain_lanes(acc, y.d(), [d, dmin, [0; 2], [0; 2]], ints);
    }
    let v = lanes_f32(acc);
    v[0] - v[1]
}

/// Two Q4_K/Q5_K rows, each with the bits of [`dot_k45`]: one horizontal reduction for both,
/// and the two rows' float chains and minimum chains in the lanes of one vector (the same f32
/// multiply and fma per lane).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn dot2_k45<X: HeaderK45>(
    w: [&[X]; 2],
    a: &[BlockQ8K],
    quants: impl Fn(&X, usize) -> (__m256i, __m256i),
) -> [f32; 2] {
    // Lanes: [row 0, row 1, row 0's minimums, row 1's].
    let mut acc = _mm_setzero_ps();
    for ((x0, x1), y) in w[0].iter().zip(w[1]).zip(a) {
        prefetch_ahead(x0, PREFETCH_AHEAD);
        prefetch_ahead(x1, PREFETCH_AHEAD);
        let (s0, m0) = k45_block_lanes(x0, y, &quants);
        let (s1, m1) = k45_block_lanes(x1, y, &quants);
        // [Σ s0, Σ s1, Σ m0, Σ m1]: exact i32 sums in another order.
        let ints = _mm_hadd_epi32(fold_pairs(s0, s1), fold_pairs(m0, m1));
        let ((d0, dmin0, _), (d1, dmin1, _)) = (x0.header(), x1.header());
        acc = chain_lanes(acc, y.d(), [d0, d1, dmin0, dmin1], ints);
    }
    let v = lanes_f32(acc);
    [v[0] - v[2], v[1] - v[3]]
}

/// One Q4_K row against one activation row (`vec_dot`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q4_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    dot_k45(w, a, |x, c| q4k_quants(&x.qs, c))
}

/// Two Q4_K rows, each with the bits of [`dot_q4_k`].
#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q4_k(w: [&[BlockQ4K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    dot2_k45(w, a, |x, c| q4k_quants(&x.qs, c))
}

/// One Q5_K row against one activation row (`vec_dot`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q5_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    dot_k45(w, a, |x, c| q5k_quants(x, c))
}

/// Two Q5_K rows, each with the bits of [`dot_q5_k`].
#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q5_k(w: [&[BlockQ5K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    dot2_k45(w, a, |x, c| q5k_quants(x, c))
}

/// One block's step of up to four float chains kept in the lanes of `acc` (two rows' chains and
/// their minimums' chains, say): lane `i` becomes `fma(d_a·f16(scale[i]), float(ints[i]),
/// acc[i])`, the f32 multiply and fma a scalar chain does, so every lane keeps that chain's
/// bits. Lanes a caller does not use get scale 0 and are ignored.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn chain_lanes(
    acc: __m128,
    d_a: f32,
    scale: [[u8; 2]; 4],
    ints: __m128i,
) -> __m128 {
    let h = |b: [u8; 2]| u16::from_le_bytes(b) as i64;
    let bits = h(scale[0]) | h(scale[1]) << 16 | h(scale[2]) << 32 | h(scale[3]) << 48;
    let d = _mm_mul_ps(_mm_set1_ps(d_a), _mm_cvtph_ps(_mm_cvtsi64_si128(bits)));
    _mm_fmadd_ps(d, _mm_cvtepi32_ps(ints), acc)
}

/// The four lanes of `v`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn lanes_f32(v: __m128) -> [f32; 4] {
    let mut out = [0f32; 4];
    // SAFETY: `out` is 4 writable f32; no alignment needed.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
    out
}

/// [a, a', b, b'] whose sums a + a' and b + b' are the sums of the 8 i32 lanes of `a` and `b`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn fold_pairs(a: __m256i, b: __m256i) -> __m128i {
    let s = _mm256_hadd_epi32(a, b);
    _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s))
}

// ---------------------------------------------------------------------------------------------
// Q6_K.

/// 8 rows × one Q6_K block, rows in lanes.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct PanelQ6K {
    /// Group `g`: elements `4g..4g+4` (0..=63, not yet minus 32) of each row.
    q: [[u8; 32]; QK_K / 4],
    /// 16-element sub-block `h`'s scale of row `r` in both i16 halves of lane `r`.
    sc: [[u8; 32]; 16],
    /// Scales of sub-blocks `2k` and `2k + 1` of row `r` in lane `r` (for the offset term).
    sc2: [[u8; 32]; 8],
    d: [f32; 8],
}

const ZERO_Q6K: PanelQ6K = PanelQ6K {
    q: [[0; 32]; QK_K / 4],
    sc: [[0; 32]; 16],
    sc2: [[0; 32]; 8],
    d: [0.0; 8],
};

/// Elements `32k..32k+32` of a Q6_K block as quants 0..=63, element order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6k_quants(x: &BlockQ6K, k: usize) -> __m256i {
    let (h, k) = (k / 4, k % 4);
    // Element 128h + 32k + l: its low 4 bits are the low (k < 2) or high (k >= 2) nibble of
    // ql[64h + 32(k % 2) + l], its top 2 bits are bits 2k, 2k + 1 of qh[32h + l].
    let l = load256(&x.ql[64 * h + 32 * (k % 2)..]);
    let l = if k < 2 { l } else { _mm256_srli_epi16::<4>(l) };
    let qh = load256(&x.qh[32 * h..]);
    let hi = match k {
        0 => _mm256_slli_epi16::<4>(qh),
        1 => _mm256_slli_epi16::<2>(qh),
        2 => qh,
        _ => _mm256_srli_epi16::<2>(qh),
    };
    _mm256_or_si256(
        _mm256_and_si256(l, _mm256_set1_epi8(0x0F)),
        _mm256_and_si256(hi, _mm256_set1_epi8(0x30)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn pack_q6k(rows: [&[BlockQ6K]; 8], b0: usize, out: &mut [PanelQ6K]) {
    for (i, p) in out.iter_mut().enumerate() {
        let blocks: [&BlockQ6K; 8] = std::array::from_fn(|r| &rows[r][b0 + i]);
        for (k, groups) in p.q.chunks_exact_mut(8).enumerate() {
            store_transposed(std::array::from_fn(|r| q6k_quants(blocks[r], k)), groups);
        }
        for h in 0..16 {
            p.sc[h] = pair16(std::array::from_fn(|r| blocks[r].scales[h] as i16));
        }
        for k in 0..8 {
            p.sc2[k] = two16(
                std::array::from_fn(|r| blocks[r].scales[2 * k] as i16),
                std::array::from_fn(|r| blocks[r].scales[2 * k + 1] as i16),
            );
        }
        for (r, x) in blocks.iter().enumerate() {
            p.d[r] = f16_to_f32(x.d);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q6k(panel: &[PanelQ6K], b0: usize, acts: [&[BlockQ8K]; NR], acc: &mut [[[f32; 8]; 2]]) {
    for (i, p) in panel.iter().enumerate() {
        let ys: [&BlockQ8K; NR] = std::array::from_fn(|t| &acts[t][b0 + i]);
        let mut sumi = [_mm256_setzero_si256(); NR];
        for h in 0..16 {
            // Two groups per i16 sum: each pair ≤ 2·63·128, two of them ≤ 32256.
            let mut s16 = [[_mm256_setzero_si256(); 2]; NR];
            for g in 0..4 {
                let w = ld(&p.q[4 * h + g]);
                for t in 0..NR {
                    let prod = _mm256_maddubs_epi16(w, bcast4(&ys[t].qs, 16 * h + 4 * g));
                    s16[t][g / 2] = _mm256_add_epi16(s16[t][g / 2], prod);
                }
            }
            let sc = ld(&p.sc[h]);
            for t in 0..NR {
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(s16[t][0], sc),
                    _mm256_madd_epi16(s16[t][1], sc),
                );
                sumi[t] = _mm256_add_epi32(sumi[t], s);
            }
        }
        let d = ld_ps(&p.d);
        for t in 0..NR {
            let y = ys[t];
            // −32·Σ_h sc_h·bsum_h, the quants' offset.
            let mut off = _mm256_setzero_si256();
            for k in 0..8 {
                let b = [y.bsums[2 * k], y.bsums[2 * k + 1]];
                let b = _mm256_set1_epi32(i32::from_le_bytes([b[0][0], b[0][1], b[1][0], b[1][1]]));
                off = _mm256_add_epi32(off, _mm256_madd_epi16(ld(&p.sc2[k]), b));
            }
            let s = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32::<5>(off));
            let a = &mut acc[t];
            let v = _mm256_fmadd_ps(
                _mm256_mul_ps(d, _mm256_set1_ps(y.d())),
                _mm256_cvtepi32_ps(s),
                ld_ps(&a[0]),
            );
            st_ps(&mut a[0], v);
        }
    }
}

/// The exact integer of one Q6_K block against one activation block, K in lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q6k_block_lanes(x: &BlockQ6K, y: &BlockQ8K) -> __m256i {
    let scales = load128(&x.scales);
    let mut sumi = _mm256_setzero_si256();
    for k in 0..QK_K / 32 {
        let q = q6k_quants(x, k);
        let yv = load256(&y.qs[32 * k..]);
        // Pairs q·y ≤ 2·63·128 fit i16; times an i8 scale, i32.
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, yv), scale_pair_i16(scales, k));
        sumi = _mm256_add_epi32(sumi, p);
    }
    // −32·Σ_h sc_h·bsum_h.
    let off = _mm256_madd_epi16(
        _mm256_cvtepi8_epi16(scales),
        load256(y.bsums.as_flattened()),
    );
    _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(off))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q6_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in w.iter().zip(a) {
        prefetch_ahead(x, PREFETCH_AHEAD);
        let s = hsum_epi32(q6k_block_lanes(x, y));
        acc = (f16_to_f32(x.d) * y.d()).mul_add(s as f32, acc);
    }
    acc
}

/// Two Q6_K rows, each with the bits of [`dot_q6_k`]: one horizontal reduction for both, and
/// the two float chains in the lanes of one vector.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q6_k(w: [&[BlockQ6K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    let mut acc = _mm_setzero_ps();
    for ((x0, x1), y) in w[0].iter().zip(w[1]).zip(a) {
        prefetch_ahead(x0, PREFETCH_AHEAD);
        prefetch_ahead(x1, PREFETCH_AHEAD);
        let s = fold_pairs(q6k_block_lanes(x0, y), q6k_block_lanes(x1, y));
        // [Σ row 0, Σ row 1, …]: exact i32 sums in another order.
        let ints = _mm_hadd_epi32(s, s);
        acc = chain_lanes(acc, y.d(), [x0.d, x1.d, [0; 2], [0; 2]], ints);
    }
    let v = lanes_f32(acc);
    [v[0], v[1]]
}

// ---------------------------------------------------------------------------------------------
// Q2_K and Q3_K: 16 sub-blocks of 16 elements, the same 2-bit low quants (element
// `128h + 32k + l` is bits `2k, 2k + 1` of `qs[32h + l]`); Q3_K adds a third bit (`hmask`) and
// signed 6-bit scales, Q2_K has 4-bit scales and minimums. The kernels work on `q + 4` (0..=7)
// for Q3_K's signed quants (−4..=3) and subtract `4·Σ_j sc_j·bsum_j` (the activation's sums
// over the 16-element sub-blocks, which the quantizer stores): `Σ q·y = Σ (q + 4)·y − 4·Σ y`,
// an exact integer identity.
//
// Integer bounds (|y| ≤ 128, 16 sub-blocks of 16 elements): Q2_K `|Σ q·y| ≤ 16·3·128 = 6144`
// per sub-block, times a scale ≤ 15, 16 of them: |sumi| ≤ 1474560; `|summ| ≤ 16·15·2048 =
// 491520`. Q3_K: `|Σ q·y| ≤ 16·4·128 = 8192` per sub-block, times |scale − 32| ≤ 32, 16 of
// them: |sumi| ≤ 4194304 = 2^22. All exact in i32, and below 2^24, so exact in f32 too.

/// Elements `32k..32k+32` (k in 0..8) of a Q2_K/Q3_K block's 2-bit quants, 0..=3.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q2_bits(qs: &[u8; QK_K / 4], k: usize) -> __m256i {
    let v = load256(&qs[32 * (k / 4)..]);
    let v = match k % 4 {
        0 => v,
        1 => _mm256_srli_epi16::<2>(v),
        2 => _mm256_srli_epi16::<4>(v),
        _ => _mm256_srli_epi16::<6>(v),
    };
    _mm256_and_si256(v, _mm256_set1_epi8(0x03))
}

/// 4 in byte `l` where bit `k` of byte `l` of `hm` (Q3_K's `hmask`) is set, else 0: the third
/// bit of element `32k + l`, as the 4 of `q + 4`. (Shifting the 16-bit lanes by at most 5
/// brings no bit of the other byte to bit 2 or 10.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q3k_high_bits(hm: __m256i, k: usize) -> __m256i {
    let s = match k {
        0 => _mm256_slli_epi16::<2>(hm),
        1 => _mm256_slli_epi16::<1>(hm),
        2 => hm,
        3 => _mm256_srli_epi16::<1>(hm),
        4 => _mm256_srli_epi16::<2>(hm),
        5 => _mm256_srli_epi16::<3>(hm),
        6 => _mm256_srli_epi16::<4>(hm),
        _ => _mm256_srli_epi16::<5>(hm),
    };
    _mm256_and_si256(s, _mm256_set1_epi8(0x04))
}

/// Elements `32k..32k+32` of a Q3_K block as `q + 4`, 0..=7 (`hm` its `hmask`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q3k_quants(x: &BlockQ3K, hm: __m256i, k: usize) -> __m256i {
    _mm256_or_si256(q2_bits(&x.qs, k), q3k_high_bits(hm, k))
}

/// 8 rows × one Q2_K or Q3_K block, rows in lanes.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct PanelK23 {
    /// Group `g`: elements `4g..4g+4` of each row: Q2_K's q (0..=3), Q3_K's q + 4 (0..=7).
    q: [[u8; 32]; QK_K / 4],
    /// Sub-block `h`'s scale of row `r` in both i16 halves of lane `r` (Q2_K: 0..=15, Q3_K:
    /// `scale − 32`, −32..=31).
    sc: [[u8; 32]; 16],
    /// Against the activation sums of sub-blocks `2k` and `2k + 1`: their minimums (Q2_K) or
    /// scales (Q3_K, for the offset of `q + 4`) of row `r` in lane `r`.
    off: [[u8; 32]; 8],
    d: [f32; 8],
    /// Q2_K's `dmin`.
    dmin: [f32; 8],
}

const ZERO_K23: PanelK23 = PanelK23 {
    q: [[0; 32]; QK_K / 4],
    sc: [[0; 32]; 16],
    off: [[0; 32]; 8],
    d: [0.0; 8],
    dmin: [0.0; 8],
};

/// The 16 i16 values of each of 8 rows (`v[r]`, sub-block order) laid out for a panel: lane `r`
/// of `pairs[k]` = `[v_r[2k], v_r[2k + 1]]`, and when `dup` is given, lane `r` of `dup[h]` =
/// `[v_r[h], v_r[h]]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn store_sub_block_i16(
    v: [__m256i; 8],
    pairs: Option<&mut [[u8; 32]; 8]>,
    dup: Option<&mut [[u8; 32]; 16]>,
) {
    // Lane k of v[r] is [v_r[2k], v_r[2k + 1]]: transposed, lane r of t[k].
    let t = transpose8(v);
    if let Some(pairs) = pairs {
        for (o, &x) in pairs.iter_mut().zip(&t) {
            st(o, x);
        }
    }
    if let Some(dup) = dup {
        for (o, &x) in dup.chunks_exact_mut(2).zip(&t) {
            let lo =
                _mm256_shufflehi_epi16::<0b10_10_00_00>(_mm256_shufflelo_epi16::<0b10_10_00_00>(x));
            let hi =
                _mm256_shufflehi_epi16::<0b11_11_01_01>(_mm256_shufflelo_epi16::<0b11_11_01_01>(x));
            st(&mut o[0], lo);
            st(&mut o[1], hi);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn pack_q2k(rows: [&[BlockQ2K]; 8], b0: usize, out: &mut [PanelK23]) {
    for (i, p) in out.iter_mut().enumerate() {
        let blocks: [&BlockQ2K; 8] = std::array::from_fn(|r| &rows[r][b0 + i]);
        for (k, groups) in p.q.chunks_exact_mut(8).enumerate() {
            store_transposed(std::array::from_fn(|r| q2_bits(&blocks[r].qs, k)), groups);
        }
        let packed: [__m128i; 8] = std::array::from_fn(|r| load128(&blocks[r].scales));
        let m4 = _mm_set1_epi8(0x0F);
        let nib = |f: &dyn Fn(__m128i) -> __m128i| packed.map(|s| _mm256_cvtepu8_epi16(f(s)));
        store_sub_block_i16(nib(&|s| _mm_and_si128(s, m4)), None, Some(&mut p.sc));
        let mins = nib(&|s| _mm_and_si128(_mm_srli_epi16::<4>(s), m4));
        store_sub_block_i16(mins, Some(&mut p.off), None);
        st_ps(&mut p.d, f16x8(|r| blocks[r].d));
        st_ps(&mut p.dmin, f16x8(|r| blocks[r].dmin));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn pack_q3k(rows: [&[BlockQ3K]; 8], b0: usize, out: &mut [PanelK23]) {
    for (i, p) in out.iter_mut().enumerate() {
        let blocks: [&BlockQ3K; 8] = std::array::from_fn(|r| &rows[r][b0 + i]);
        let hm: [__m256i; 8] = std::array::from_fn(|r| load256(&blocks[r].hmask));
        for (k, groups) in p.q.chunks_exact_mut(8).enumerate() {
            store_transposed(
                std::array::from_fn(|r| q3k_quants(blocks[r], hm[r], k)),
                groups,
            );
        }
        let sc: [__m256i; 8] = std::array::from_fn(|r| {
            let [w0, w1, w2, w3] = q3_k_scale_words(&blocks[r].scales);
            let s = _mm_setr_epi32(w0 as i32, w1 as i32, w2 as i32, w3 as i32);
            _mm256_cvtepi8_epi16(_mm_sub_epi8(s, _mm_set1_epi8(32)))
        });
        store_sub_block_i16(sc, Some(&mut p.off), Some(&mut p.sc));
        st_ps(&mut p.d, f16x8(|r| blocks[r].d));
    }
}

/// Accumulates blocks `b0..b0 + panel.len()` of 8 Q2_K (`Q3` false) or Q3_K rows against `NR`
/// activation rows, the float chains of [`dot_q2_k`] and [`dot_q3_k`] (Q3_K's in `acc[t][0]`
/// only, `acc[t][1]` staying 0).
///
/// Each `maddubs` i16 is a pair `q·y + q'·y'` with |y| ≤ 128, q ≤ 3 (Q2_K) or q + 4 ≤ 7
/// (Q3_K): |pair| ≤ 2·7·128 = 1792, no saturation; a sub-block's 4 groups are summed in i16
/// (≤ 4·1792 = 7168) and widened by the scale's `madd`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_k23<const Q3: bool>(
    panel: &[PanelK23],
    b0: usize,
    acts: [&[BlockQ8K]; NR],
    acc: &mut [[[f32; 8]; 2]],
) {
    for (i, p) in panel.iter().enumerate() {
        let ys: [&BlockQ8K; NR] = std::array::from_fn(|t| &acts[t][b0 + i]);
        let mut sumi = [_mm256_setzero_si256(); NR];
        for h in 0..16 {
            let mut s16 = [_mm256_setzero_si256(); NR];
            for g in 0..4 {
                let w = ld(&p.q[4 * h + g]);
                for t in 0..NR {
                    let prod = _mm256_maddubs_epi16(w, bcast4(&ys[t].qs, 16 * h + 4 * g));
                    s16[t] = _mm256_add_epi16(s16[t], prod);
                }
            }
            let sc = ld(&p.sc[h]);
            for t in 0..NR {
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(s16[t], sc));
            }
        }
        let d = ld_ps(&p.d);
        for t in 0..NR {
            let y = ys[t];
            // Q2_K: Σ_j mn_j·bsum_j; Q3_K: Σ_j sc_j·bsum_j (|sc·bsum| ≤ 32·2048).
            let mut off = _mm256_setzero_si256();
            for k in 0..8 {
                let b = [y.bsums[2 * k], y.bsums[2 * k + 1]];
                let b = _mm256_set1_epi32(i32::from_le_bytes([b[0][0], b[0][1], b[1][0], b[1][1]]));
                off = _mm256_add_epi32(off, _mm256_madd_epi16(ld(&p.off[k]), b));
            }
            let yd = _mm256_set1_ps(y.d());
            let a = &mut acc[t];
            if Q3 {
                let s = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32::<2>(off));
                let v = _mm256_fmadd_ps(_mm256_mul_ps(yd, d), _mm256_cvtepi32_ps(s), ld_ps(&a[0]));
                st_ps(&mut a[0], v);
            } else {
                let v = _mm256_fmadd_ps(
                    _mm256_mul_ps(yd, d),
                    _mm256_cvtepi32_ps(sumi[t]),
                    ld_ps(&a[0]),
                );
                st_ps(&mut a[0], v);
                let m = _mm256_fmadd_ps(
                    _mm256_mul_ps(yd, ld_ps(&p.dmin)),
                    _mm256_cvtepi32_ps(off),
                    ld_ps(&a[1]),
                );
                st_ps(&mut a[1], m);
            }
        }
    }
}

/// The 16 i16 `scales` (sub-block order) with each 128-bit half broadcast: `[sub-blocks 0..8 in
/// both halves, sub-blocks 8..16 in both halves]`, for [`scale_pair16`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale_halves(scales: __m256i) -> [__m256i; 2] {
    [
        _mm256_permute2x128_si256::<0x00>(scales, scales),
        _mm256_permute2x128_si256::<0x11>(scales, scales),
    ]
}

/// The scales of sub-blocks `2k` (elements `32k..32k+16`) and `2k + 1` (`32k+16..32k+32`) as 16
/// i16, matching the pair sums of `maddubs` on elements `32k..32k+32`: one in-lane shuffle.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scale_pair16(halves: &[__m256i; 2], k: usize) -> __m256i {
    let i16_at = |j: usize| 0x0100 * (2 * j as i16 + 1) + 2 * j as i16;
    let j = 2 * k % 8;
    _mm256_shuffle_epi8(
        halves[k / 4],
        _mm256_set_m128i(_mm_set1_epi16(i16_at(j + 1)), _mm_set1_epi16(i16_at(j))),
    )
}

/// The exact integers of one Q2_K block against one activation block, K in lanes:
/// `(Σ_j sc_j·Σ q·y, Σ_j mn_j·bsum_j)` spread over 8 lanes each.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q2k_block_lanes(x: &BlockQ2K, y: &BlockQ8K) -> (__m256i, __m256i) {
    let packed = load128(&x.scales);
    let m4 = _mm_set1_epi8(0x0F);
    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), m4));
    let summ = _mm256_madd_epi16(mins, load256(y.bsums.as_flattened()));
    let scales = scale_halves(_mm256_cvtepu8_epi16(_mm_and_si128(packed, m4)));
    let mut sumi = _mm256_setzero_si256();
    for k in 0..QK_K / 32 {
        // Pairs q·y ≤ 2·3·128 fit i16; times a 4-bit scale, i32.
        let p = _mm256_maddubs_epi16(q2_bits(&x.qs, k), load256(&y.qs[32 * k..]));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair16(&scales, k)));
    }
    (sumi, summ)
}

/// The 16 6-bit scales of a Q3_K block (0..=63, byte `j` = scale `j`), unpacked in vector
/// registers: scalar unpacking plus four inserts cost a third of the whole Q3_K dot (measured).
/// Scale `j`'s low 4 bits are nibble `j / 8` of byte `j % 8`, its top 2 bits are bits
/// `2·(j / 4)` of byte `8 + j % 4`; in 32-bit words, scales `4i..4i+4` are
/// `(a_{i%2} >> 4·(i/2)) & 0x0F0F0F0F | ((h >> 2i) & 0x03030303) << 4` with `a_0, a_1` the first
/// two words and `h` the third.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q3k_scales(s: &[u8; 12]) -> __m128i {
    let a = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    let h = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let v = _mm_insert_epi32::<2>(_mm_cvtsi64_si128(a as i64), h as i32);
    let low = _mm_srlv_epi32(
        _mm_shuffle_epi32::<0b01_00_01_00>(v),
        _mm_setr_epi32(0, 0, 4, 4),
    );
    let top = _mm_srlv_epi32(
        _mm_shuffle_epi32::<0b10_10_10_10>(v),
        _mm_setr_epi32(0, 2, 4, 6),
    );
    _mm_or_si128(
        _mm_and_si128(low, _mm_set1_epi8(0x0F)),
        _mm_slli_epi32::<4>(_mm_and_si128(top, _mm_set1_epi8(0x03))),
    )
}

/// The exact integer `Σ_j (scale_j − 32)·Σ q·y` of one Q3_K block against one activation block,
/// K in lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q3k_block_lanes(x: &BlockQ3K, y: &BlockQ8K) -> __m256i {
    // The 16 scales minus 32, −32..=31, as i8 in sub-block order.
    let scales = _mm256_cvtepi8_epi16(_mm_sub_epi8(q3k_scales(&x.scales), _mm_set1_epi8(32)));
    let halves = scale_halves(scales);
    let hm = load256(&x.hmask);
    let mut sumi = _mm256_setzero_si256();
    for k in 0..QK_K / 32 {
        // Pairs (q + 4)·y ≤ 2·7·128 fit i16; times a scale of magnitude ≤ 32, i32.
        let p = _mm256_maddubs_epi16(q3k_quants(x, hm, k), load256(&y.qs[32 * k..]));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair16(&halves, k)));
    }
    // −4·Σ_j sc_j·bsum_j (|sc·bsum| ≤ 32·2048).
    let off = _mm256_madd_epi16(scales, load256(y.bsums.as_flattened()));
    _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(off))
}

/// One Q2_K row against one activation row (`vec_dot`): the float chains of the module doc.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q2_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    // Lanes: [the chain, the minimums' chain, unused, unused] (each lane the same f32 multiply
    // and fma as a scalar chain).
    let mut acc = _mm_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        prefetch_ahead(x, PREFETCH_AHEAD);
        let (sumi, summ) = q2k_block_lanes(x, y);
        // [Σ sumi, Σ summ, …]: exact i32 sums.
        let f = fold_pairs(sumi, summ);
        let ints = _mm_hadd_epi32(f, f);
        acc = chain_lanes(acc, y.d(), [x.d, x.dmin, [0; 2], [0; 2]], ints);
    }
    let v = lanes_f32(acc);
    v[0] - v[1]
}

/// Two Q2_K rows, each with the bits of [`dot_q2_k`]: one horizontal reduction for both, and
/// the two rows' chains and minimum chains in the lanes of one vector.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q2_k(w: [&[BlockQ2K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    // Lanes: [row 0, row 1, row 0's minimums, row 1's].
    let mut acc = _mm_setzero_ps();
    for ((x0, x1), y) in w[0].iter().zip(w[1]).zip(a) {
        prefetch_ahead(x0, PREFETCH_AHEAD);
        prefetch_ahead(x1, PREFETCH_AHEAD);
        let (s0, m0) = q2k_block_lanes(x0, y);
        let (s1, m1) = q2k_block_lanes(x1, y);
        // [Σ s0, Σ s1, Σ m0, Σ m1]: exact i32 sums in another order.
        let ints = _mm_hadd_epi32(fold_pairs(s0, s1), fold_pairs(m0, m1));
        acc = chain_lanes(acc, y.d(), [x0.d, x1.d, x0.dmin, x1.dmin], ints);
    }
    let v = lanes_f32(acc);
    [v[0] - v[2], v[1] - v[3]]
}

/// One Q3_K row against one activation row (`vec_dot`): the float chain of the module doc.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q3_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in w.iter().zip(a) {
        prefetch_ahead(x, PREFETCH_AHEAD);
        let s = hsum_epi32(q3k_block_lanes(x, y));
        acc = (y.d() * f16_to_f32(x.d)).mul_add(s as f32, acc);
    }
    acc
}

/// Two Q3_K rows, each with the bits of [`dot_q3_k`]: one horizontal reduction for both, and
/// the two float chains in the lanes of one vector.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q3_k(w: [&[BlockQ3K]; 2], a: &[BlockQ8K]) -> [f32; 2] {
    let mut acc = _mm_setzero_ps();
    for ((x0, x1), y) in w[0].iter().zip(w[1]).zip(a) {
        prefetch_ahead(x0, PREFETCH_AHEAD);
        prefetch_ahead(x1, PREFETCH_AHEAD);
        let s = fold_pairs(q3k_block_lanes(x0, y), q3k_block_lanes(x1, y));
        // [Σ row 0, Σ row 1, …]: exact i32 sums in another order.
        let ints = _mm_hadd_epi32(s, s);
        acc = chain_lanes(acc, y.d(), [x0.d, x1.d, [0; 2], [0; 2]], ints);
    }
    let v = lanes_f32(acc);
    [v[0], v[1]]
}

// ---------------------------------------------------------------------------------------------
// Q5_0.

/// 8 rows × one Q5_0 block, rows in lanes.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct PanelQ5_0 {
    /// Group `g`: elements `4g..4g+4` (0..=31, not yet minus 16) of each row.
    q: [[u8; 32]; QK / 4],
    d: [f32; 8],
}

const ZERO_Q5_0: PanelQ5_0 = PanelQ5_0 {
    q: [[0; 32]; QK / 4],
    d: [0.0; 8],
};

/// A Q5_0 block's 32 quants, 0..=31, element order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5_0_quants(x: &BlockQ5_0) -> __m256i {
    _mm256_or_si256(
        nibbles_32(&x.qs),
        _mm256_and_si256(bits_set_32(x.qh), _mm256_set1_epi8(0x10)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn pack_q5_0(rows: [&[BlockQ5_0]; 8], b0: usize, out: &mut [PanelQ5_0]) {
    for (i, p) in out.iter_mut().enumerate() {
        let blocks: [&BlockQ5_0; 8] = std::array::from_fn(|r| &rows[r][b0 + i]);
        store_transposed(std::array::from_fn(|r| q5_0_quants(blocks[r])), &mut p.q);
        let h: [u16; 8] = std::array::from_fn(|r| u16::from_le_bytes(blocks[r].d));
        // SAFETY: `h` is 8 readable u16 (16 bytes); no alignment needed.
        let hv = unsafe { _mm_loadu_si128(h.as_ptr().cast()) };
        st_ps(&mut p.d, _mm256_cvtph_ps(hv));
    }
}

/// The activation side data of block `b` of a Q8_0 row with aux: (d as f32, Σ q).
#[inline(always)]
fn aux_of(aux: &[u8], b: usize) -> (f32, i32) {
    let e = &aux[8 * b..8 * b + 8];
    (
        f32::from_le_bytes([e[0], e[1], e[2], e[3]]),
        i32::from_le_bytes([e[4], e[5], e[6], e[7]]),
    )
}

/// Block `b` of a Q8_0 activation row with its side data: (quants, d, unused).
#[inline(always)]
fn q8_0_act<'a>(row: &'a [u8], aux: &[u8], b: usize) -> (&'a [i8; 32], f32, f32) {
    (&as_blocks::<BlockQ8_0>(row)[b].qs, aux_of(aux, b).0, 0.0)
}

/// Block `b` of a Q8_1 activation row: (quants, d, s).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_1_act(row: &[u8], b: usize) -> (&[i8; 32], f32, f32) {
    let y = &as_blocks::<BlockQ8_1>(row)[b];
    (&y.qs, f16_to_f32(y.d), f16_to_f32(y.s))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q5_0(
    panel: &[PanelQ5_0],
    b0: usize,
    acts: [(&[BlockQ8_0], &[u8]); NR],
    acc: &mut [[[f32; 8]; 2]],
) {
    let ones = _mm256_set1_epi16(1);
    for (i, p) in panel.iter().enumerate() {
        let b = b0 + i;
        let ys: [&BlockQ8_0; NR] = std::array::from_fn(|t| &acts[t].0[b]);
        let mut s16 = [[_mm256_setzero_si256(); 2]; NR];
        for g in 0..QK / 4 {
            let w = ld(&p.q[g]);
            for t in 0..NR {
                // Each pair ≤ 2·31·128; four groups ≤ 31744: exact in i16.
                let prod = _mm256_maddubs_epi16(w, bcast4(&ys[t].qs, 4 * g));
                s16[t][g / 4] = _mm256_add_epi16(s16[t][g / 4], prod);
            }
        }
        let d = ld_ps(&p.d);
        for t in 0..NR {
            let (dy, sy) = aux_of(acts[t].1, b);
            let s = _mm256_add_epi32(
                _mm256_madd_epi16(s16[t][0], ones),
                _mm256_madd_epi16(s16[t][1], ones),
            );
            // Σ (q − 16)·y = Σ q·y − 16·Σ y.
            let s = _mm256_sub_epi32(s, _mm256_set1_epi32(16 * sy));
            let a = &mut acc[t];
            let v = _mm256_fmadd_ps(
                _mm256_mul_ps(d, _mm256_set1_ps(dy)),
                _mm256_cvtepi32_ps(s),
                ld_ps(&a[0]),
            );
            st_ps(&mut a[0], v);
        }
    }
}

/// One Q5_0 block against one Q8_0 block: `Σ (q − 16)·y` over 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5_0_block_lanes(x: &BlockQ5_0, y: &BlockQ8_0) -> __m256i {
    // q − 16 as i8: the nibble where the fifth bit is set, else the nibble | 0xF0.
    let clear = _mm256_andnot_si256(bits_set_32(x.qh), _mm256_set1_epi8(0xF0u8 as i8));
    let q = _mm256_or_si256(nibbles_32(&x.qs), clear);
    sum_i16_pairs(mul_small_i8(q, load256(&y.qs)))
}

/// A Q5_0 block's 32 quants, 0..=31, element order, with the 16 nibble bytes and the 4 high-bit
/// bytes broadcast from memory (load ports) and split by a per-lane variable shift, so that the
/// only shuffle-port operation is the byte spread of the high bits. (The decode kernel is
/// bound by that port.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q5_0_quants_lean(x: &BlockQ5_0) -> __m256i {
    // SAFETY: `x.qs` is 16 readable bytes; the load has no alignment requirement.
    let qs = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(x.qs.as_ptr().cast())) };
    // (A broadcast from memory: `qh` sits at offset 2 of the 22-byte block, so it is not 4-byte
    // aligned and may not be read through an `&f32`.)
    let qh = _mm256_set1_epi32(i32::from_le_bytes(x.qh));
    // Low lane: low nibbles (elements 0..16); high lane: high nibbles (16..32).
    let nib = _mm256_and_si256(
        _mm256_srlv_epi32(qs, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
        _mm256_set1_epi8(0x0F),
    );
    // Byte i takes byte i / 8 of qh, then tests bit i % 8.
    let spread = _mm256_shuffle_epi8(
        qh,
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_or_si256(nib, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q5_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in w.iter().zip(a) {
        let s = hsum_epi32(q5_0_block_lanes(x, y));
        acc = (f16_to_f32(x.d) * f16_to_f32(y.d)).mul_add(s as f32, acc);
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot8_q5_0(w: [&[BlockQ5_0]; 8], a: &[BlockQ8_0]) -> [f32; 8] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for (i, y) in a.iter().enumerate() {
        let yv = load256(&y.qs);
        // 16·(the activations' sums over each lane's 4 elements), subtracted from every row's
        // lanes: Σ (q − 16)·y = Σ q·y − 16·Σ y, with q in 0..=31 (pairs ≤ 2·31·128 in i16).
        let y16 = _mm256_slli_epi32::<4>(_mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_set1_epi8(1), yv),
            ones,
        ));
        let mut s = [_mm256_setzero_si256(); 8];
        for r in 0..8 {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q5_0_quants_lean(&w[r][i]), yv), ones);
            s[r] = _mm256_sub_epi32(p, y16);
        }
        // The 8 rows' f16 scales, put together in general registers (inserting them one by one
        // into a vector took ~16 shuffle-port operations per block, this kernel's bottleneck).
        let h = |r: usize| u16::from_le_bytes(w[r][i].d) as u64;
        let lo = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
        let hi = h(4) | h(5) << 16 | h(6) << 32 | h(7) << 48;
        let d = _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64));
        let sumi = _mm256_cvtepi32_ps(reduce8(&s));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(f16_to_f32(y.d))), sumi, acc);
    }
    let mut out = [0f32; 8];
    st_ps(&mut out, acc);
    out
}

// ---------------------------------------------------------------------------------------------
// The 32-element formats with lane sums: Q8_0, Q4_0 (against Q8_0), Q4_1, Q5_1 (against Q8_1).
//
// Their `vec_dot`s (in `x86_avx2.rs`) keep the float sums in lanes: block `b`'s 8 exact lane
// integers are scaled into one of two vector accumulators, `b & 1` picking which, the two are
// added and reduced at the end (`hsum_ps`), and Q4_1/Q5_1 add `Σ_b m·s` (one float chain in
// block order). A lane holds 4 elements: for Q8_0 elements 2l, 2l + 1, 16 + 2l, 17 + 2l
// ("halves"; the AVX-512 build's Q8_0 kernels sum 4l..4l + 4 with `vpdpbusd` instead, and its
// tile `tile_l32_bytes` reads the panel's biased bytes), for the nibble formats 4l..4l + 4
// ("quads"). The matrix kernel keeps that layout
// (K in lanes, two chains per pair of rows) and reuses instead each sign-extended weight block
// across the activation rows, and each activation block across the 8 rows of the group.

/// 8 rows × one 32-element block: each row's quants as two i16 vectors whose `madd` with the
/// activations' (laid out alike, see [`lanes_i16`]) add up to `vec_dot`'s lane integers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(in crate::quant) struct PanelL32 {
    /// Row `r`'s vector `h` at `q[r / 2][h][r % 2]`: rows `2k`, `2k + 1` side by side, so the
    /// AVX-512 tile loads them as one 512-bit vector.
    pub(in crate::quant) q: [[[[u8; 32]; 2]; 2]; MR / 2],
    pub(in crate::quant) d: [f32; 8],
    /// Q4_1/Q5_1: each row's minimum `m`.
    pub(in crate::quant) m: [f32; 8],
}

const ZERO_L32: PanelL32 = PanelL32 {
    q: [[[[0; 32]; 2]; 2]; MR / 2],
    d: [0.0; 8],
    m: [0.0; 8],
};

/// One activation row's accumulators for a row group: `v[b & 1][r]` the lane accumulator of
/// row `r` over the blocks `b` of that parity, `summs[r]` the `Σ m·s` chain.
#[derive(Clone, Copy)]
pub(in crate::quant) struct AccL32 {
    pub(in crate::quant) v: [[[f32; 8]; MR]; 2],
    pub(in crate::quant) summs: [f32; 8],
}

const ZERO_ACC_L32: AccL32 = AccL32 {
    v: [[[0.0; 8]; MR]; 2],
    summs: [0.0; 8],
};

/// Activation rows whose accumulators a row group keeps (in memory).
const TL32: usize = 32;

/// 32 quants (i8, element order) as two i16 vectors whose `madd`s with another block's (laid
/// out alike) add up, in position `j`, to the integer of lane `LANE[j]` of `vec_dot`, where
/// `LANE` is the identity for halves and `[0, 1, 4, 5, 2, 3, 6, 7]` for quads.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn lanes_i16<const QUADS: bool>(v: __m256i) -> [__m256i; 2] {
    let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
    let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v));
    if !QUADS {
        return [lo, hi];
    }
    // Per 128-bit half, i32 units (element pairs): [lo0, lo2, hi0, hi2] and [lo1, lo3, hi1,
    // hi3], so position j gets pairs 2j' and 2j' + 1 of one half: 4 consecutive elements.
    let (lo, hi) = (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi));
    [
        _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(lo, hi)),
        _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(lo, hi)),
    ]
}

/// The 8 f16 values `h(0..8)` as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16x8(h: impl Fn(usize) -> [u8; 2]) -> __m256 {
    let h = |r: usize| u16::from_le_bytes(h(r)) as u64;
    let lo = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
    let hi = h(4) | h(5) << 16 | h(6) << 32 | h(7) << 48;
    _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
}

/// Packs blocks `b0..b0 + out.len()` of 8 rows: `parts(block)` gives its 32 quants (i8,
/// element order), `d` and `m`. With `BYTES`, each row's quants are stored as the unsigned
/// bytes `q + 128` in element order, in `q[r / 2][0][r % 2]` (for AVX-512's `tile_l32_bytes`)
/// instead of as [`lanes_i16`] vectors.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn pack_l32<B, const QUADS: bool, const BYTES: bool>(
    rows: [&[B]; 8],
    b0: usize,
    out: &mut [PanelL32],
    parts: impl Fn(&B) -> (__m256i, [u8; 2], [u8; 2]),
) {
    for (i, p) in out.iter_mut().enumerate() {
        for r in 0..MR {
            let q = &mut p.q[r / 2];
            let quants = parts(&rows[r][b0 + i]).0;
            if BYTES {
                st(
                    &mut q[0][r % 2],
                    _mm256_xor_si256(quants, _mm256_set1_epi8(i8::MIN)),
                );
                continue;
            }
            let [lo, hi] = lanes_i16::<QUADS>(quants);
            st(&mut q[0][r % 2], lo);
            st(&mut q[1][r % 2], hi);
        }
        st_ps(&mut p.d, f16x8(|r| parts(&rows[r][b0 + i]).1));
        st_ps(&mut p.m, f16x8(|r| parts(&rows[r][b0 + i]).2));
    }
}

/// Blocks `b0..b0 + panel.len()` of 8 rows against one activation row, `act(b)` giving block
/// `b`'s 32 quants, `d` and `s` (Q8_1's sum; read only when `MIN`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn tile_l32<'a, const QUADS: bool, const MIN: bool>(
    panel: &[PanelL32],
    b0: usize,
    act: impl Fn(usize) -> (&'a [i8; 32], f32, f32),
    acc: &mut AccL32,
) {
    // One parity at a time: 8 accumulators live instead of 16.
    for (parity, acc) in acc.v.iter_mut().enumerate() {
        let mut a: [__m256; MR] = std::array::from_fn(|r| ld_ps(&acc[r]));
        let mut i = (parity ^ (b0 & 1)) & 1;
        while i < panel.len() {
            let p = &panel[i];
            let (yq, dy, _) = act(b0 + i);
            // SAFETY: `yq` is 32 readable bytes; no alignment needed.
            let [y0, y1] = lanes_i16::<QUADS>(unsafe { _mm256_loadu_si256(yq.as_ptr().cast()) });
            // d_w·d_a of each row, as `vec_dot`'s scalar product.
            let mut d = [0f32; 8];
            st_ps(&mut d, _mm256_mul_ps(ld_ps(&p.d), _mm256_set1_ps(dy)));
            for r in 0..MR {
                let q = &p.q[r / 2];
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(ld(&q[0][r % 2]), y0),
                    _mm256_madd_epi16(ld(&q[1][r % 2]), y1),
                );
                a[r] = _mm256_fmadd_ps(_mm256_set1_ps(d[r]), _mm256_cvtepi32_ps(s), a[r]);
            }
            i += 2;
        }
        for (dst, v) in acc.iter_mut().zip(a) {
            st_ps(dst, v);
        }
    }
    if MIN {
        tile_l32_mins(panel, b0, act, &mut acc.summs);
    }
}

/// The `Σ m·s` chain of Q4_1/Q5_1 over blocks `b0..b0 + panel.len()`, rows in lanes, in block
/// order (`act` as for [`tile_l32`]).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn tile_l32_mins<'a>(
    panel: &[PanelL32],
    b0: usize,
    act: impl Fn(usize) -> (&'a [i8; 32], f32, f32),
    summs: &mut [f32; 8],
) {
    let mut acc = ld_ps(summs);
    for (i, p) in panel.iter().enumerate() {
        let s = act(b0 + i).2;
        acc = _mm256_add_ps(acc, _mm256_mul_ps(ld_ps(&p.m), _mm256_set1_ps(s)));
    }
    st_ps(summs, acc);
}

/// The 8 rows' results from their accumulators: `hsum_ps(acc0 + acc1)` of `vec_dot` for each
/// (plus `summs` when `MIN`), done on the transposed vectors with the same additions.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn finish_l32<const QUADS: bool, const MIN: bool>(acc: &AccL32) -> [f32; 8] {
    let v: [__m256i; 8] = std::array::from_fn(|r| {
        _mm256_castps_si256(_mm256_add_ps(ld_ps(&acc.v[0][r]), ld_ps(&acc.v[1][r])))
    });
    // Lane r of t[j] = position j of row r's vector; l(k) = `vec_dot`'s lane k.
    let t = transpose8(v).map(|x| _mm256_castsi256_ps(x));
    let l = |k: usize| {
        t[if QUADS {
            [0, 1, 4, 5, 2, 3, 6, 7][k]
        } else {
            k
        }]
    };
    // hsum_ps: s_k = l_k + l_(k+4); (s_0 + s_2) + (s_1 + s_3).
    let s: [__m256; 4] = std::array::from_fn(|k| _mm256_add_ps(l(k), l(k + 4)));
    let mut sum = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
    if MIN {
        sum = _mm256_add_ps(sum, ld_ps(&acc.summs));
    }
    let mut out = [0f32; 8];
    st_ps(&mut out, sum);
    out
}

/// The matrix product of a 32-element format: for each group of 8 weight rows, each tile of
/// [`TL32`] activation rows, each chunk of blocks: pack the panel (once per group when the row
/// fits one chunk), then run every activation row of the tile over it (AVX-512's tile when
/// `WIDE`; its `vpdpbusd` tile on biased bytes when `BYTES` too, whose lanes are quads in
/// element order, finished like halves).
///
/// # Safety
/// When `WIDE`, the CPU must have AVX-512 F/BW/VL and VNNI. `BYTES` only with `WIDE`, without
/// `QUADS` or `MIN`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_l32<
    'a,
    B: super::super::Block,
    const QUADS: bool,
    const MIN: bool,
    const WIDE: bool,
    const BYTES: bool,
>(
    w: &[u8],
    rb: usize,
    nrows: usize,
    n_tok: usize,
    out: &mut GemmOut,
    parts: impl Fn(&B) -> (__m256i, [u8; 2], [u8; 2]),
    act: impl Fn(usize, usize) -> (&'a [i8; 32], f32, f32),
) {
    const CHUNK: usize = PANEL_BYTES / size_of::<PanelL32>();
    let nb = rb / size_of::<B>();
    let mut panel = [ZERO_L32; CHUNK];
    let mut acc = [ZERO_ACC_L32; TL32];
    let mut vals = [0f32; TL32 * MR];
    let one_chunk = nb <= CHUNK;
    for g0 in (0..nrows).step_by(MR) {
        // The next group's rows (the bytes right after these) while this one computes.
        prefetch(w, (g0 + MR) * rb, MR * rb);
        let rows = MR.min(nrows - g0);
        let group = group_rows::<B, MR>(w, rb, nrows, g0);
        if one_chunk {
            pack_l32::<B, QUADS, BYTES>(group, 0, &mut panel[..nb], &parts);
        }
        for t0 in (0..n_tok).step_by(TL32) {
            let tn = TL32.min(n_tok - t0);
            acc[..tn].iter_mut().for_each(|a| *a = ZERO_ACC_L32);
            for b0 in (0..nb).step_by(CHUNK) {
                let bn = CHUNK.min(nb - b0);
                if !one_chunk {
                    pack_l32::<B, QUADS, BYTES>(group, b0, &mut panel[..bn], &parts);
                }
                for (t, a) in acc[..tn].iter_mut().enumerate() {
                    let act = |b| act(t0 + t, b);
                    if BYTES {
                        // SAFETY: BYTES only with WIDE, where the caller guarantees AVX-512.
                        unsafe { avx512_gemm::tile_l32_bytes(&panel[..bn], b0, act, a) };
                    } else if WIDE {
                        // SAFETY: WIDE only where the caller guarantees AVX-512 (see `gemm_with`).
                        unsafe { avx512_gemm::tile_l32::<QUADS, MIN>(&panel[..bn], b0, act, a) };
                    } else {
                        tile_l32::<QUADS, MIN>(&panel[..bn], b0, act, a);
                    }
                }
            }
            for (v, a) in vals.chunks_exact_mut(rows).zip(&acc[..tn]) {
                v.copy_from_slice(&finish_l32::<QUADS, MIN>(a)[..rows]);
            }
            out(t0, g0, rows, &vals[..tn * rows]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drivers.

/// `out[r]` for rows `0..out.len()` of `w` against one activation row, G rows at a time by
/// `group` (in the strided order of [`strided_groups`]); rows past the last whole group go
/// through `one`. (Also the AVX-512 build's row driver.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn rows_by<B: super::super::Block, A: super::super::Block, const G: usize>(
    w: &[u8],
    rb: usize,
    act: &[u8],
    out: &mut [f32],
    group: impl Fn([&[B]; G], &[A]) -> [f32; G],
    one: impl Fn(&[B], &[A]) -> f32,
) {
    let a = as_blocks::<A>(act);
    let nrows = out.len().min(w.len() / rb.max(1));
    let done = strided_groups(w, rb, &mut out[..nrows], |rows| group(rows, a));
    for r in done..nrows {
        out[r] = one(as_blocks(&w[r * rb..(r + 1) * rb]), a);
    }
}

/// [`super::vec_dot_rows`] for the types of this module: `out[r]` = row `r` of `w` against
/// `act`, bit for bit the single-row dot. Returns false for other types.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) -> bool {
    match ty {
        // Two K-quant rows share the horizontal sums and run their float chains in one vector.
        GgmlType::Q4_K => rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q4_k(r, a),
            |r, a| dot_q4_k(r, a),
        ),
        GgmlType::Q5_K => rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q5_k(r, a),
            |r, a| dot_q5_k(r, a),
        ),
        GgmlType::Q6_K => rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q6_k(r, a),
            |r, a| dot_q6_k(r, a),
        ),
        GgmlType::Q3_K => rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q3_k(r, a),
            |r, a| dot_q3_k(r, a),
        ),
        GgmlType::Q2_K => rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot2_q2_k(r, a),
            |r, a| dot_q2_k(r, a),
        ),
        GgmlType::Q5_0 => rows_by(
            w,
            rb,
            act,
            out,
            |r, a| dot8_q5_0(r, a),
            |r, a| dot_q5_0(r, a),
        ),
        _ => return false,
    }
    true
}

/// The matrix product for the types of this module (see [`super::super::gemm`]): the weight
/// rows of `w` (`rb` bytes each) against `n_tok` activation rows of `arb` bytes (quantized row
/// of `qrb` bytes, then side data), results handed to `out` (see [`GemmOut`]).
/// Returns false (having done nothing) for other types.
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
    // SAFETY: not WIDE: AVX2 only, which this function's features guarantee.
    unsafe { gemm_with::<false>(ty, rb, w, qrb, act, arb, n_tok, out) }
}

/// [`gemm`], with AVX-512's tile for the 32-element formats with lane sums (Q8_0, Q4_0, Q4_1,
/// Q5_1: `x86_avx512::gemm::tile_l32`, the same integers and float chain, two rows per vector)
/// when `WIDE`.
///
/// # Safety
/// When `WIDE`, the CPU must have AVX-512 F/BW/VL and VNNI (`x86_avx512::detected`).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(in crate::quant) unsafe fn gemm_with<const WIDE: bool>(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    // Below a few activation rows, packing costs more than it saves: the 8-row kernels of
    // `dot_rows` (through the generic path) do those.
    if !has_gemm(ty) || rb == 0 || n_tok < min_tokens(ty) {
        return false;
    }
    let nrows = w.len() / rb;
    if nrows == 0 || n_tok == 0 {
        return true;
    }
    let act_row = |t: usize| &act[t * arb..t * arb + qrb];
    let aux_row = |t: usize| &act[t * arb + qrb..(t + 1) * arb];
    let n_blocks = |block: usize| rb / block;
    // SAFETY: `gemm_l32` runs AVX-512's tile only when WIDE, which the caller guarantees.
    unsafe {
        match ty {
            GgmlType::Q4_K => panels::<PanelK45, { PANEL_BYTES / size_of::<PanelK45>() }>(
                n_blocks(size_of::<BlockQ4K>()),
                nrows,
                n_tok,
                out,
                ZERO_K45,
                |g0, b0, p| {
                    let rows = group_rows::<BlockQ4K, MR>(w, rb, nrows, g0);
                    pack_k45(rows, b0, p, |x, c| q4k_quants(&x.qs, c))
                },
                |p, b0, ts, acc| tile_k45::<1>(p, b0, ts.map(|t| as_blocks(act_row(t))), acc),
            ),
            GgmlType::Q5_K => panels::<PanelK45, { PANEL_BYTES / size_of::<PanelK45>() }>(
                n_blocks(size_of::<BlockQ5K>()),
                nrows,
                n_tok,
                out,
                ZERO_K45,
                |g0, b0, p| {
                    let rows = group_rows::<BlockQ5K, MR>(w, rb, nrows, g0);
                    pack_k45(rows, b0, p, |x, c| q5k_quants(x, c))
                },
                |p, b0, ts, acc| tile_k45::<2>(p, b0, ts.map(|t| as_blocks(act_row(t))), acc),
            ),
            GgmlType::Q6_K => panels::<PanelQ6K, { PANEL_BYTES / size_of::<PanelQ6K>() }>(
                n_blocks(size_of::<BlockQ6K>()),
                nrows,
                n_tok,
                out,
                ZERO_Q6K,
                |g0, b0, p| pack_q6k(group_rows(w, rb, nrows, g0), b0, p),
                |p, b0, ts, acc| tile_q6k(p, b0, ts.map(|t| as_blocks(act_row(t))), acc),
            ),
            GgmlType::Q3_K => panels::<PanelK23, { PANEL_BYTES / size_of::<PanelK23>() }>(
                n_blocks(size_of::<BlockQ3K>()),
                nrows,
                n_tok,
                out,
                ZERO_K23,
                |g0, b0, p| pack_q3k(group_rows(w, rb, nrows, g0), b0, p),
                |p, b0, ts, acc| tile_k23::<true>(p, b0, ts.map(|t| as_blocks(act_row(t))), acc),
            ),
            GgmlType::Q2_K => panels::<PanelK23, { PANEL_BYTES / size_of::<PanelK23>() }>(
                n_blocks(size_of::<BlockQ2K>()),
                nrows,
                n_tok,
                out,
                ZERO_K23,
                |g0, b0, p| pack_q2k(group_rows(w, rb, nrows, g0), b0, p),
                |p, b0, ts, acc| tile_k23::<false>(p, b0, ts.map(|t| as_blocks(act_row(t))), acc),
            ),
            // Q5_0 panels are small: 64 blocks (2048 elements) per chunk.
            GgmlType::Q5_0 => panels::<PanelQ5_0, 64>(
                n_blocks(size_of::<BlockQ5_0>()),
                nrows,
                n_tok,
                out,
                ZERO_Q5_0,
                |g0, b0, p| pack_q5_0(group_rows(w, rb, nrows, g0), b0, p),
                |p, b0, ts, acc| {
                    tile_q5_0(p, b0, ts.map(|t| (as_blocks(act_row(t)), aux_row(t))), acc)
                },
            ),
            // AVX-512 (WIDE) sums Q8_0's lanes as quads with `vpdpbusd`, as its row kernels do.
            GgmlType::Q8_0 => gemm_l32::<BlockQ8_0, false, false, WIDE, WIDE>(
                w,
                rb,
                nrows,
                n_tok,
                out,
                |x| (load256(&x.qs), x.d, [0; 2]),
                |t, b| q8_0_act(act_row(t), aux_row(t), b),
            ),
            GgmlType::Q4_0 => gemm_l32::<BlockQ4_0, true, false, WIDE, false>(
                w,
                rb,
                nrows,
                n_tok,
                out,
                |x| {
                    let q = _mm256_sub_epi8(nibbles_32(&x.qs), _mm256_set1_epi8(8));
                    (q, x.d, [0; 2])
                },
                |t, b| q8_0_act(act_row(t), aux_row(t), b),
            ),
            GgmlType::Q4_1 => gemm_l32::<BlockQ4_1, true, true, WIDE, false>(
                w,
                rb,
                nrows,
                n_tok,
                out,
                |x| (nibbles_32(&x.qs), x.d, x.m),
                |t, b| q8_1_act(act_row(t), b),
            ),
            GgmlType::Q5_1 => gemm_l32::<BlockQ5_1, true, true, WIDE, false>(
                w,
                rb,
                nrows,
                n_tok,
                out,
                |x| {
                    (
                        _mm256_or_si256(nibbles_32(&x.qs), fifth_bits_32(x.qh)),
                        x.d,
                        x.m,
                    )
                },
                |t, b| q8_1_act(act_row(t), b),
            ),
            _ => return false,
        }
    }
    true
}

/// The blocking of the matrix product, shared by the types: for each chunk of up to [`TC`]
/// activation rows, each group of 8 weight rows, each chunk of blocks that fits
/// [`PANEL_BYTES`]: pack the panel, then run the register tile over the activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn panels<P: Copy, const CHUNK: usize>(
    n_blocks: usize,
    nrows: usize,
    n_tok: usize,
    out: &mut GemmOut,
    zero: P,
    pack: impl Fn(usize, usize, &mut [P]),
    tile: impl Fn(&[P], usize, [usize; NR], &mut [[[f32; 8]; 2]]),
) {
    let mut panel = [zero; CHUNK];
    // Accumulators of the chunk's activation rows, plus room for the padding rows of a short
    // final tile (which repeat the last row and whose results are dropped).
    let mut acc = [[[0f32; 8]; 2]; TC + NR];
    // A row group's results for the chunk's activation rows, handed out in one call.
    let mut vals = [0f32; TC * MR];
    for t0 in (0..n_tok).step_by(TC) {
        let tn = TC.min(n_tok - t0);
        for g0 in (0..nrows).step_by(MR) {
            acc[..tn + NR].iter_mut().for_each(|a| *a = [[0.0; 8]; 2]);
            for b0 in (0..n_blocks).step_by(CHUNK) {
                let bn = CHUNK.min(n_blocks - b0);
                pack(g0, b0, &mut panel[..bn]);
                for tt in (0..tn).step_by(NR) {
                    let ts = std::array::from_fn(|j| t0 + (tt + j).min(tn - 1));
                    tile(&panel[..bn], b0, ts, &mut acc[tt..tt + NR]);
                }
            }
            let rows = MR.min(nrows - g0);
            for (v, a) in vals.chunks_exact_mut(rows).zip(&acc[..tn]) {
                for (r, x) in v.iter_mut().enumerate() {
                    *x = a[0][r] - a[1][r];
                }
            }
            out(t0, g0, rows, &vals[..tn * rows]);
        }
    }
}
