//! Matrix products against weights in any ggml block format: activations are quantized once
//! per row into the weight type's dot-product format, then every weight row is dotted with every
//! activation row while it is hot in cache. Rows of the weight are split across the pool.

use super::pool::ThreadPool;
use crate::gguf::GgmlType;
use crate::quant;

/// A raw output pointer shared by the workers; each writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint indices (distinct weight rows) and `run` joins them.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

impl OutPtr {
    /// Going through a method makes closures capture the whole (Sync) wrapper rather than
    /// the raw pointer field.
    fn get(self) -> *mut f32 {
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

/// Bytes one activation row of `cols` elements takes in the dot format of weight type `ty`.
pub fn activation_row_bytes(ty: GgmlType, cols: usize) -> usize {
    quant::vec_dot_type(ty).row_bytes(cols).unwrap_or(cols * 4)
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
    let (rows, cols) = (w.rows, w.cols);
    assert!(x.len() >= n_tokens * cols && out.len() >= n_tokens * rows);
    let vdt = quant::vec_dot_type(w.ty);
    let arb = activation_row_bytes(w.ty, cols);
    let xq = &mut xq[..n_tokens * arb];
    for t in 0..n_tokens {
        quant::quantize_row(
            vdt,
            &x[t * cols..(t + 1) * cols],
            &mut xq[t * arb..(t + 1) * arb],
        )
        .expect("activation quantization: sizes are checked at load");
    }
    let xq = &*xq;
    let wrb = w.data.len() / rows.max(1);
    let out_ptr = OutPtr(out.as_mut_ptr());
    pool.for_ranges(rows, &|range| {
        for r in range {
            let wrow = &w.data[r * wrb..(r + 1) * wrb];
            for t in 0..n_tokens {
                let v = quant::vec_dot(w.ty, cols, wrow, &xq[t * arb..(t + 1) * arb]);
                // SAFETY: index < n_tokens * rows <= out.len(); rows are disjoint across threads.
                unsafe { *out_ptr.get().add(t * rows + r) = v };
            }
        }
    });
}
