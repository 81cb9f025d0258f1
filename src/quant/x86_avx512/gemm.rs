//! Matrix products for Q4_K, Q6_K and Q5_0 on AVX-512 VNNI: many weight rows against many
//! activation rows (prefill, batched decode).
//!
//! The layout is the AVX2 one (`x86_avx2::gemm`) widened to 16 rows: 16 weight rows are repacked
//! into a panel where lane `r` of each 64-byte group holds 4 consecutive quants of row `r`, so one
//! broadcast of 4 activation bytes feeds a `vpdpbusd` for 16 rows, and each group is reused by
//! [`NR`] activation rows. The panel covers a chunk of blocks (on the stack, sized for L1); the
//! float accumulators carry across chunks in block order.
//!
//! Each block's integer is exact and enters the per-row f32 chain of the single-row kernels
//! (`super::dot_q4_k` etc.), so every result has the bits of this build's `vec_dot`.
//!
//! With AMX (`gemm` with `amx`, the `avx512-amx` build), a [`WideTile`] from `super::amx` takes the
//! whole groups of 16 activation rows of each chunk from the same panels, and the register
//! tiles here the rest.

use std::arch::x86_64::*;
use std::mem::size_of;

use super::super::k_quants::{BlockQ4K, BlockQ6K};
use super::super::q5::BlockQ5_0;
use super::super::q8::{BlockQ8K, BlockQ8_0};
use super::super::simd_common::{group_rows, k4_scales_mins};
use super::super::{as_blocks, tile_quants_offset, tile_sums_offset, GemmOut, QK};
use super::avx2::{lanes_i16, tile_l32_mins, AccL32, PanelL32};
use super::{q4k_quants64, q5_0_quants, q6k_quants64};
use crate::gguf::{GgmlType, QK_K};

/// Weight rows per panel group: the 16 i32 lanes of a vector.
const MR: usize = 16;
/// Activation rows per register tile.
const NR: usize = 4;
/// Activation rows whose accumulators stay live while a row group's panels stream by.
const TC: usize = 256;
/// Fewest activation rows the panel kernels take (below, the row kernels are faster).
const MIN_TOKENS: usize = 4;
/// Bytes of panel a chunk of blocks may fill (on the stack, meant to stay in L1).
const PANEL_BYTES: usize = 32 * 1024;
/// Q4_K blocks per panel chunk.
const Q4K_CHUNK: usize = PANEL_BYTES / size_of::<PanelQ4K>();

/// One activation row's accumulators for a group of 16 weight rows: the main chain and (Q4_K)
/// the minimums' chain.
pub(super) type Acc = [[f32; MR]; 2];

/// Activation rows of a wide tile: the 16 rows of an AMX tile register.
pub(super) const WIDE: usize = 16;

/// A matrix kernel for [`WIDE`] activation rows at a time (`super::amx`), which [`panels`] runs
/// on whole groups of activation rows before the register tiles take the rest. It gives the
/// register tiles' bits: the same block integers enter the same float chains.
pub(super) trait WideTile<P> {
    /// Called after each chunk `panel` is packed: derive what [`Self::run`] reads from it.
    fn prepare(&mut self, panel: &[P]);
    /// Blocks `b0..b0 + panel.len()` of the prepared chunk against activation rows
    /// `t..t + WIDE·tiles`, into their accumulators `acc` (one per activation row).
    fn run(&mut self, panel: &[P], b0: usize, t: usize, tiles: usize, acc: &mut [Acc]);
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) fn ld(v: &[i32; 16]) -> __m512i {
    // SAFETY: `v` is 64 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn st(v: &mut [i32; 16], x: __m512i) {
    // SAFETY: `v` is 64 writable bytes, borrowed exclusively; no alignment needed.
    unsafe { _mm512_storeu_si512(v.as_mut_ptr().cast(), x) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) fn ld_ps(v: &[f32; 16]) -> __m512 {
    // SAFETY: `v` is 16 readable f32; no alignment needed.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(super) fn st_ps(v: &mut [f32; 16], x: __m512) {
    // SAFETY: `v` is 16 writable f32, borrowed exclusively; no alignment needed.
    unsafe { _mm512_storeu_ps(v.as_mut_ptr(), x) }
}

/// Bytes `i..i + 4` broadcast to all 16 lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn bcast4(b: &[i8], i: usize) -> __m512i {
    let w = [b[i] as u8, b[i + 1] as u8, b[i + 2] as u8, b[i + 3] as u8];
    _mm512_set1_epi32(i32::from_le_bytes(w))
}

/// Two i16 (`a` low, `b` high) as one i32 lane, for `vpdpwssd`.
fn i16x2(a: i16, b: i16) -> i32 {
    (a as u16 as u32 | (b as u16 as u32) << 16) as i32
}

/// The little-endian i16 pair `bsums[2k], bsums[2k + 1]` of a Q8_K block in every lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn bsum_pair(y: &BlockQ8K, k: usize) -> __m512i {
    let (a, b) = (y.bsums[2 * k], y.bsums[2 * k + 1]);
    _mm512_set1_epi32(i32::from_le_bytes([a[0], a[1], b[0], b[1]]))
}

/// Transposes 16×16 i32 (or f32, cast): lane `r` of output `c` is lane `c` of input `r`.
/// AVX-512F alone, so that the attention's f32 kernels (`backend::cpu`) use it too.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(a: [__m512i; 16]) -> [__m512i; 16] {
    // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved (low and high pairs of each 128-bit lane).
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]);
    }
    // u[4i + k], 128-bit lane L: rows 4i..4i + 4 of column 4L + k.
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // Column 4L + k: lane L of u[k], u[4 + k], u[8 + k], u[12 + k].
    let mut out = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(u[k], u[4 + k]);
        let v1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(u[k], u[4 + k]);
        let w0 = _mm512_shuffle_i32x4::<0b01_00_01_00>(u[8 + k], u[12 + k]);
        let w1 = _mm512_shuffle_i32x4::<0b11_10_11_10>(u[8 + k], u[12 + k]);
        out[k] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v0, w0);
        out[4 + k] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v0, w0);
        out[8 + k] = _mm512_shuffle_i32x4::<0b10_00_10_00>(v1, w1);
        out[12 + k] = _mm512_shuffle_i32x4::<0b11_01_11_01>(v1, w1);
    }
    out
}

/// Transposes 16 rows' 64-quant vectors (element order) and stores the 16 panel groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn store_transposed(rows: [__m512i; 16], out: &mut [[i32; 16]]) {
    for (o, v) in out.iter_mut().zip(transpose16(rows)) {
        st(o, v);
    }
}

/// The 16 rows' f16 fields as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn f16x16(h: [[u8; 2]; 16], out: &mut [f32; 16]) {
    let h: [u16; 16] = h.map(u16::from_le_bytes);
    // SAFETY: `h` is 16 readable u16 (32 bytes); no alignment needed.
    let v = unsafe { _mm256_loadu_si256(h.as_ptr().cast()) };
    st_ps(out, _mm512_cvtph_ps(v));
}

// ---------------------------------------------------------------------------------------------
// Q4_K.

/// 16 rows × one Q4_K block, rows in lanes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct PanelQ4K {
    /// Group `g`: elements `4g..4g+4` (0..=15) of each row.
    pub(super) q: [[i32; 16]; QK_K / 4],
    /// Sub-block `j`'s scale of each row, an i16 with a zero upper half.
    pub(super) sc: [[i32; 16]; 8],
    /// Sub-block `j`'s minimum of each row in both i16 halves (against the two 16-element
    /// activation sums of sub-block `j`).
    pub(super) mn: [[i32; 16]; 8],
    pub(super) d: [f32; 16],
    pub(super) dmin: [f32; 16],
}

const ZERO_Q4K: PanelQ4K = PanelQ4K {
    q: [[0; 16]; QK_K / 4],
    sc: [[0; 16]; 8],
    mn: [[0; 16]; 8],
    d: [0.0; 16],
    dmin: [0.0; 16],
};

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q4k(rows: [&[BlockQ4K]; MR], b0: usize, out: &mut [PanelQ4K]) {
    for (i, p) in out.iter_mut().enumerate() {
        let blocks: [&BlockQ4K; MR] = std::array::from_fn(|r| &rows[r][b0 + i]);
        for (c, groups) in p.q.chunks_exact_mut(16).enumerate() {
            // A loop, not `array::from_fn`: a closure does not inherit this function's target
            // features, so the per-row unpacking became an out-of-line call (5% of a batch).
            let mut v = [_mm512_setzero_si512(); MR];
            for (v, x) in v.iter_mut().zip(blocks) {
                *v = q4k_quants64(x, c);
            }
            store_transposed(v, groups);
        }
        for (r, x) in blocks.iter().enumerate() {
            let (s, m) = k4_scales_mins(&x.scales);
            for j in 0..8 {
                let (s, m) = (
                    ((s >> (8 * j)) & 0xFF) as i16,
                    ((m >> (8 * j)) & 0xFF) as i16,
                );
                p.sc[j][r] = i16x2(s, 0);
                p.mn[j][r] = i16x2(m, m);
            }
        }
        f16x16(blocks.map(|x| x.d), &mut p.d);
        f16x16(blocks.map(|x| x.dmin), &mut p.dmin);
    }
}

/// Accumulates blocks `b0..b0 + panel.len()` of 16 rows against `NR` activation rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q4k(panel: &[PanelQ4K], b0: usize, acts: [&[BlockQ8K]; NR], acc: &mut [Acc]) {
    let (mut a0, mut a1) = ([_mm512_setzero_ps(); NR], [_mm512_setzero_ps(); NR]);
    for t in 0..NR {
        (a0[t], a1[t]) = (ld_ps(&acc[t][0]), ld_ps(&acc[t][1]));
    }
    for (i, p) in panel.iter().enumerate() {
        let mut ys = [&acts[0][b0 + i]; NR];
        for (y, a) in ys.iter_mut().zip(&acts) {
            *y = &a[b0 + i];
        }
        let mut sumi = [_mm512_setzero_si512(); NR];
        for j in 0..8 {
            // Two chains per activation row, groups 0..4 and 4..8 of the sub-block: each lane
            // sums 16 products ≤ 15·128, ≤ 30720: fits the i16 that `dpwssd` reads.
            let mut sa = [_mm512_setzero_si512(); NR];
            let mut sb = [_mm512_setzero_si512(); NR];
            for g in 0..4 {
                let wa = ld(&p.q[8 * j + g]);
                let wb = ld(&p.q[8 * j + 4 + g]);
                for t in 0..NR {
                    sa[t] = _mm512_dpbusd_epi32(sa[t], wa, bcast4(&ys[t].qs, 32 * j + 4 * g));
                    sb[t] = _mm512_dpbusd_epi32(sb[t], wb, bcast4(&ys[t].qs, 32 * j + 16 + 4 * g));
                }
            }
            let sc = ld(&p.sc[j]);
            for t in 0..NR {
                sumi[t] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sumi[t], sa[t], sc), sb[t], sc);
            }
        }
        let d = ld_ps(&p.d);
        let dmin = ld_ps(&p.dmin);
        for t in 0..NR {
            let y = ys[t];
            let mut summ = _mm512_setzero_si512();
            for j in 0..8 {
                summ = _mm512_dpwssd_epi32(summ, ld(&p.mn[j]), bsum_pair(y, j));
            }
            let yd = _mm512_set1_ps(y.d());
            a0[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, yd), _mm512_cvtepi32_ps(sumi[t]), a0[t]);
            a1[t] = _mm512_fmadd_ps(_mm512_mul_ps(dmin, yd), _mm512_cvtepi32_ps(summ), a1[t]);
        }
    }
    for t in 0..NR {
        st_ps(&mut acc[t][0], a0[t]);
        st_ps(&mut acc[t][1], a1[t]);
    }
}

// ---------------------------------------------------------------------------------------------
// Q6_K.

/// 16 rows × one Q6_K block, rows in lanes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct PanelQ6K {
    /// Group `g`: elements `4g..4g+4` (0..=63, not yet minus 32) of each row.
    pub(super) q: [[i32; 16]; QK_K / 4],
    /// 16-element sub-block `h`'s scale of each row (sign-extended).
    pub(super) sc: [[i32; 16]; 16],
    /// Scales of sub-blocks `2k` (low i16) and `2k + 1` (high) of each row, for the offset.
    sc2: [[i32; 16]; 8],
    pub(super) d: [f32; 16],
}

const ZERO_Q6K: PanelQ6K = PanelQ6K {
    q: [[0; 16]; QK_K / 4],
    sc: [[0; 16]; 16],
    sc2: [[0; 16]; 8],
    d: [0.0; 16],
};

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q6k(rows: [&[BlockQ6K]; MR], b0: usize, out: &mut [PanelQ6K]) {
    for (i, p) in out.iter_mut().enumerate() {
        let blocks: [&BlockQ6K; MR] = std::array::from_fn(|r| &rows[r][b0 + i]);
        for (c, groups) in p.q.chunks_exact_mut(16).enumerate() {
            // A loop, not `array::from_fn` (see `pack_q4k`).
            let mut v = [_mm512_setzero_si512(); MR];
            for (v, x) in v.iter_mut().zip(blocks) {
                *v = q6k_quants64(x, c / 2, c % 2 == 1);
            }
            store_transposed(v, groups);
        }
        for (r, x) in blocks.iter().enumerate() {
            for h in 0..16 {
                p.sc[h][r] = x.scales[h] as i32;
            }
            for k in 0..8 {
                p.sc2[k][r] = i16x2(x.scales[2 * k] as i16, x.scales[2 * k + 1] as i16);
            }
        }
        f16x16(blocks.map(|x| x.d), &mut p.d);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q6k(panel: &[PanelQ6K], b0: usize, acts: [&[BlockQ8K]; NR], acc: &mut [Acc]) {
    let mut a0 = [_mm512_setzero_ps(); NR];
    for t in 0..NR {
        a0[t] = ld_ps(&acc[t][0]);
    }
    for (i, p) in panel.iter().enumerate() {
        let mut ys = [&acts[0][b0 + i]; NR];
        for (y, a) in ys.iter_mut().zip(&acts) {
            *y = &a[b0 + i];
        }
        let mut sumi = [_mm512_setzero_si512(); NR];
        for hp in 0..8 {
            // Sub-blocks 2hp and 2hp + 1, one chain each per activation row: 16 products
            // ≤ 63·128 per lane, times an i8 scale, 16 sub-blocks: < 2^29.
            let mut sa = [_mm512_setzero_si512(); NR];
            let mut sb = [_mm512_setzero_si512(); NR];
            for g in 0..4 {
                let wa = ld(&p.q[8 * hp + g]);
                let wb = ld(&p.q[8 * hp + 4 + g]);
                for t in 0..NR {
                    sa[t] = _mm512_dpbusd_epi32(sa[t], wa, bcast4(&ys[t].qs, 32 * hp + 4 * g));
                    sb[t] = _mm512_dpbusd_epi32(sb[t], wb, bcast4(&ys[t].qs, 32 * hp + 16 + 4 * g));
                }
            }
            let (sca, scb) = (ld(&p.sc[2 * hp]), ld(&p.sc[2 * hp + 1]));
            for t in 0..NR {
                let s = _mm512_add_epi32(
                    _mm512_mullo_epi32(sa[t], sca),
                    _mm512_mullo_epi32(sb[t], scb),
                );
                sumi[t] = _mm512_add_epi32(sumi[t], s);
            }
        }
        let d = ld_ps(&p.d);
        for t in 0..NR {
            let y = ys[t];
            // −32·Σ_h sc_h·bsum_h, the quants' offset.
            let mut off = _mm512_setzero_si512();
            for k in 0..8 {
                off = _mm512_dpwssd_epi32(off, ld(&p.sc2[k]), bsum_pair(y, k));
            }
            let s = _mm512_sub_epi32(sumi[t], _mm512_slli_epi32::<5>(off));
            let yd = _mm512_set1_ps(y.d());
            a0[t] = _mm512_fmadd_ps(_mm512_mul_ps(d, yd), _mm512_cvtepi32_ps(s), a0[t]);
        }
    }
    for t in 0..NR {
        st_ps(&mut acc[t][0], a0[t]);
    }
}

// ---------------------------------------------------------------------------------------------
// Q5_0.

/// 16 rows × one Q5_0 block, rows in lanes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct PanelQ5_0 {
    /// Group `g`: elements `4g..4g+4` (0..=31, not yet minus 16) of each row.
    pub(super) q: [[i32; 16]; QK / 4],
    pub(super) d: [f32; 16],
}

const ZERO_Q5_0: PanelQ5_0 = PanelQ5_0 {
    q: [[0; 16]; QK / 4],
    d: [0.0; 16],
};

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_q5_0(rows: [&[BlockQ5_0]; MR], b0: usize, out: &mut [PanelQ5_0]) {
    // Two blocks per transposition: block i in the low 256 bits of each row's vector, block
    // i + 1 (or block i again, unused, at the end) in the high 256 bits.
    let n = out.len();
    for i in (0..n).step_by(2) {
        let j = (i + 1).min(n - 1);
        // A loop, not `array::from_fn` (see `pack_q4k`).
        let mut v = [_mm512_setzero_si512(); MR];
        for (v, row) in v.iter_mut().zip(rows) {
            let (x0, x1) = (&row[b0 + i], &row[b0 + j]);
            *v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q5_0_quants(x0)), q5_0_quants(x1));
        }
        let tr = transpose16(v);
        for (o, v) in out[i].q.iter_mut().zip(&tr[..8]) {
            st(o, *v);
        }
        f16x16(std::array::from_fn(|r| rows[r][b0 + i].d), &mut out[i].d);
        if j != i {
            for (o, v) in out[j].q.iter_mut().zip(&tr[8..]) {
                st(o, *v);
            }
            f16x16(std::array::from_fn(|r| rows[r][b0 + j].d), &mut out[j].d);
        }
    }
}

/// The activation side data of block `b` of a Q8_0 row (see `quant::fill_gemm_aux`): (d as
/// f32, Σ q).
#[inline(always)]
fn aux_of(aux: &[u8], b: usize) -> (f32, i32) {
    let e = &aux[8 * b..8 * b + 8];
    (
        f32::from_le_bytes([e[0], e[1], e[2], e[3]]),
        i32::from_le_bytes([e[4], e[5], e[6], e[7]]),
    )
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile_q5_0(panel: &[PanelQ5_0], b0: usize, acts: [(&[BlockQ8_0], &[u8]); NR], acc: &mut [Acc]) {
    let mut a0 = [_mm512_setzero_ps(); NR];
    for t in 0..NR {
        a0[t] = ld_ps(&acc[t][0]);
    }
    for (i, p) in panel.iter().enumerate() {
        let b = b0 + i;
        // Loops, not `array::from_fn`: its closures stayed out-of-line calls (5% of a batch).
        let mut ys = [&acts[0].0[b]; NR];
        let mut aux = [(0f32, 0i32); NR];
        for ((y, x), a) in ys.iter_mut().zip(&mut aux).zip(&acts) {
            (*y, *x) = (&a.0[b], aux_of(a.1, b));
        }
        // Σ (q − 16)·y = Σ q·y − 16·Σ y: one chain starts at −16·Σ y. Each lane: 32 products
        // ≤ 31·128 plus 16·32·128: far inside i32.
        let mut sa = [_mm512_setzero_si512(); NR];
        for (sa, aux) in sa.iter_mut().zip(&aux) {
            *sa = _mm512_set1_epi32(-16 * aux.1);
        }
        let mut sb = [_mm512_setzero_si512(); NR];
        for g in 0..4 {
            let wa = ld(&p.q[g]);
            let wb = ld(&p.q[4 + g]);
            for t in 0..NR {
                sa[t] = _mm512_dpbusd_epi32(sa[t], wa, bcast4(&ys[t].qs, 4 * g));
                sb[t] = _mm512_dpbusd_epi32(sb[t], wb, bcast4(&ys[t].qs, 16 + 4 * g));
            }
        }
        let d = ld_ps(&p.d);
        for t in 0..NR {
            let s = _mm512_add_epi32(sa[t], sb[t]);
            let dd = _mm512_mul_ps(d, _mm512_set1_ps(aux[t].0));
            a0[t] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(s), a0[t]);
        }
    }
    for t in 0..NR {
        st_ps(&mut acc[t][0], a0[t]);
    }
}

// ---------------------------------------------------------------------------------------------
// The 32-element formats with lane sums (Q8_0, Q4_0, Q4_1, Q5_1): AVX2's panels and float
// chains (`x86_avx2::gemm::gemm_l32`), two weight rows per vector.

/// AVX2's `tile_l32` with 512-bit vectors: rows `2k` and `2k + 1` share a vector, and
/// `vpdpwssd` adds the second `madd` of a block's lane integers in place of `madd` + `add` (the
/// same exact integers), so every lane's float chain and thus every result has AVX2's bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn tile_l32<'a, const QUADS: bool, const MIN: bool>(
    panel: &[PanelL32],
    b0: usize,
    act: impl Fn(usize) -> (&'a [i8; 32], f32, f32),
    acc: &mut AccL32,
) {
    // Lanes 0..8 take row 2k's factor, 8..16 row 2k + 1's.
    let pick = |k: i32| {
        let (a, b) = (2 * k, 2 * k + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    };
    let idx = [pick(0), pick(1), pick(2), pick(3)];
    for (parity, acc) in acc.v.iter_mut().enumerate() {
        // Rows 2k and 2k + 1 are adjacent: 16 contiguous f32 per vector.
        let rows = acc.as_flattened_mut();
        let mut a: [__m512; 4] = std::array::from_fn(|k| {
            let v = &rows[16 * k..16 * k + 16];
            // SAFETY: `v` is 16 readable f32; no alignment needed.
            unsafe { _mm512_loadu_ps(v.as_ptr()) }
        });
        let mut i = (parity ^ (b0 & 1)) & 1;
        while i < panel.len() {
            let p = &panel[i];
            let (yq, dy, _) = act(b0 + i);
            // SAFETY: `yq` is 32 readable bytes; no alignment needed.
            let [y0, y1] = lanes_i16::<QUADS>(unsafe { _mm256_loadu_si256(yq.as_ptr().cast()) });
            let (y0, y1) = (_mm512_broadcast_i64x4(y0), _mm512_broadcast_i64x4(y1));
            // d_w·d_a of each row: AVX2's product.
            // SAFETY: `p.d` is 8 readable f32; no alignment needed.
            let d = _mm256_mul_ps(unsafe { _mm256_loadu_ps(p.d.as_ptr()) }, _mm256_set1_ps(dy));
            let d = _mm512_castps256_ps512(d);
            for (k, a) in a.iter_mut().enumerate() {
                let s = _mm512_dpwssd_epi32(
                    _mm512_madd_epi16(ld64(&p.q[k][0]), y0),
                    ld64(&p.q[k][1]),
                    y1,
                );
                let dk = _mm512_permutexvar_ps(idx[k], d);
                *a = _mm512_fmadd_ps(dk, _mm512_cvtepi32_ps(s), *a);
            }
            i += 2;
        }
        for (k, v) in a.into_iter().enumerate() {
            let dst = &mut rows[16 * k..16 * k + 16];
            // SAFETY: `dst` is 16 writable f32, borrowed exclusively; no alignment needed.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        }
    }
    if MIN {
        tile_l32_mins(panel, b0, act, &mut acc.summs);
    }
}
/// [`tile_l32`] for Q8_0 weights packed as biased bytes (`pack_l32` with `BYTES`): rows `2k`
/// and `2k + 1` share a vector, and `vpdpbusd` sums each lane's four products `(x + 128)·y`
/// from a start of `−128·Σ y` (made once per activation block), the lane integers of
/// `x86_avx512::dot_q8_0` (quads in element order), which it then scales into the same chains.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
pub(in crate::quant) fn tile_l32_bytes<'a>(
    panel: &[PanelL32],
    b0: usize,
    act: impl Fn(usize) -> (&'a [i8; 32], f32, f32),
    acc: &mut AccL32,
) {
    let pick = |k: i32| {
        let (a, b) = (2 * k, 2 * k + 1);
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    };
    let idx = [pick(0), pick(1), pick(2), pick(3)];
    let bias = _mm512_set1_epi8(i8::MIN);
    for (parity, acc) in acc.v.iter_mut().enumerate() {
        let rows = acc.as_flattened_mut();
        let mut a: [__m512; 4] = std::array::from_fn(|k| {
            let v = &rows[16 * k..16 * k + 16];
            // SAFETY: `v` is 16 readable f32; no alignment needed.
            unsafe { _mm512_loadu_ps(v.as_ptr()) }
        });
        let mut i = (parity ^ (b0 & 1)) & 1;
        while i < panel.len() {
            let p = &panel[i];
            let (yq, dy, _) = act(b0 + i);
            // SAFETY: `yq` is 32 readable bytes; no alignment needed.
            let yv = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(yq.as_ptr().cast()) });
            let start = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, yv),
            );
            // SAFETY: `p.d` is 8 readable f32; no alignment needed.
            let d = _mm256_mul_ps(unsafe { _mm256_loadu_ps(p.d.as_ptr()) }, _mm256_set1_ps(dy));
            let d = _mm512_castps256_ps512(d);
            for (k, a) in a.iter_mut().enumerate() {
                let s = _mm512_dpbusd_epi32(start, ld64(&p.q[k][0]), yv);
                let dk = _mm512_permutexvar_ps(idx[k], d);
                *a = _mm512_fmadd_ps(dk, _mm512_cvtepi32_ps(s), *a);
            }
            i += 2;
        }
        for (k, v) in a.into_iter().enumerate() {
            let dst = &mut rows[16 * k..16 * k + 16];
            // SAFETY: `dst` is 16 writable f32, borrowed exclusively; no alignment needed.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        }
    }
}

/// The 64 bytes of two rows' panel vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
fn ld64(v: &[[u8; 32]; 2]) -> __m512i {
    // SAFETY: `v` is 64 contiguous readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

// ---------------------------------------------------------------------------------------------
// Drivers.

/// Where the AMX K-quant tiles find the parts of Q8_K activation rows of `n` elements, `arb`
/// bytes apart (None where the rows have no tile copy: no AMX).
fn k_layout(arb: usize, n: usize) -> Option<super::amx::Layout> {
    Some(super::amx::Layout {
        arb,
        tq: tile_quants_offset(GgmlType::Q8_K, n)?,
        ts: tile_sums_offset(n)?,
    })
}

/// The matrix product for Q4_K, Q6_K and Q5_0 (see `Kernels::gemm`), with the AMX tiles of
/// `super::amx` where `amx` (the caller has checked `amx::detected`); false (nothing done) for
/// other types and for fewer than [`MIN_TOKENS`] activation rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
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
    amx: bool,
) -> bool {
    if rb == 0 || n_tok < MIN_TOKENS {
        return false;
    }
    let nrows = w.len() / rb;
    if nrows == 0 {
        return matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K | GgmlType::Q5_0);
    }
    let act_row = |t: usize| &act[t * arb..t * arb + qrb];
    let aux_row = |t: usize| &act[t * arb + qrb..(t + 1) * arb];
    let n_blocks = |block: usize| rb / block;
    match ty {
        GgmlType::Q4_K => panels::<PanelQ4K, Q4K_CHUNK>(
            n_blocks(size_of::<BlockQ4K>()),
            nrows,
            n_tok,
            out,
            ZERO_Q4K,
            true,
            amx.then(|| k_layout(arb, n_blocks(size_of::<BlockQ4K>()) * QK_K))
                .flatten()
                .map(|layout| super::amx::Q4KTiles::new(act, layout))
                .as_mut()
                .map(|t| t as &mut dyn WideTile<PanelQ4K>),
            |g0, b0, p| pack_q4k(group_rows(w, rb, nrows, g0), b0, p),
            |p, b0, ts, acc| tile_q4k(p, b0, ts.map(|t| as_blocks(act_row(t))), acc),
        ),
        GgmlType::Q6_K => panels::<PanelQ6K, { PANEL_BYTES / size_of::<PanelQ6K>() }>(
            n_blocks(size_of::<BlockQ6K>()),
            nrows,
            n_tok,
            out,
            ZERO_Q6K,
            false,
            amx.then(|| k_layout(arb, n_blocks(size_of::<BlockQ6K>()) * QK_K))
                .flatten()
                .map(|layout| super::amx::Q6KTiles::new(act, layout))
                .as_mut()
                .map(|t| t as &mut dyn WideTile<PanelQ6K>),
            |g0, b0, p| pack_q6k(group_rows(w, rb, nrows, g0), b0, p),
            |p, b0, ts, acc| tile_q6k(p, b0, ts.map(|t| as_blocks(act_row(t))), acc),
        ),
        // Q5_0 panels are small: 64 blocks (2048 elements) per chunk.
        GgmlType::Q5_0 => panels::<PanelQ5_0, 64>(
            n_blocks(size_of::<BlockQ5_0>()),
            nrows,
            n_tok,
            out,
            ZERO_Q5_0,
            false,
            amx.then(|| tile_quants_offset(GgmlType::Q8_0, n_blocks(size_of::<BlockQ5_0>()) * QK))
                .flatten()
                .map(|tq| super::amx::Q5_0Tiles::new(act, arb, qrb, tq))
                .as_mut()
                .map(|t| t as &mut dyn WideTile<PanelQ5_0>),
            |g0, b0, p| pack_q5_0(group_rows(w, rb, nrows, g0), b0, p),
            |p, b0, ts, acc| tile_q5_0(p, b0, ts.map(|t| (as_blocks(act_row(t)), aux_row(t))), acc),
        ),
        _ => return false,
    }
    true
}

/// The blocking of the matrix product, shared by the types: for each chunk of up to [`TC`]
/// activation rows, each group of 16 weight rows, each chunk of blocks that fits
/// [`PANEL_BYTES`]: pack the panel, then run the `wide` tile (if any) over whole groups of
/// [`WIDE`] activation rows and the register tile over the rest. With `mins`, a row's result is
/// its main chain minus its minimums' chain (Q4_K), else the main chain itself.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
fn panels<P: Copy, const CHUNK: usize>(
    n_blocks: usize,
    nrows: usize,
    n_tok: usize,
    out: &mut GemmOut,
    zero: P,
    mins: bool,
    mut wide: Option<&mut dyn WideTile<P>>,
    pack: impl Fn(usize, usize, &mut [P]),
    tile: impl Fn(&[P], usize, [usize; NR], &mut [Acc]),
) {
    let mut panel = [zero; CHUNK];
    // Accumulators of the chunk's activation rows, plus room for the padding rows of a short
    // final tile (which repeat the last row and whose results are dropped).
    let mut acc = [[[0f32; MR]; 2]; TC + NR];
    for t0 in (0..n_tok).step_by(TC) {
        let tn = TC.min(n_tok - t0);
        for g0 in (0..nrows).step_by(MR) {
            acc[..tn + NR].iter_mut().for_each(|a| *a = [[0.0; MR]; 2]);
            for b0 in (0..n_blocks).step_by(CHUNK) {
                let bn = CHUNK.min(n_blocks - b0);
                pack(g0, b0, &mut panel[..bn]);
                let mut tt = 0;
                if let Some(wide) = wide.as_mut() {
                    wide.prepare(&panel[..bn]);
                    let tiles = tn / WIDE;
                    wide.run(&panel[..bn], b0, t0, tiles, &mut acc[..tiles * WIDE]);
                    tt = tiles * WIDE;
                }
                for tt in (tt..tn).step_by(NR) {
                    let ts = std::array::from_fn(|j| t0 + (tt + j).min(tn - 1));
                    tile(&panel[..bn], b0, ts, &mut acc[tt..tt + NR]);
                }
            }
            let rows = MR.min(nrows - g0);
            for (t, a) in acc[..tn].iter().enumerate() {
                if mins {
                    let v: [f32; MR] = std::array::from_fn(|r| a[0][r] - a[1][r]);
                    out(t0 + t, g0, rows, &v[..rows]);
                } else {
                    out(t0 + t, g0, rows, &a[0][..rows]);
                }
            }
        }
    }
}
