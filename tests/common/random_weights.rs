//! A model file rebuilt from its header alone (`scripts/zeroed-model.sh header`: metadata,
//! tokenizer and tensor table, a few MB) with pseudo-random weights in every tensor's own block
//! format. Where the real file cannot go (the GPU device machine takes 64 MiB per call), this
//! gives the kernels the real architecture's shapes, formats and offsets with values that are
//! not all equal, so two backends' logits can be compared meaningfully (a zeroed file makes
//! every logit equal).

use qwen::gguf::{GgmlType, GgufFile};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Writes `out`: the header `hdr` (its file's full size in `hdr.size`, as the script writes it)
/// followed by pseudo-random tensor data, deterministic for a given header.
pub fn expand(hdr: &Path, out: &Path) -> std::io::Result<()> {
    let size_file = hdr.with_extension("hdr.size");
    let size: u64 = std::fs::read_to_string(&size_file)?
        .trim()
        .parse()
        .map_err(|e| std::io::Error::other(format!("{}: {e}", size_file.display())))?;
    std::fs::copy(hdr, out)?;
    let file = std::fs::OpenOptions::new().write(true).open(out)?;
    file.set_len(size)?;
    // The header parses once the file has its full (sparse, zeroed) length.
    let (infos, data_offset) = {
        let g = GgufFile::open(out).map_err(std::io::Error::other)?;
        (g.tensor_infos().to_vec(), g.data_offset() as u64)
    };
    // Tensors are independent: one thread per core, each taking every n-th tensor.
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..n)
            .map(|w| {
                let (infos, file) = (&infos, &file);
                s.spawn(move || -> std::io::Result<()> {
                    for (i, t) in infos.iter().enumerate().skip(w).step_by(n) {
                        let bytes = random_tensor(i as u64, &t.name, t.ty, &t.dims)?;
                        file.write_all_at(&bytes, data_offset + t.offset)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("random weights worker panicked"))
    })?;
    file.sync_all()
}

/// One tensor's data: each row drawn independently and quantized to `ty`. Norm weights are
/// near 1 (as trained ones are, so activations keep their scale), biases small, matrices
/// scaled by 1/sqrt(row length) so that activations neither vanish nor blow up over the layers.
fn random_tensor(seed: u64, name: &str, ty: GgmlType, dims: &[usize]) -> std::io::Result<Vec<u8>> {
    let row_len = dims.first().copied().unwrap_or(1);
    let n_rows: usize = dims.iter().skip(1).product();
    let row_bytes = ty
        .row_bytes(row_len)
        .ok_or_else(|| std::io::Error::other(format!("{name}: {row_len} is not whole blocks")))?;
    let (centre, spread) = if dims.len() == 1 && name.contains("norm") {
        (1.0, 0.2)
    } else if dims.len() == 1 {
        (0.0, 0.1)
    } else {
        (0.0, 1.0 / (row_len as f32).sqrt())
    };
    let mut out = vec![0u8; n_rows * row_bytes];
    for (r, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
        let values: Vec<f32> = super::pseudo_random(row_len, (seed << 32) ^ r as u64, spread)
            .into_iter()
            .map(|x| x + centre)
            .collect();
        qwen::quant::quantize_row(ty, &values, dst).map_err(std::io::Error::other)?;
    }
    Ok(out)
}

/// What `scripts/zeroed-model.sh header` writes, for a model at hand: `hdr` (the bytes before
/// the tensor data) and `hdr.size` (the whole file's length).
pub fn write_header(model: &Path, hdr: &Path) -> std::io::Result<()> {
    let g = GgufFile::open(model).map_err(std::io::Error::other)?;
    std::fs::write(hdr, &g.as_bytes()[..g.data_offset()])?;
    std::fs::write(
        hdr.with_extension("hdr.size"),
        format!("{}\n", g.file_size()),
    )
}

/// The random-weight model of header `hdr` and its f32 decoding (the reference), both cached
/// in [`super::out_dir`] under the header's name.
pub fn model_and_reference(hdr: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let stem = format!(
        "{}-random",
        hdr.file_stem().unwrap_or_default().to_string_lossy()
    );
    let model = super::out_dir().join(format!("{stem}.gguf"));
    if !(super::is_fresh(&model) && super::newer(&model, hdr)) {
        let tmp = super::unique_path(&stem, "gguf.tmp");
        expand(hdr, &tmp).unwrap_or_else(|e| panic!("{}: {e}", hdr.display()));
        std::fs::rename(&tmp, &model).unwrap();
    }
    let reference = super::dequantized(&model, &stem);
    (model, reference)
}
