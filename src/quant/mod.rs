//! ggml's block formats, bit for bit: the portable scalar reference for dequantizing, quantizing
//! (ggml's `quantize_row_*_ref`, no importance matrix) and dot products against quantized
//! activations (ggml's `ggml_vec_dot_*_generic`).
//!
//! Every SIMD or GPU kernel is tested against this module, so it favours plain loops over
//! cleverness. Blocks are `#[repr(C)]` structs of byte arrays that mirror `ggml-common.h`; they are
//! viewed in place over the tensor bytes (no copies, no per-block allocation). One file per family:
//! [`float`] (F32/F16/BF16), [`q4`], [`q5`], [`q8`] (Q8_0/Q8_1/Q8_K), [`k_quants`] (Q2_K…Q6_K
//! layouts, dequantization and dots) and [`k_quantize`] (their reference quantizers, which only run
//! at conversion time). [`dispatch`] picks the build of the hot kernels (dot products, activation
//! quantizers) for the running CPU: the scalar reference here, or the hand-vectorized
//! `x86_avx2` (AVX2+FMA+F16C), `x86_avx512` (AVX-512 F/BW/VL/VNNI) or `aarch64_neon` (NEON,
//! +dotprod) builds.
//!
//! Bit-exactness with ggml is checked by `tests/ggml_oracle` (run by hand) and pinned for CI by the
//! `quantizer_goldens_match_ggml` test.

#[cfg(target_arch = "aarch64")]
mod aarch64_neon;
mod dispatch;
mod float;
#[cfg(test)]
mod gemm_tests;
mod k_quantize;
mod k_quants;
mod q4;
mod q5;
mod q8;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod simd_common;
#[cfg(test)]
mod simd_tests;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_avx512::gemm::transpose16;

use std::mem::{align_of, size_of};

use crate::error::{Error, Result};
use crate::gguf::GgmlType;

pub use dispatch::vec_dot_path;

/// Elements per block of the 32-element formats (ggml's QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK8_1).
pub(crate) const QK: usize = 32;

/// A ggml block struct that may be viewed in place over raw tensor bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]` and contain only `u8`/`i8` arrays (possibly nested), so they
/// have alignment 1, no padding, and every bit pattern is a valid value. `impl_block!` checks the
/// alignment at compile time; a test checks every size against [`GgmlType::type_size`].
pub(crate) unsafe trait Block: Sized {
    const TYPE: GgmlType;
}

/// Implements [`Block`] for a struct and asserts it has alignment 1.
macro_rules! impl_block {
    ($block:ty, $ty:expr) => {
        // SAFETY: the struct is #[repr(C)] over byte arrays only (see the definition above).
        unsafe impl $crate::quant::Block for $block {
            const TYPE: $crate::gguf::GgmlType = $ty;
        }
        const _: () = assert!(::std::mem::align_of::<$block>() == 1);
    };
}
pub(crate) use impl_block;

/// Views `bytes` as whole blocks; trailing bytes that do not fill a block are not included
/// (callers check row sizes first).
#[inline(always)]
pub(crate) fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    debug_assert_eq!((align_of::<B>(), size_of::<B>()), (1, B::TYPE.type_size()));
    let n = bytes.len() / size_of::<B>();
    // SAFETY: `B: Block` has alignment 1, no padding and no invalid bit patterns, and the
    // `n * size_of::<B>()` bytes viewed lie inside `bytes`, whose borrow the result keeps.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), n) }
}

/// The bytes of `blocks`: the inverse of [`as_blocks`].
#[allow(dead_code)] // used by some SIMD builds only
pub(crate) fn block_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    // SAFETY: `B: Block` is plain bytes (alignment 1, no padding), so `blocks` is
    // `size_of_val(blocks)` initialized bytes, borrowed for as long as the result lives.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), size_of_val(blocks)) }
}

/// Mutable form of [`as_blocks`].
#[inline(always)]
pub(crate) fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    debug_assert_eq!((align_of::<B>(), size_of::<B>()), (1, B::TYPE.type_size()));
    let n = bytes.len() / size_of::<B>();
    // SAFETY: as in `as_blocks`; the exclusive borrow of `bytes` moves into the result.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), n) }
}

/// A little-endian f16 block field (`d`, `m`, `dmin`...) as f32.
#[inline(always)]
pub(crate) fn f16_to_f32(h: [u8; 2]) -> f32 {
    float::f16_bits_to_f32(u16::from_le_bytes(h))
}

/// An f32 rounded to f16 (round to nearest even, like GGML_FP32_TO_FP16), as little-endian bytes.
#[inline(always)]
pub(crate) fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Checks that `bytes` is exactly the size of a `ty` row of `n` elements.
fn check_row(ty: GgmlType, bytes: usize, n: usize) -> Result<()> {
    match ty.row_bytes(n) {
        Some(want) if want == bytes => Ok(()),
        Some(want) => Err(Error::InvalidArgument(format!(
            "a {ty} row of {n} elements takes {want} bytes, got {bytes}"
        ))),
        None => Err(Error::InvalidArgument(format!(
            "a {ty} row must hold a multiple of {} elements, got {n}",
            ty.block_size()
        ))),
    }
}

/// Decodes `dst.len()` elements from `src`, which must be exactly `ty.row_bytes(dst.len())` bytes.
///
/// Returns `Error::InvalidArgument` on a size mismatch; never panics.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    use GgmlType::*;
    check_row(ty, src.len(), dst.len())?;
    match ty {
        F32 => float::dequantize_f32(src, dst),
        F16 => float::dequantize_f16(src, dst),
        BF16 => float::dequantize_bf16(src, dst),
        Q4_0 => q4::dequantize_q4_0(as_blocks(src), dst),
        Q4_1 => q4::dequantize_q4_1(as_blocks(src), dst),
        Q5_0 => q5::dequantize_q5_0(as_blocks(src), dst),
        Q5_1 => q5::dequantize_q5_1(as_blocks(src), dst),
        Q8_0 => q8::dequantize_q8_0(as_blocks(src), dst),
        Q8_1 => q8::dequantize_q8_1(as_blocks(src), dst),
        Q8_K => q8::dequantize_q8_k(as_blocks(src), dst),
        Q2_K => k_quants::dequantize_q2_k(as_blocks(src), dst),
        Q3_K => k_quants::dequantize_q3_k(as_blocks(src), dst),
        Q4_K => k_quants::dequantize_q4_k(as_blocks(src), dst),
        Q5_K => k_quants::dequantize_q5_k(as_blocks(src), dst),
        Q6_K => k_quants::dequantize_q6_k(as_blocks(src), dst),
    }
    Ok(())
}

/// Encodes `src` into `dst` (exactly `ty.row_bytes(src.len())` bytes) with ggml's reference
/// quantizer for `ty` (`quantize_row_*_ref`, no importance matrix), bit for bit. F16 and BF16 round
/// to nearest even like ggml's GGML_FP32_TO_FP16 / GGML_FP32_TO_BF16. Every type is supported.
///
/// Returns `Error::InvalidArgument` on a size mismatch; never panics.
///
/// The activation formats (Q8_0, Q8_1, Q8_K) run the SIMD build for this CPU, which writes the
/// same bytes as the scalar one.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    check_row(ty, dst.len(), src.len())?;
    if !dispatch::selected().quantize_activation(ty, src, dst) {
        quantize_row_ref(ty, src, dst);
    }
    Ok(())
}

/// [`quantize_row`] without runtime dispatch: the scalar reference for every type (what the
/// SIMD quantizers are tested and benchmarked against).
pub fn quantize_row_scalar(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    check_row(ty, dst.len(), src.len())?;
    quantize_row_ref(ty, src, dst);
    Ok(())
}

/// The scalar quantizers; sizes already checked.
fn quantize_row_ref(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    use GgmlType::*;
    match ty {
        F32 => float::quantize_f32(src, dst),
        F16 => float::quantize_f16(src, dst),
        BF16 => float::quantize_bf16(src, dst),
        Q4_0 => q4::quantize_q4_0(src, as_blocks_mut(dst)),
        Q4_1 => q4::quantize_q4_1(src, as_blocks_mut(dst)),
        Q5_0 => q5::quantize_q5_0(src, as_blocks_mut(dst)),
        Q5_1 => q5::quantize_q5_1(src, as_blocks_mut(dst)),
        Q8_0 => q8::quantize_q8_0(src, as_blocks_mut(dst)),
        Q8_1 => q8::quantize_q8_1(src, as_blocks_mut(dst)),
        Q8_K => q8::quantize_q8_k(src, as_blocks_mut(dst)),
        Q2_K => k_quantize::quantize_q2_k(src, as_blocks_mut(dst)),
        Q3_K => k_quantize::quantize_q3_k(src, as_blocks_mut(dst)),
        Q4_K => k_quantize::quantize_q4_k(src, as_blocks_mut(dst)),
        Q5_K => k_quantize::quantize_q5_k(src, as_blocks_mut(dst)),
        Q6_K => k_quantize::quantize_q6_k(src, as_blocks_mut(dst)),
    }
}

/// The format activations are quantized to for a dot product with a weight row of type `ty`
/// (ggml's `vec_dot_type`): Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1/Q8_1, Q8_K for the
/// K-quants (Q8_K included). Float weights keep f32 activations (ggml would use F16/BF16 for those;
/// we keep the extra precision).
pub fn vec_dot_type(ty: GgmlType) -> GgmlType {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => F32,
        Q4_0 | Q5_0 | Q8_0 => Q8_0,
        Q4_1 | Q5_1 | Q8_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => Q8_K,
    }
}

/// Dot product of one weight row (`ty`, `n` elements) with activations already quantized to
/// [`vec_dot_type`]`(ty)` (for float weights: `n` f32 in little-endian bytes), with the
/// accumulation order of ggml's scalar `ggml_vec_dot_*_generic` (exact wherever the math is integer).
///
/// Runs the build of the kernels for the best instruction set this CPU has (see [`vec_dot_path`]).
/// Integer parts are exact in every build; the SIMD builds may add the per-block float terms of
/// the quantized formats in another order than [`vec_dot_scalar`] (a relative difference of a
/// few f32 ulps of the sum of the terms' magnitudes); F32/F16/BF16 weights give the same bits.
///
/// The caller guarantees `w` holds at least `ty.row_bytes(n)` bytes and `act` the activation row;
/// a mismatch is a bug caught by a debug assertion, and in release returns 0.0 (never reads out of
/// bounds).
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match row_slices(ty, n, w, act) {
        Some((w, act)) => dispatch::selected().vec_dot(ty, w, act),
        None => 0.0,
    }
}

/// `out[r] = vec_dot(ty, n, row r, act)` for `out.len()` consecutive weight rows stored back to
/// back in `w` (each `ty.row_bytes(n)` bytes), with the same bits as [`vec_dot`] row by row, but
/// faster where the SIMD build shares the work on the activations between rows (AVX2: Q8_0 and,
/// in the `avx2-128` build, Q5_0, four rows at a time). Meant for a matmul's inner loop over the
/// rows one thread owns. Measured on the Zen 1 test machine: a win while the rows are
/// cache-resident (prefill looping over a chunk of rows for every token: ~+20% prompt tokens/s,
/// 896-wide Q8_0 6.1 -> 7.6 GB/s in cache), on par or slightly behind from DRAM (decode), where
/// one sequential row stream suits the hardware prefetcher best.
///
/// The caller guarantees `w` holds at least `out.len()` rows and `act` one activation row; a
/// mismatch is a bug caught by a debug assertion, and in release fills `out` with 0.0 (never
/// reads out of bounds).
pub fn vec_dot_rows(ty: GgmlType, n: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    let rows = out.len();
    if rows == 0 {
        return;
    }
    let all = ty.row_bytes(n).and_then(|rb| rb.checked_mul(rows));
    match (all, row_slices(ty, n, w, act)) {
        (Some(all), Some((row, act))) if w.len() >= all => {
            dispatch::selected().vec_dot_rows(ty, row.len(), &w[..all], act, out)
        }
        _ => {
            debug_assert!(
                false,
                "vec_dot_rows({ty}, n={n}): {rows} rows do not fit {} bytes",
                w.len()
            );
            out.fill(0.0);
        }
    }
}

/// Where [`gemm`] hands its results: `out(t, r, width, values)` gives the results of activation
/// rows `t..t + values.len() / width` (one after the other, `width` values each) for the weight
/// rows `r..r + width`.
pub type GemmOut<'a> = dyn FnMut(usize, usize, usize, &[f32]) + 'a;

/// Bytes of one activation row in the format of [`gemm`] for weights of type `ty` with `n`
/// columns: the row quantized to [`vec_dot_type`]`(ty)` (the bytes [`vec_dot`] takes), then side
/// data the matrix kernels use (for Q8_0 activations: each block's scale as f32 and the sum of
/// its quants as i32, 8 bytes per block), then on a CPU with AMX, for Q8_0 and Q8_K rows, the
/// quants alone (see [`tile_quants_offset`]). `None` when `n` is not a whole number of blocks.
pub fn gemm_act_row_bytes(ty: GgmlType, n: usize) -> Option<usize> {
    let at = vec_dot_type(ty);
    let base = at.row_bytes(n)? + gemm_aux_bytes(at, n);
    Some(match tile_quants_offset(at, n) {
        Some(offset) => (offset + n + tile_sums_bytes(at, n)).next_multiple_of(64),
        None => base,
    })
}

/// Bytes of sub-block sums after the quants' copy of an AMX activation row of type `at`
/// ([`tile_sums_offset`]): Q8_K rows only.
fn tile_sums_bytes(at: GgmlType, n: usize) -> usize {
    match at {
        GgmlType::Q8_K => n / crate::gguf::QK_K * 16,
        _ => 0,
    }
}

/// Where a Q8_K matrix-product activation row of `n` elements holds, on a CPU with AMX, the
/// sums of each block's eight 32-element sub-blocks (i16, block after block, right after the
/// copy of its quants): the Q4_K tiles' minimums take two sub-blocks per `vpdpwssd` from them
/// (the 16-element sums of the Q8_K block would take twice as many).
pub(crate) fn tile_sums_offset(n: usize) -> Option<usize> {
    tile_quants_offset(GgmlType::Q8_K, n).map(|offset| offset + n)
}

/// Where a matrix-product activation row of type `at` (`n` elements) holds a copy of its quants
/// back to back (every block's, without the scales), from a 64-byte boundary of the row: on a
/// CPU with AMX, for Q8_0 and Q8_K rows. The AMX tiles load 16 activation rows at a time, and a
/// tile row that straddles two cache lines loads several times slower (a 1 KiB tile: 16.4
/// against 2.4 ns, measured on the Sapphire Rapids that runs them); rows `gemm_act_row_bytes`
/// apart (a multiple of 64) from a line-aligned buffer keep every tile row on one line.
pub(crate) fn tile_quants_offset(at: GgmlType, n: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if matches!(at, GgmlType::Q8_0 | GgmlType::Q8_K) && x86_avx512::amx::detected() {
        return Some((at.row_bytes(n)? + gemm_aux_bytes(at, n)).next_multiple_of(64));
    }
    let _ = (at, n);
    None
}

/// Side data bytes after a quantized activation row of type `at` (see [`gemm_act_row_bytes`]).
fn gemm_aux_bytes(at: GgmlType, n: usize) -> usize {
    match at {
        GgmlType::Q8_0 => n / QK * 8,
        _ => 0,
    }
}

/// Quantizes one activation row `x` into `dst` (exactly [`gemm_act_row_bytes`]`(ty, x.len())`
/// bytes) for [`gemm`]: [`quantize_row`] into [`vec_dot_type`]`(ty)`, then the side data.
///
/// Returns `Error::InvalidArgument` on a size mismatch; never panics.
pub fn quantize_gemm_act(ty: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<()> {
    let at = vec_dot_type(ty);
    let (Some(qrb), Some(all)) = (at.row_bytes(x.len()), gemm_act_row_bytes(ty, x.len())) else {
        return check_row(at, dst.len(), x.len());
    };
    if dst.len() != all {
        return Err(Error::InvalidArgument(format!(
            "a {ty} matrix-product activation row of {} elements takes {all} bytes, got {}",
            x.len(),
            dst.len()
        )));
    }
    let (q, rest) = dst.split_at_mut(qrb);
    quantize_row(at, x, q)?;
    fill_gemm_aux(at, q, rest);
    Ok(())
}

/// The quants of the Q8_0 or Q8_K row `q`, back to back, at the start of `dst` (the rest of
/// `dst` zeroed); see [`tile_quants_offset`].
fn copy_quants(at: GgmlType, q: &[u8], dst: &mut [u8]) {
    let mut chunks = dst.iter_mut();
    let mut put = |qs: &[i8]| {
        // `qs` first: zip pulls from its first iterator before finding the second one empty.
        for (&v, d) in qs.iter().zip(&mut chunks) {
            *d = v as u8;
        }
    };
    match at {
        GgmlType::Q8_0 => as_blocks::<q8::BlockQ8_0>(q)
            .iter()
            .for_each(|b| put(&b.qs)),
        GgmlType::Q8_K => as_blocks::<q8::BlockQ8K>(q).iter().for_each(|b| put(&b.qs)),
        _ => {}
    }
    chunks.for_each(|d| *d = 0);
}

/// Writes what follows a quantized activation row `q` of type `at` in the matrix-product format
/// into `rest` (the rest of the row): its side data, then where the layout has one the copy of
/// its quants (see [`gemm_act_row_bytes`]).
fn fill_gemm_aux(at: GgmlType, q: &[u8], rest: &mut [u8]) {
    let n = q.len() / at.type_size() * at.block_size();
    let (aux, copy) = rest.split_at_mut(gemm_aux_bytes(at, n));
    if let Some(offset) = tile_quants_offset(at, n) {
        let (pad, copy) = copy.split_at_mut(offset - q.len() - aux.len());
        pad.fill(0);
        copy_quants(at, q, copy);
        if at == GgmlType::Q8_K {
            let sums = copy[n..n + tile_sums_bytes(at, n)].chunks_exact_mut(16);
            for (b, out) in as_blocks::<q8::BlockQ8K>(q).iter().zip(sums) {
                for (j, s) in out.chunks_exact_mut(2).enumerate() {
                    // ≤ 32·128 in magnitude: fits the i16 that `vpdpwssd` reads.
                    let sum =
                        i16::from_le_bytes(b.bsums[2 * j]) + i16::from_le_bytes(b.bsums[2 * j + 1]);
                    s.copy_from_slice(&sum.to_le_bytes());
                }
            }
        }
    }
    if at == GgmlType::Q8_0 {
        for (b, out) in as_blocks::<q8::BlockQ8_0>(q)
            .iter()
            .zip(aux.chunks_exact_mut(8))
        {
            let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
            out[..4].copy_from_slice(&f16_to_f32(b.d).to_le_bytes());
            out[4..].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

/// The weight rows of `w` (type `ty`, `n` columns, `ty.row_bytes(n)` bytes each, back to back)
/// against `n_tok` activation rows in `act` (each [`gemm_act_row_bytes`]`(ty, n)` bytes, from
/// [`quantize_gemm_act`]): hands the results to `out` (see [`GemmOut`]), every (row, activation
/// row) pair exactly once.
///
/// Every value has the bits [`vec_dot`] gives for that pair. The build for this CPU runs a
/// matrix kernel where it has one (AVX2 and AVX-512: Q2_K–Q6_K, Q5_0, Q8_0, Q4_0, Q4_1, Q5_1
/// and the float types F32/F16/BF16, each from a few activation rows on; NEON and
/// NEON+dotprod: every quantized weight type and the float types), which reuses each unpacked weight
/// block across several activation rows; other types and builds go row by row through
/// [`vec_dot_rows`].
///
/// Sizes are the caller's to get right: a mismatch is a bug caught by a debug assertion, and in
/// release produces no output for the rows that do not fit (never reads out of bounds).
pub fn gemm(ty: GgmlType, n: usize, w: &[u8], act: &[u8], n_tok: usize, out: &mut GemmOut) {
    let (Some(rb), Some(arb)) = (ty.row_bytes(n), gemm_act_row_bytes(ty, n)) else {
        debug_assert!(false, "gemm({ty}, n={n}): not a whole number of blocks");
        return;
    };
    let Some(qrb) = vec_dot_type(ty).row_bytes(n) else {
        return;
    };
    let fits = rb > 0 && w.len().is_multiple_of(rb) && act.len() >= n_tok * arb;
    if !fits {
        debug_assert!(
            false,
            "gemm({ty}, n={n}): {} weight bytes, {} activation bytes for {n_tok} rows",
            w.len(),
            act.len()
        );
        return;
    }
    gemm_with(
        dispatch::selected(),
        ty,
        rb,
        w,
        qrb,
        &act[..n_tok * arb],
        arb,
        n_tok,
        out,
    );
}

/// [`gemm`] on build `k`, sizes checked.
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    k: &dispatch::Kernels,
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) {
    if !k.gemm(ty, rb, w, qrb, act, arb, n_tok, out) {
        gemm_by_rows(k, ty, rb, w, qrb, act, arb, n_tok, out);
    }
}

/// [`gemm`] through a build's `vec_dot_rows`, [`rows_per_call`] weight rows at a time.
#[allow(clippy::too_many_arguments)]
fn gemm_by_rows(
    k: &dispatch::Kernels,
    ty: GgmlType,
    rb: usize,
    w: &[u8],
    qrb: usize,
    act: &[u8],
    arb: usize,
    n_tok: usize,
    out: &mut GemmOut,
) {
    // On the stack: the decode loop allocates nothing. Only the part a call uses is zeroed
    // (once): zeroing all 16 KiB per call cost ~13 MB of stores per 0.5B token.
    let mut buf = [std::mem::MaybeUninit::<f32>::uninit(); ROWS_PER_CALL_ONE_TOKEN];
    let mut initialized = 0;
    let per_call = rows_per_call(n_tok);
    for (i, rows) in w.chunks(per_call * rb).enumerate() {
        let nr = rows.len() / rb;
        if nr > initialized {
            for x in &mut buf[initialized..nr] {
                x.write(0.0);
            }
            initialized = nr;
        }
        // SAFETY: buf[..nr] is initialized (above); MaybeUninit<f32> has f32's layout.
        let part = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<f32>(), nr) };
        for t in 0..n_tok {
            let a = &act[t * arb..t * arb + qrb];
            k.vec_dot_rows(ty, rb, rows, a, part);
            out(t, i * per_call, nr, part);
        }
    }
}

/// Weight rows per `vec_dot_rows` call for one activation row (decode). The multi-row kernels
/// read a call's rows as G long streams (`simd_common::strided_groups`), each `rows / G` rows
/// long; at 64 rows per call a 16-row Q5_0 stream was 4 rows (2.4 KiB at 896 columns), too short
/// for the hardware prefetchers to ramp up, and the short-row matrices of the 0.5B model ran at
/// 0.65-0.72 of the read rate. `examples/bench_matvec --cols 896`, 2 threads, alternating:
/// Q5_0 0.72 -> 0.95, Q8_0 0.94 -> 1.06 at 1024 rows; `qwen bench -n 64` on the 0.5B:
/// 42.6 -> 51.6 tok/s (64 vs 4096 rows, two alternating runs each).
const ROWS_PER_CALL_ONE_TOKEN: usize = 4096;

/// Weight rows per `vec_dot_rows` call for `n_tok` activation rows: with several, each call's
/// rows are read once per activation row, so they stay few enough (64 rows: at most ~300 KB
/// for the widest rows) to be read again from cache.
fn rows_per_call(n_tok: usize) -> usize {
    if n_tok <= 1 {
        ROWS_PER_CALL_ONE_TOKEN
    } else {
        64
    }
}

/// [`vec_dot`] without runtime dispatch: the portable scalar reference every faster kernel is
/// tested against.
pub fn vec_dot_scalar(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match row_slices(ty, n, w, act) {
        Some((w, act)) => dispatch::SCALAR.vec_dot(ty, w, act),
        None => 0.0,
    }
}

/// `w` and `act` cut to exactly one row of `n` elements each, or `None` (after a debug assertion)
/// when they are too short or `n` is not a whole number of blocks.
fn row_slices<'a>(
    ty: GgmlType,
    n: usize,
    w: &'a [u8],
    act: &'a [u8],
) -> Option<(&'a [u8], &'a [u8])> {
    let wb = ty.row_bytes(n);
    let ab = vec_dot_type(ty).row_bytes(n);
    match (wb, ab) {
        (Some(wb), Some(ab)) if w.len() >= wb && act.len() >= ab => Some((&w[..wb], &act[..ab])),
        _ => {
            debug_assert!(
                false,
                "vec_dot({ty}, n={n}): weight row of {} bytes, activations of {} bytes",
                w.len(),
                act.len()
            );
            None
        }
    }
}

/// Quantizes an f32 activation row into [`vec_dot_type`]`(ty)`, reusing `buf` (resized to the row;
/// no allocation when it already has the capacity). `x.len()` must be a whole number of blocks of
/// that type; otherwise (a caller bug, debug-asserted) `buf` is left empty.
pub fn quantize_activation(ty: GgmlType, x: &[f32], buf: &mut Vec<u8>) {
    let at = vec_dot_type(ty);
    buf.clear();
    let Some(bytes) = at.row_bytes(x.len()) else {
        debug_assert!(
            false,
            "{} activations is not a whole number of {at} blocks",
            x.len()
        );
        return;
    };
    buf.resize(bytes, 0);
    // Cannot fail: the size was just computed from the same type and length.
    let done = quantize_row(at, x, buf);
    debug_assert!(done.is_ok());
}
