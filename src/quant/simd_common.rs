//! Scalar helpers shared by the SIMD builds: unpacking the packed 6-bit sub-block scales of the
//! K-quants with a few word operations instead of a byte loop (the results are those of
//! `k_quants::scale_min_k4` and `k_quants::q3_k_scales`; the parity tests cover them), and
//! cutting a matrix kernel's group of weight rows out of the row-major bytes.

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
