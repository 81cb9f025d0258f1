//! Matrix products on NEON for every quantized weight type: the K-quants (Q2_K–Q6_K) and the
//! 32-element formats (Q8_0, Q5_0, Q4_0 — which llama.cpp suggests for ARM —, Q4_1, Q5_1). A
//! tile of [`MR`] weight rows × [`NR`] activation rows per call, each weight block unpacked once
//! and used for every activation row of the tile, each activation block loaded once and used
//! for every weight row of the tile. Both builds (plain NEON and NEON+dotprod) come from the
//! same code through the parent's `dot16`.
//!
//! # Same bits as the row kernels
//!
//! [`Kernels::gemm`](super::super::dispatch) must give, for every (weight row, activation row),
//! the bits this build's `vec_dot` gives, so each tile repeats the float arithmetic of the
//! parent's row kernel for that type, only with the integer work laid out differently:
//!
//! - the 32-element formats (`sum_blocks`): the row kernel fuses each block's integer sum into f32
//!   *per lane* (`acc = fma(float(lanes), d_w·d_a, acc)`, even blocks into one accumulator, odd
//!   into another, the last odd block into the first, then `vaddvq(acc0 + acc1)`), so the lanes
//!   must hold the same partial sums: the tile computes them with the very same `dot16` calls
//!   (same operands, same order into the same lanes) and keeps two accumulators per pair. A
//!   Q8_0 activation's scale comes from the side data as f32 (`f16_to_f32` of the block's
//!   scale, the value the row kernel converts); Q4_1 and Q5_1 also sum `m·s` on the side in
//!   block order and add it at the end, as their row kernel `dot_x_1` does.
//! - the K-quants: the row kernel reduces each block to exact integers (`Σ_j sc_j·Σ q·y` and,
//!   for Q4_K, Q5_K and Q2_K, `Σ_j mn_j·bsum_j`) and then does scalar float operations
//!   per block. Integer sums are exact in any order, so the tile accumulates the scaled partial
//!   sums per lane over the whole block (`mla` by the sub-block scale; the bounds in the
//!   comments keep every lane inside i32) and reduces once per block, then repeats the scalar
//!   float expression of the row kernel unchanged (Q4_K and Q5_K share it, `dot_q45_k`; Q2_K,
//!   Q3_K and Q6_K read their blocks through the parent's `K16` trait, `tile_k16`).
//!
//! # Blocking
//!
//! [`run`] walks chunks of [`TC`] activation rows (whose quantized rows stay in L2 while the
//! weights stream by), blocks of [`RB`] weight rows (their results gathered in a small buffer
//! and handed to the sink one activation row at a time), and inside those the `MR × NR`
//! register tiles over the whole row length (two weight rows stay in L1 while the tiles run
//! along the activation rows). Odd weight rows and leftover activation rows get smaller tiles
//! (`1 × n`, `m × 1..NR`), never padding.

use std::arch::aarch64::*;
use std::marker::PhantomData;
use std::mem::size_of;

use super::super::k_quants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::super::q4::{BlockQ4_0, BlockQ4_1};
use super::super::q5::{BlockQ5_0, BlockQ5_1};
use super::super::q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::super::simd_common::{group_rows, k4_scales_mins};
use super::super::{as_blocks, f16_to_f32, Block, GemmOut};
use super::{dot16, fifth_bits, ld_i16_bytes, ld_i8, nibbles, q4k_quants, q5k_quants, signed, K16};
use crate::gguf::GgmlType;

/// Weight rows per register tile.
const MR: usize = 2;
/// Activation rows per register tile: each unpacked weight block is used this many times.
const NR: usize = 4;
/// Activation rows per chunk (their quantized rows meant to stay in L2).
const TC: usize = 32;
/// Weight rows per result block (`TC × RB` f32 on the stack).
const RB: usize = 64;

/// Bytes of side data per activation block that the kernels here read (Q8_0 activations: the
/// block's scale as f32, then the sum of its quants as i32; see `quant::gemm_act_row_bytes`).
const Q8_0_AUX: usize = 8;

/// The matrix product of the plain NEON build (see `Kernels::gemm`): false, having done nothing,
/// for a type without a kernel here (or sizes it cannot take).
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub(in super::super) fn gemm(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    gemm_impl::<false>(ty, rb, w, qrb, act, arb, n_tok, out)
}

/// [`gemm`] of the NEON+dotprod build.
#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::too_many_arguments)]
pub(in super::super) fn gemm_dotprod(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    gemm_impl::<true>(ty, rb, w, qrb, act, arb, n_tok, out)
}

#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn gemm_impl<const SDOT: bool>(
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) -> bool {
    if super::float::try_gemm(ty, rb, w, act, arb, n_tok, out) {
        return true;
    }
    let m = Mat {
        w,
        rb,
        act,
        qrb,
        arb,
        n_tok,
    };
    match ty {
        GgmlType::Q4_K => run::<Q4K, SDOT>(m, out),
        GgmlType::Q5_K => run::<Q5K, SDOT>(m, out),
        GgmlType::Q6_K => run::<K16Tile<BlockQ6K>, SDOT>(m, out),
        GgmlType::Q3_K => run::<K16Tile<BlockQ3K>, SDOT>(m, out),
        GgmlType::Q2_K => run::<K16Tile<BlockQ2K>, SDOT>(m, out),
        GgmlType::Q5_0 => run::<Q5_0, SDOT>(m, out),
        GgmlType::Q4_0 => run::<Q4_0, SDOT>(m, out),
        GgmlType::Q4_1 => run::<Q4_1, SDOT>(m, out),
        GgmlType::Q5_1 => run::<Q5_1, SDOT>(m, out),
        GgmlType::Q8_0 => run::<Q8_0, SDOT>(m, out),
        _ => false,
    }
}

/// The operands of one product, as `Kernels::gemm` takes them.
#[derive(Clone, Copy)]
struct Mat<'a> {
    w: &'a [u8],
    rb: usize,
    act: &'a [u8],
    qrb: usize,
    arb: usize,
    n_tok: usize,
}

/// One weight type's register tile.
trait Kind {
    /// The weight block.
    type W: Block;
    /// The activation block (`vec_dot_type` of the weights).
    type A: Block;
    /// Side-data bytes per activation block the tile reads.
    const AUX: usize;

    /// The `M` weight rows `w` (whole rows, the same number of blocks each) against the `N`
    /// activation rows `a` (quantized row with at least as many blocks, side data): `[r][t]`
    /// with the bits of the row kernel for that pair.
    ///
    /// # Safety
    ///
    /// The CPU must have NEON, and DotProd when `SDOT` (the implementations are
    /// `#[target_feature]` functions, which a trait can only declare `unsafe`).
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[Self::W]; M],
        a: [(&[Self::A], &[u8]); N],
    ) -> [[f32; N]; M];
}

/// The blocking around the register tiles (see the module docs). False (nothing done) when the
/// sizes do not describe whole blocks with the side data the tile needs.
#[inline]
fn run<K: Kind, const SDOT: bool>(m: Mat, out: &mut GemmOut) -> bool {
    let (wb, ab) = (size_of::<K::W>(), size_of::<K::A>());
    if m.rb == 0 || !m.rb.is_multiple_of(wb) {
        return false;
    }
    let nb = m.rb / wb;
    let fits = m.qrb >= nb * ab && m.arb >= m.qrb + nb * K::AUX && m.act.len() >= m.n_tok * m.arb;
    if !fits {
        return false;
    }
    let nrows = m.w.len() / m.rb;
    // Past the last row (only in a 1-row tile, whose second entry is never used).
    let rows = |first: usize| -> [&[K::W]; MR] { group_rows(m.w, m.rb, nrows, first) };
    let acts = |first: usize| -> [(&[K::A], &[u8]); NR] {
        std::array::from_fn(|i| {
            // Past the last activation row: never used (the tile takes the first `nt`).
            let t = (first + i).min(m.n_tok - 1);
            let row = &m.act[t * m.arb..(t + 1) * m.arb];
            (as_blocks(&row[..nb * ab]), &row[m.qrb..])
        })
    };
    let mut buf = [[0f32; RB]; TC];
    for t0 in (0..m.n_tok).step_by(TC) {
        let tn = TC.min(m.n_tok - t0);
        for r0 in (0..nrows).step_by(RB) {
            let rn = RB.min(nrows - r0);
            for r in (0..rn).step_by(MR) {
                let mr = MR.min(rn - r);
                let ws = rows(r0 + r);
                for t in (0..tn).step_by(NR) {
                    let nt = NR.min(tn - t);
                    let ys = acts(t0 + t);
                    // The tile sizes a product may need: MR × NR, and the edges.
                    let w1 = [ws[0]];
                    macro_rules! tiles {
                        ($(($m:literal, $n:literal, $ws:expr)),* $(,)?) => {
                            match (mr, nt) {
                                // SAFETY: `run` is only reached from `gemm` (NEON) and
                                // `gemm_dotprod` (NEON+DotProd, the only caller with `SDOT`),
                                // which dispatch calls only on CPUs with those features.
                                $(($m, $n) => put(&mut buf, r, t, unsafe {
                                    K::tile::<SDOT, $m, $n>($ws, std::array::from_fn(|i| ys[i]))
                                }),)*
                                _ => unreachable!("tile {mr}×{nt} outside {MR}×{NR}"),
                            }
                        };
                    }
                    tiles!(
                        (2, 4, ws),
                        (2, 3, ws),
                        (2, 2, ws),
                        (2, 1, ws),
                        (1, 4, w1),
                        (1, 3, w1),
                        (1, 2, w1),
                        (1, 1, w1),
                    );
                }
            }
            for (t, v) in buf[..tn].iter().enumerate() {
                out(t0 + t, r0, rn, &v[..rn]);
            }
        }
    }
    true
}

/// Stores tile results `v[r][t]` at `buf[t0 + t][r0 + r]`.
#[inline(always)]
fn put<const M: usize, const N: usize>(
    buf: &mut [[f32; RB]; TC],
    r0: usize,
    t0: usize,
    v: [[f32; N]; M],
) {
    for (r, vr) in v.iter().enumerate() {
        for (t, &x) in vr.iter().enumerate() {
            buf[t0 + t][r0 + r] = x;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Q8_0, Q5_0, Q4_0 (against Q8_0 activations) and Q4_1, Q5_1 (against Q8_1): 32-element blocks.

/// The activation blocks of the 32-element formats, as [`tile_32`] reads them.
trait Act32 {
    /// Whether the weights carry a minimum: then `m·s` is summed on the side in block order,
    /// as the row kernel `dot_x_1` does, and added at the end.
    const MIN: bool;
    /// The 32 quants.
    fn quants(&self) -> &[i8; 32];
    /// The block's scale as the row kernel converts it (`aux`: the row's side data, `b`: the
    /// block's index).
    fn scale(&self, aux: &[u8], b: usize) -> f32;
    /// The block's `s` (Q8_1: the scale times the sum of the quants), as f32.
    fn sum(&self) -> f32;
}

impl Act32 for BlockQ8_0 {
    const MIN: bool = false;
    fn quants(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn scale(&self, aux: &[u8], b: usize) -> f32 {
        // The side data's copy of `f16_to_f32(d)`: one 4-byte load (`run` checked the side data
        // covers every block).
        let o = Q8_0_AUX * b;
        f32::from_le_bytes(aux[o..o + 4].try_into().unwrap_or([0; 4]))
    }
    fn sum(&self) -> f32 {
        0.0
    }
}

impl Act32 for BlockQ8_1 {
    const MIN: bool = true;
    fn quants(&self) -> &[i8; 32] {
        &self.qs
    }
    #[inline(always)]
    fn scale(&self, _: &[u8], _: usize) -> f32 {
        f16_to_f32(self.d)
    }
    #[inline(always)]
    fn sum(&self) -> f32 {
        f16_to_f32(self.s)
    }
}

/// The tile of the 32-element formats; `unpack` gives a weight block's quants as two signed i8
/// vectors (elements 0..16, 16..32), its scale and its minimum (0 for formats without one),
/// exactly as the row kernel computes them.
#[target_feature(enable = "neon")]
#[inline]
fn tile_32<W, A: Act32, const SDOT: bool, const M: usize, const N: usize>(
    w: [&[W]; M],
    a: [(&[A], &[u8]); N],
    unpack: impl Fn(&W) -> (int8x16_t, int8x16_t, f32, f32),
) -> [[f32; N]; M] {
    let nb = w[0].len();
    let mut summs = [[0f32; N]; M];
    // One block into one accumulator per pair: the row kernel's `dot32` (two `dot16` into the
    // same lanes), converted per lane, fused with `d_w·d_a`. A macro rather than a closure so
    // the accumulators stay in registers (a closure taking them by reference is not inlined).
    macro_rules! step {
        ($b:expr, $acc:ident) => {{
            let b = $b;
            let xs: [(int8x16_t, int8x16_t, f32, f32); M] =
                std::array::from_fn(|r| unpack(&w[r][b]));
            for (t, &(ya, aux)) in a.iter().enumerate() {
                let y = ya[b].quants();
                let (y0, y1) = (ld_i8(y), ld_i8(&y[16..]));
                let yd = ya[b].scale(aux, b);
                for (r, &(q0, q1, xd, xm)) in xs.iter().enumerate() {
                    let s = dot16::<SDOT>(dot16::<SDOT>(vdupq_n_s32(0), q0, y0), q1, y1);
                    $acc[r][t] = vfmaq_n_f32($acc[r][t], vcvtq_f32_s32(s), xd * yd);
                    if A::MIN {
                        summs[r][t] += xm * ya[b].sum();
                    }
                }
            }
        }};
    }
    let zero = [[vdupq_n_f32(0.0); N]; M];
    let (mut acc0, mut acc1) = (zero, zero);
    let mut b = 0;
    while b + 2 <= nb {
        step!(b, acc0);
        step!(b + 1, acc1);
        b += 2;
    }
    if b < nb {
        step!(b, acc0);
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|t| {
            let sum = vaddvq_f32(vaddq_f32(acc0[r][t], acc1[r][t]));
            if A::MIN {
                sum + summs[r][t]
            } else {
                sum
            }
        })
    })
}

struct Q8_0;

impl Kind for Q8_0 {
    type W = BlockQ8_0;
    type A = BlockQ8_0;
    const AUX: usize = Q8_0_AUX;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[BlockQ8_0]; M],
        a: [(&[BlockQ8_0], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_32::<_, _, SDOT, M, N>(w, a, |x| {
            (ld_i8(&x.qs), ld_i8(&x.qs[16..]), f16_to_f32(x.d), 0.0)
        })
    }
}

struct Q4_0;

impl Kind for Q4_0 {
    type W = BlockQ4_0;
    type A = BlockQ8_0;
    const AUX: usize = Q8_0_AUX;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[BlockQ4_0]; M],
        a: [(&[BlockQ8_0], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_32::<_, _, SDOT, M, N>(w, a, |x| {
            let (lo, hi) = nibbles(&x.qs);
            (signed(lo, 8), signed(hi, 8), f16_to_f32(x.d), 0.0)
        })
    }
}

struct Q5_0;

impl Kind for Q5_0 {
    type W = BlockQ5_0;
    type A = BlockQ8_0;
    const AUX: usize = Q8_0_AUX;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[BlockQ5_0]; M],
        a: [(&[BlockQ8_0], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_32::<_, _, SDOT, M, N>(w, a, |x| {
            let (lo, hi) = nibbles(&x.qs);
            let (h0, h1) = fifth_bits(x.qh);
            (
                signed(vorrq_u8(lo, h0), 16),
                signed(vorrq_u8(hi, h1), 16),
                f16_to_f32(x.d),
                0.0,
            )
        })
    }
}

struct Q4_1;

impl Kind for Q4_1 {
    type W = BlockQ4_1;
    type A = BlockQ8_1;
    const AUX: usize = 0;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[BlockQ4_1]; M],
        a: [(&[BlockQ8_1], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_32::<_, _, SDOT, M, N>(w, a, |x| {
            let (lo, hi) = nibbles(&x.qs);
            (
                signed(lo, 0),
                signed(hi, 0),
                f16_to_f32(x.d),
                f16_to_f32(x.m),
            )
        })
    }
}

struct Q5_1;

impl Kind for Q5_1 {
    type W = BlockQ5_1;
    type A = BlockQ8_1;
    const AUX: usize = 0;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[BlockQ5_1]; M],
        a: [(&[BlockQ8_1], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_32::<_, _, SDOT, M, N>(w, a, |x| {
            let (lo, hi) = nibbles(&x.qs);
            let (h0, h1) = fifth_bits(x.qh);
            (
                signed(vorrq_u8(lo, h0), 0),
                signed(vorrq_u8(hi, h1), 0),
                f16_to_f32(x.d),
                f16_to_f32(x.m),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Q4_K, Q5_K and Q6_K against Q8_K activations.

struct Q4K;

impl Kind for Q4K {
    type W = BlockQ4K;
    type A = BlockQ8K;
    const AUX: usize = 0;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[BlockQ4K]; M],
        a: [(&[BlockQ8K], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_q45k::<_, SDOT, M, N>(
            w,
            a.map(|(y, _)| y),
            |x| (x.d, x.dmin, &x.scales),
            |x, c| q4k_quants(x, c),
        )
    }
}

struct Q5K;

impl Kind for Q5K {
    type W = BlockQ5K;
    type A = BlockQ8K;
    const AUX: usize = 0;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[BlockQ5K]; M],
        a: [(&[BlockQ8K], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_q45k::<_, SDOT, M, N>(
            w,
            a.map(|(y, _)| y),
            |x| (x.d, x.dmin, &x.scales),
            |x, c| q5k_quants(x, c),
        )
    }
}

/// The Q4_K and Q5_K tile: `header` gives a block's `d`, `dmin` and packed scales, `quants`
/// the quants of sub-blocks `2c` and `2c + 1` (as the row kernel's `dot_q45_k` takes them).
#[target_feature(enable = "neon")]
#[inline]
fn tile_q45k<X, const SDOT: bool, const M: usize, const N: usize>(
    w: [&[X]; M],
    a: [&[BlockQ8K]; N],
    header: impl Fn(&X) -> ([u8; 2], [u8; 2], &[u8; 12]),
    quants: impl Fn(&X, usize) -> [int8x16_t; 4],
) -> [[f32; N]; M] {
    let mut sumf = [[0f32; N]; M];
    for b in 0..w[0].len() {
        let xs: [&X; M] = std::array::from_fn(|r| &w[r][b]);
        let ys: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t][b]);
        let scm: [(u64, u64); M] = std::array::from_fn(|r| k4_scales_mins(header(xs[r]).2));
        // Lane sums of Σ_j sc_j·Σ q·y: per sub-block and lane ≤ 8·31·128·63 < 2^21 (Q5_K's
        // quants reach 31, Q4_K's 15), eight sub-blocks < 2^24.
        let mut acc = [[vdupq_n_s32(0); N]; M];
        for c in 0..4 {
            let q: [[int8x16_t; 4]; M] = std::array::from_fn(|r| quants(xs[r], c));
            for (half, j) in [2 * c, 2 * c + 1].into_iter().enumerate() {
                let sc: [i32; M] = std::array::from_fn(|r| ((scm[r].0 >> (8 * j)) & 0xFF) as i32);
                for (t, y) in ys.iter().enumerate() {
                    let (y0, y1) = (ld_i8(&y.qs[32 * j..]), ld_i8(&y.qs[32 * j + 16..]));
                    for r in 0..M {
                        let (q0, q1) = (q[r][2 * half], q[r][2 * half + 1]);
                        let p = dot16::<SDOT>(dot16::<SDOT>(vdupq_n_s32(0), q0, y0), q1, y1);
                        acc[r][t] = vmlaq_n_s32(acc[r][t], p, sc[r]);
                    }
                }
            }
        }
        let d: [(f32, f32); M] = std::array::from_fn(|r| {
            let (d, dmin, _) = header(xs[r]);
            (f16_to_f32(d), f16_to_f32(dmin))
        });
        for (t, y) in ys.iter().enumerate() {
            // The 32-element activation sums (|bsum| ≤ 16·128: the pairwise i16 sums fit).
            let bs = y.bsums.as_flattened();
            let s = vpaddq_s16(ld_i16_bytes(bs), ld_i16_bytes(&bs[16..]));
            let yd = y.d();
            for r in 0..M {
                let mn = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(scm[r].1)));
                let pm = vmlal_high_s16(vmull_s16(vget_low_s16(mn), vget_low_s16(s)), mn, s);
                let sumi_m = vaddvq_s32(pm);
                let sumi = vaddvq_s32(acc[r][t]);
                // The row kernel's expression, unchanged.
                sumf[r][t] += yd * d[r].0 * sumi as f32 - yd * d[r].1 * sumi_m as f32;
            }
        }
    }
    sumf
}

/// The tile of Q2_K, Q3_K or Q6_K (weight block `X`), see [`tile_k16`].
struct K16Tile<X>(PhantomData<X>);

impl<X: Block + K16> Kind for K16Tile<X> {
    type W = X;
    type A = BlockQ8K;
    const AUX: usize = 0;

    #[target_feature(enable = "neon")]
    #[inline]
    unsafe fn tile<const SDOT: bool, const M: usize, const N: usize>(
        w: [&[X]; M],
        a: [(&[BlockQ8K], &[u8]); N],
    ) -> [[f32; N]; M] {
        tile_k16::<X, SDOT, M, N>(w, a.map(|(y, _)| y))
    }
}

/// The tile of the K-quants with 16-element sub-blocks (Q2_K, Q3_K, Q6_K): per block, the
/// exact integer `Σ_j sc_j·Σ q·y` accumulated per lane (from the block's [`K16`] scales and
/// quants, unpacked as the row kernel `dot_k16` unpacks them), reduced once per block, then
/// the block's [`K16::term`] (the row kernel's float expression) added to the pair's sum.
#[target_feature(enable = "neon")]
#[inline]
// The tile is indexed by (row, activation row) and quant group: index loops read clearest.
#[allow(clippy::needless_range_loop)]
fn tile_k16<X: K16, const SDOT: bool, const M: usize, const N: usize>(
    w: [&[X]; M],
    a: [&[BlockQ8K]; N],
) -> [[f32; N]; M] {
    let mut sumf = [[0f32; N]; M];
    for b in 0..w[0].len() {
        let xs: [&X; M] = std::array::from_fn(|r| &w[r][b]);
        let ys: [&BlockQ8K; N] = std::array::from_fn(|t| &a[t][b]);
        let sc: [[i32; 16]; M] = std::array::from_fn(|r| xs[r].scales());
        // Lane sums of Σ_j sc_j·Σ q·y: per sub-block and lane at most 4·|q|·128·|sc| (Q6_K:
        // 4·32·128·128 = 2^21; Q3_K: 4·4·128·32 = 2^16; Q2_K: 4·3·128·15 < 2^15), sixteen
        // sub-blocks at most 2^25.
        let mut acc = [[vdupq_n_s32(0); N]; M];
        for h in 0..2 {
            for half in 0..2 {
                // SAFETY: this function runs with NEON.
                let qr: [[int8x16_t; 4]; M] =
                    std::array::from_fn(|r| unsafe { xs[r].quants(h, half) });
                for k in 0..4 {
                    let e = 128 * h + 32 * k + 16 * half;
                    for (t, y) in ys.iter().enumerate() {
                        let y = ld_i8(&y.qs[e..]);
                        for r in 0..M {
                            let p = dot16::<SDOT>(vdupq_n_s32(0), qr[r][k], y);
                            acc[r][t] = vmlaq_n_s32(acc[r][t], p, sc[r][e / 16]);
                        }
                    }
                }
            }
        }
        for r in 0..M {
            for (t, y) in ys.iter().enumerate() {
                // SAFETY: this function runs with NEON.
                sumf[r][t] += unsafe { xs[r].term(y, vaddvq_s32(acc[r][t])) };
            }
        }
    }
    sumf
}
