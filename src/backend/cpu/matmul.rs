//! Matrix products against weights in any ggml block format: activations are quantized once
//! per row (in parallel) into the format of `quant::gemm`, then the weight rows are split
//! across the pool in groups of 8 and each thread runs `quant::gemm` on its rows against every
//! activation row (a matrix kernel that reuses each unpacked weight block across several
//! activation rows where the build has one; the 8-row dot kernels otherwise, as in decode).

use super::pool::ThreadPool;
use crate::gguf::GgmlType;
use crate::quant;

/// A raw pointer shared by the workers; each writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
// SAFETY: workers write disjoint indices (distinct rows) and `run` joins them.
unsafe impl<T> Sync for SharedPtr<T> {}
unsafe impl<T> Send for SharedPtr<T> {}

impl<T> SharedPtr<T> {
    /// Going through a method makes closures capture the whole (Sync) wrapper rather than
    /// the raw pointer field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// A borrowed weight matrix: `rows` rows of `cols` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

/// Bytes one activation row of `cols` elements takes in the matrix-product format of weight
/// type `ty` (see `quant::gemm_act_row_bytes`).
pub fn activation_row_bytes(ty: GgmlType, cols: usize) -> usize {
    quant::gemm_act_row_bytes(ty, cols).unwrap_or(cols * 4)
}

/// Bytes of scratch [`matmul`] needs for `n_tokens` activation rows of the widest row
/// `widest` (from [`activation_row_bytes`]): the rows, and room to start them on a cache line.
pub fn activation_scratch_bytes(n_tokens: usize, widest: usize) -> usize {
    n_tokens * widest + 63
}

/// Weight rows per unit of work handed to a thread: the matrix kernels' row group.
const ROW_GROUP: usize = 8;

/// Writes `v` at `dst`: a whole row group (8 values; 16 from the AVX-512 matrix kernels) as one
/// fixed-size copy, anything else element by element. (Volatile writes: LLVM turns any
/// variable-length copy loop into a call to memcpy, which for the 8 floats of a row group cost a
/// few % of a prefill.)
///
/// # Safety
/// `dst..dst + v.len()` must be valid for writes and not aliased.
unsafe fn store_row(dst: *mut f32, v: &[f32]) {
    // SAFETY (all three writes): inside the destination, of v.len() values (the caller's contract).
    if let Ok(group) = <&[f32; 2 * ROW_GROUP]>::try_from(v) {
        unsafe { dst.cast::<[f32; 2 * ROW_GROUP]>().write_unaligned(*group) };
    } else if let Ok(group) = <&[f32; ROW_GROUP]>::try_from(v) {
        unsafe { dst.cast::<[f32; ROW_GROUP]>().write_unaligned(*group) };
    } else {
        for (i, &x) in v.iter().enumerate() {
            unsafe { dst.add(i).write_volatile(x) };
        }
    }
}

/// `out[t][r] = sum_c w[r][c] * x[t][c]` for `n_tokens` rows of `x` (row-major, `cols` wide) and
/// `out` (row-major, `w.rows` wide). `xq` is scratch with room for the quantized activations.
pub fn matmul(
    pool: &ThreadPool,
    w: WeightMatrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    xq: &mut [u8],
) {
    matmul_many(pool, &mut [(w, out)], x, n_tokens, xq);
}

/// Matrices [`matmul_many`] runs as one job.
const MAX_JOBS: usize = 4;

/// [`matmul`] of the same input `x` by several matrices (`(w, out)` pairs). Matrices with the
/// same columns and activation format (Q, K and V; gate and up) run as one job for the pool: the
/// input is quantized once and the threads wait for each other once instead of once per matrix
/// (in a decode step, those waits and the idle thread's spinning were ~8% of the time). Others
/// run one after the other. Every result has the bits [`matmul`] gives it alone: the same
/// kernels see the same rows.
pub fn matmul_many(
    pool: &ThreadPool,
    jobs: &mut [(WeightMatrix, &mut [f32])],
    x: &[f32],
    n_tokens: usize,
    xq: &mut [u8],
) {
    if jobs.len() > MAX_JOBS {
        let (head, tail) = jobs.split_at_mut(MAX_JOBS);
        matmul_many(pool, head, x, n_tokens, xq);
        matmul_many(pool, tail, x, n_tokens, xq);
        return;
    }
    let Some(w0) = jobs.first().map(|(w, _)| *w) else {
        return;
    };
    let cols = w0.cols;
    let at = quant::vec_dot_type(w0.ty);
    if !jobs
        .iter()
        .all(|(w, _)| w.cols == cols && quant::vec_dot_type(w.ty) == at)
    {
        for (w, out) in jobs.iter_mut() {
            matmul_many(pool, &mut [(*w, &mut **out)], x, n_tokens, xq);
        }
        return;
    }
    assert!(x.len() >= n_tokens * cols);
    let xq = quantize_activations(pool, w0.ty, cols, x, n_tokens, xq);
    // Each matrix with its output and the number of its first row group: the groups of all the
    // matrices are numbered one after the other and split across the pool. (On the stack: the
    // decode loop allocates nothing.)
    let mut parts = [(w0, SharedPtr(std::ptr::null_mut()), 0); MAX_JOBS];
    let mut n_groups = 0;
    for (part, (w, out)) in parts.iter_mut().zip(jobs.iter_mut()) {
        assert!(out.len() >= n_tokens * w.rows);
        *part = (*w, SharedPtr(out.as_mut_ptr()), n_groups);
        n_groups += w.rows.div_ceil(ROW_GROUP);
    }
    let parts = &parts[..jobs.len()];
    pool.for_chunks(
        n_groups,
        groups_per_chunk(n_groups, pool.n_threads()),
        &|_, groups| {
            for &(w, out, first) in parts {
                let end = first + w.rows.div_ceil(ROW_GROUP);
                let (lo, hi) = (groups.start.max(first), groups.end.min(end));
                if lo < hi {
                    // SAFETY: `out` holds n_tokens * w.rows values (asserted above), and the
                    // threads' group ranges are disjoint.
                    unsafe { gemm_groups(w, out, lo - first..hi - first, xq, n_tokens) };
                }
            }
        },
    );
}

/// Pieces of work per thread in a matrix product: enough that a thread slowed down by another
/// process hands its remaining pieces to the others, few enough that claiming them (an atomic
/// add each) stays negligible.
const CHUNKS_PER_THREAD: usize = 4;

/// The row groups of one piece of a matrix product of `n_groups` groups: an even number, so that
/// the 16-row kernels (AVX-512 Q5_0, the AVX-512 matrix tiles) never see a lone half group in
/// the middle of a matrix.
fn groups_per_chunk(n_groups: usize, n_threads: usize) -> usize {
    let chunk = n_groups.div_ceil(n_threads * CHUNKS_PER_THREAD);
    chunk.next_multiple_of(2).max(2)
}

/// Activation rows ahead of the one being stored whose output line is fetched: the matrix kernels
/// store a row group's results token after token, each into another line of a result too
/// large for the caches, and waiting for those lines was most of the stores' cost.
const STORE_AHEAD: usize = 16;

/// Asks for the cache line at `p` (a hint: never faults, any address).
#[inline(always)]
fn prefetch_for_store(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that does not access memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Quantizes the `n_tokens` rows of `x` (`cols` wide) into `xq` in the matrix-product format
/// of weight type `ty` (in parallel for several rows) and returns those bytes.
fn quantize_activations<'x>(
    pool: &ThreadPool,
    ty: GgmlType,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    xq: &'x mut [u8],
) -> &'x [u8] {
    let arb = activation_row_bytes(ty, cols);
    // From a cache line where the scratch has room (`activation_scratch_bytes`): the rows are
    // then line-aligned wherever their size is a multiple of 64 (see `quant::gemm_act_row_bytes`).
    let skip = xq.as_ptr().align_offset(64);
    let xq = if xq.len() >= skip + n_tokens * arb {
        &mut xq[skip..]
    } else {
        xq
    };
    let xq = &mut xq[..n_tokens * arb];
    let quantize = |t: usize, dst: &mut [u8]| {
        quant::quantize_gemm_act(ty, &x[t * cols..(t + 1) * cols], dst)
            .expect("activation quantization: sizes are checked at load");
    };
    if n_tokens == 1 {
        quantize(0, xq);
    } else {
        let xq_ptr = SharedPtr(xq.as_mut_ptr());
        pool.for_ranges(n_tokens, &|range| {
            for t in range {
                // SAFETY: token rows are disjoint and inside `xq` (n_tokens * arb bytes), and
                // each thread takes its own range of tokens.
                let dst = unsafe { std::slice::from_raw_parts_mut(xq_ptr.get().add(t * arb), arb) };
                quantize(t, dst);
            }
        });
    }
    xq
}

/// Row groups `groups` (of [`ROW_GROUP`] rows) of `w` against the quantized activations `xq`
/// (`n_tokens` rows), into `out` (row-major, `w.rows` wide).
///
/// # Safety
/// `out` must be valid for writes of `n_tokens * w.rows` values, and no other thread may write
/// the columns of these row groups meanwhile.
unsafe fn gemm_groups(
    w: WeightMatrix,
    out: SharedPtr<f32>,
    groups: std::ops::Range<usize>,
    xq: &[u8],
    n_tokens: usize,
) {
    let rows = w.rows;
    let wrb = w.data.len() / rows.max(1);
    let r0 = groups.start * ROW_GROUP;
    let r1 = (groups.end * ROW_GROUP).min(rows);
    let mut store = |t0: usize, r: usize, width: usize, vals: &[f32]| {
        let n_t = vals.len() / width.max(1);
        assert!(
            t0 + n_t <= n_tokens && r0 + r + width <= r1,
            "gemm output out of range"
        );
        for (k, v) in vals.chunks_exact(width).enumerate() {
            // SAFETY: t0 + k < n_tokens and r0 + r + width <= r1 <= rows (checked above), so
            // the destination lies inside `out` (n_tokens * rows, the caller's contract), in
            // this caller's rows.
            unsafe { store_row(out.get().add((t0 + k) * rows + r0 + r), v) };
            if t0 + k + STORE_AHEAD < n_tokens {
                prefetch_for_store(
                    out.get()
                        .wrapping_add((t0 + k + STORE_AHEAD) * rows + r0 + r),
                );
            }
        }
    };
    quant::gemm(
        w.ty,
        w.cols,
        &w.data[r0 * wrb..r1 * wrb],
        xq,
        n_tokens,
        &mut store,
    );
}
