//! Scalar helpers shared by the SIMD builds: unpacking the packed 6-bit sub-block scales of the
//! K-quants with a few word operations instead of a byte loop (the results are those of
//! `k_quants::scale_min_k4` and `k_quants::q3_k_scales`; the parity tests cover them), cutting
//! a matrix kernel's group of weight rows out of the row-major bytes, and the row order of the
//! multi-row dot kernels.

use super::{as_blocks, Block};

/// Rows `g0..g0 + N` of `w` (`nrows` rows of `rb` bytes) as blocks, clamped to the last row: a
/// short final group repeats its last row, whose extra results the matrix kernels drop.
#[inline(always)]
pub(super) fn group_rows<B: Block, const N: usize>(
    w: &[u8],
    rb: usize,
    nrows: usize,
    g0: usize,
) -> [&[B]; N] {
    std::array::from_fn(|r| {
        let row = (g0 + r).min(nrows - 1);
        as_blocks(&w[row * rb..(row + 1) * rb])
    })
}

/// `out[r]` for rows `0..G·s` of `w` (rows of `rb` bytes, `s` = ⌊rows / G⌋), by `f` on G rows at a
/// time: call `g` takes rows `g, g + s, …, g + (G − 1)·s`. Returns `G·s`; the rows after those
/// are the caller's.
///
/// Why strided: a multi-row kernel reads its rows block by block, side by side. G neighbouring
/// rows make G streams a few hundred bytes long each, too short for the hardware prefetchers,
/// so every group waited on DRAM even with a software prefetch of the next group (a burst of
/// lines that fills the line-fill buffers). G rows `s` apart are G long sequential streams,
/// which the prefetchers follow. Decode matrix-vector products from DRAM, 2 threads, relative
/// to a plain read of the same bytes (`examples/bench_matvec --threads 2`, A/B of the two
/// orders): Q5_0 in 16-row groups 0.65 → 0.90, Q8_0 in 4-row groups 0.72 → 0.90.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn strided_groups<B: Block, const G: usize>(
    w: &[u8],
    rb: usize,
    out: &mut [f32],
    mut f: impl FnMut([&[B]; G]) -> [f32; G],
) -> usize {
    let rb = rb.max(1);
    let s = out.len().min(w.len() / rb) / G;
    for g in 0..s {
        let rows = std::array::from_fn(|k| as_blocks(&w[(g + k * s) * rb..(g + k * s + 1) * rb]));
        for (k, v) in f(rows).into_iter().enumerate() {
            out[g + k * s] = v;
        }
    }
    G * s
}

/// Little-endian u32 `i` of 12 packed scale bytes.
#[inline(always)]
fn word(s: &[u8; 12], i: usize) -> u32 {
    u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]])
}

/// The 8 scales and 8 mins of Q4_K/Q5_K (ggml's `get_scale_min_k4` for all j at once) as two u64
/// of 8 bytes each, sub-block `j` in byte `j`.
#[inline(always)]
pub(super) fn k4_scales_mins(s: &[u8; 12]) -> (u64, u64) {
    let (u0, u1, u2) = (word(s, 0), word(s, 1), word(s, 2));
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    // Scales 0..4: low 6 bits of bytes 0..4; 4..8: low nibbles of bytes 8..12 plus the top 2 bits
    // of bytes 0..4. Mins 0..4: low 6 bits of bytes 4..8; 4..8: high nibbles of bytes 8..12 plus
    // the top 2 bits of bytes 4..8.
    let sc_lo = u0 & LOW6;
    let sc_hi = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let mn_lo = u1 & LOW6;
    let mn_hi = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        mn_lo as u64 | (mn_hi as u64) << 32,
    )
}

/// The 16 6-bit scales of a Q3_K block (0..=63, not yet minus 32) as 4 little-endian words,
/// scale `j` in byte `j % 4` of word `j / 4`: the low nibble from byte `j` (j < 8) or the high
/// nibble of byte `j − 8`, the top 2 bits from bits `2·(j / 4)` of byte `8 + j % 4`.
#[inline(always)]
pub(super) fn q3_k_scale_words(s: &[u8; 12]) -> [u32; 4] {
    let (a0, a1, hi) = (word(s, 0), word(s, 1), word(s, 2));
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    [
        (a0 & LOW4) | ((hi & LOW2) << 4),
        (a1 & LOW4) | (((hi >> 2) & LOW2) << 4),
        ((a0 >> 4) & LOW4) | (((hi >> 4) & LOW2) << 4),
        ((a1 >> 4) & LOW4) | (((hi >> 6) & LOW2) << 4),
    ]
}
