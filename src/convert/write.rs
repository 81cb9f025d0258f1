//! The second pass: stream every planned tensor into the output file, one at a time.

use super::hf::{floats_to_f32, release_pages};
use super::plan::{Data, Job, Plan};
use super::ProgressEvent;
use crate::error::{Error, Result};
use crate::gguf::GgufWriter;
use crate::quant::{dequantize_row, quantize_row};
use std::path::Path;

/// Rows are converted in chunks of about this many elements, so the f32 scratch stays small
/// whatever the tensor size.
const CHUNK_ELEMS: usize = 1 << 20;

pub(crate) fn write(
    plan: &Plan,
    output: &Path,
    progress: &mut dyn FnMut(ProgressEvent),
) -> Result<()> {
    let mut w = GgufWriter::new();
    for (k, v) in &plan.metadata {
        w.add_metadata(k.as_str(), v.clone());
    }
    for j in &plan.jobs {
        w.add_tensor_info(j.name.as_str(), j.ty, &j.dims)?;
    }
    let mut sink = w.begin(output)?;
    progress(ProgressEvent::Start {
        tensors: plan.jobs.len(),
        bytes: plan.jobs.iter().map(Job::bytes).sum(),
    });
    let mut out = Vec::new();
    for (index, j) in plan.jobs.iter().enumerate() {
        progress(ProgressEvent::Tensor {
            index,
            name: &j.name,
            ty: j.ty,
            bytes: j.bytes(),
        });
        produce(j, &mut out)?;
        sink.write_tensor(&j.name, &out)?;
        if let Data::Hf { t, ckpt } = &j.data {
            ckpt.release(t.name);
        }
        progress(ProgressEvent::TensorDone { bytes: j.bytes() });
    }
    sink.finish()
}

/// Fills `out` with the tensor's bytes in its output type.
fn produce(j: &Job, out: &mut Vec<u8>) -> Result<()> {
    let row_bytes = j
        .ty
        .row_bytes(j.cols)
        .ok_or_else(|| Error::tensor(&j.name, format!("rows of {} do not fit {}", j.cols, j.ty)))?;
    out.clear();
    out.resize(j.rows * row_bytes, 0);
    if out.is_empty() {
        return Ok(());
    }
    // Same type in and out: copy, bit for bit. GPTQ codes that map exactly: rearrange them.
    match &j.data {
        Data::Gguf { ty, data } if *ty == j.ty && data.len() == out.len() && j.lora.is_none() => {
            out.copy_from_slice(data);
            return Ok(());
        }
        Data::Gptq(layer) if layer.exact && j.lora.is_none() && j.ty.is_quantized() => {
            return layer.write_exact(j.ty, out);
        }
        _ => {}
    }
    // Quantizing is the slow part (K-quants especially): split the rows across cores. Each
    // thread owns a disjoint slice of the output, so no synchronization is needed.
    let threads = if j.rows * j.cols < CHUNK_ELEMS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let rows_per_thread = j.rows.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(rows_per_thread * row_bytes)
            .enumerate()
            .map(|(t, slice)| {
                s.spawn(move || convert_rows(j, t * rows_per_thread, slice, row_bytes))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::tensor(&j.name, "worker panicked")))
        })
    })
}

/// Converts the rows starting at `first` into `out` (whole rows of `row_bytes`).
fn convert_rows(j: &Job, first: usize, out: &mut [u8], row_bytes: usize) -> Result<()> {
    let rows = out.len() / row_bytes;
    // The threads share the scratch budget, so memory does not grow with the core count.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk_rows = (CHUNK_ELEMS / threads / j.cols.max(1)).clamp(1, rows.max(1));
    let mut scratch = vec![0f32; chunk_rows * j.cols];
    let mut done = 0;
    while done < rows {
        let n = chunk_rows.min(rows - done);
        let buf = &mut scratch[..n * j.cols];
        read_rows(j, first + done, buf)?;
        if let Some(delta) = &j.lora {
            delta.apply(first + done, buf);
        }
        // Done with these input rows: let their pages go (a tensor may exceed memory).
        if let Data::Hf { t, .. } = &j.data {
            let size = t.dtype.size() * j.cols;
            release_pages(&t.data[(first + done) * size..(first + done + n) * size]);
        }
        quantize_row(
            j.ty,
            buf,
            &mut out[done * row_bytes..(done + n) * row_bytes],
        )
        .map_err(|e| Error::tensor(&j.name, e.to_string()))?;
        done += n;
    }
    Ok(())
}

/// Rows `r0..r0 + buf.len() / cols` of the source as f32.
fn read_rows(j: &Job, r0: usize, buf: &mut [f32]) -> Result<()> {
    match &j.data {
        Data::Hf { t, .. } => floats_to_f32(t, r0 * j.cols, buf),
        Data::Gptq(layer) => layer.read_rows(r0, buf),
        Data::Gguf { ty, data } => {
            let rb = ty
                .row_bytes(j.cols)
                .ok_or_else(|| Error::tensor(&j.name, "row is not whole blocks"))?;
            for (i, row) in buf.chunks_exact_mut(j.cols).enumerate() {
                let start = (r0 + i) * rb;
                let src = data
                    .get(start..start + rb)
                    .ok_or_else(|| Error::tensor(&j.name, "tensor data is too short"))?;
                dequantize_row(*ty, src, row)?;
            }
            Ok(())
        }
    }
}
