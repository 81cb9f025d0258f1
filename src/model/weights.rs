//! The model's tensors as byte ranges of the memory-mapped file, found and shape-checked once at
//! load. Keeping ranges (not slices) lets `Model` own the map without borrowing from itself.

use super::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile};
use std::ops::Range;

/// A 2-D weight matrix (or a 1-D vector with `rows == 1`) stored in the file: `rows` rows of
/// `cols` elements each, in ggml order (a row is contiguous).
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Range<usize>,
}

impl Tensor {
    pub fn row_bytes(&self) -> usize {
        self.bytes.len() / self.rows.max(1)
    }
}

// One per layer, built once at load: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Attention {
    /// Qwen-1: one fused matrix producing [q; k; v].
    Fused { qkv: Tensor, qkv_bias: Tensor },
    Split {
        q: Tensor,
        q_bias: Tensor,
        k: Tensor,
        k_bias: Tensor,
        v: Tensor,
        v_bias: Tensor,
    },
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: Tensor,
    pub attn: Attention,
    pub attn_out: Tensor,
    pub ffn_norm: Tensor,
    pub ffn_gate: Tensor,
    pub ffn_up: Tensor,
    pub ffn_down: Tensor,
}

#[derive(Clone, Debug)]
pub struct Weights {
    pub token_embd: Tensor,
    pub layers: Vec<Layer>,
    pub output_norm: Tensor,
    /// The LM head; the token embedding itself when the model ties them.
    pub output: Tensor,
}

/// Finds tensors by name and checks each against the shape the architecture needs.
struct Finder<'a> {
    file: &'a GgufFile,
}

impl Finder<'_> {
    fn get(&self, name: &str, cols: usize, rows: usize) -> Result<Tensor> {
        self.try_get(name, cols, rows)?
            .ok_or_else(|| Error::tensor(name, "missing from the file"))
    }

    fn try_get(&self, name: &str, cols: usize, rows: usize) -> Result<Option<Tensor>> {
        let Some(view) = self.file.tensor(name) else {
            return Ok(None);
        };
        let dims = view.dims;
        let expected: &[usize] = if rows == 1 { &[cols] } else { &[cols, rows] };
        let matches = dims == expected || (rows == 1 && dims == [cols, 1]);
        if !matches {
            return Err(Error::tensor(
                name,
                format!("shape {dims:?} does not match the architecture's {expected:?}"),
            ));
        }
        let start = view.data.as_ptr() as usize - self.file.as_bytes().as_ptr() as usize;
        Ok(Some(Tensor {
            name: name.to_string(),
            ty: view.ty,
            rows,
            cols,
            bytes: start..start + view.data.len(),
        }))
    }
}

impl Weights {
    pub fn load(file: &GgufFile, cfg: &ModelConfig) -> Result<Weights> {
        let f = Finder { file };
        let d = cfg.n_embd;
        let kv = cfg.n_head_kv * cfg.head_dim;
        let token_embd = f.get("token_embd.weight", d, cfg.n_vocab)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let attn = match cfg.arch {
                Arch::Qwen => Attention::Fused {
                    qkv: f.get(&n("attn_qkv.weight"), d, d + 2 * kv)?,
                    qkv_bias: f.get(&n("attn_qkv.bias"), d + 2 * kv, 1)?,
                },
                Arch::Qwen2 => Attention::Split {
                    q: f.get(&n("attn_q.weight"), d, d)?,
                    q_bias: f.get(&n("attn_q.bias"), d, 1)?,
                    k: f.get(&n("attn_k.weight"), d, kv)?,
                    k_bias: f.get(&n("attn_k.bias"), kv, 1)?,
                    v: f.get(&n("attn_v.weight"), d, kv)?,
                    v_bias: f.get(&n("attn_v.bias"), kv, 1)?,
                },
            };
            layers.push(Layer {
                attn_norm: f.get(&n("attn_norm.weight"), d, 1)?,
                attn,
                attn_out: f.get(&n("attn_output.weight"), d, d)?,
                ffn_norm: f.get(&n("ffn_norm.weight"), d, 1)?,
                ffn_gate: f.get(&n("ffn_gate.weight"), d, cfg.n_ff)?,
                ffn_up: f.get(&n("ffn_up.weight"), d, cfg.n_ff)?,
                ffn_down: f.get(&n("ffn_down.weight"), cfg.n_ff, d)?,
            });
        }
        let output_norm = f.get("output_norm.weight", d, 1)?;
        let output = match f.try_get("output.weight", d, cfg.n_vocab)? {
            Some(t) => t,
            None => token_embd.clone(),
        };
        let w = Weights {
            token_embd,
            layers,
            output_norm,
            output,
        };
        w.check_types()?;
        Ok(w)
    }

    /// Vectors (norms, biases) are read as f32 directly; matrices may be any weight type the
    /// kernels have a dot product for (not the activation-only Q8_1 / Q8_K).
    fn check_types(&self) -> Result<()> {
        let mut vectors = vec![&self.output_norm];
        let mut matrices = vec![&self.token_embd, &self.output];
        for l in &self.layers {
            vectors.extend([&l.attn_norm, &l.ffn_norm]);
            matrices.extend([&l.attn_out, &l.ffn_gate, &l.ffn_up, &l.ffn_down]);
            match &l.attn {
                Attention::Fused { qkv, qkv_bias } => {
                    vectors.push(qkv_bias);
                    matrices.push(qkv);
                }
                Attention::Split {
                    q,
                    q_bias,
                    k,
                    k_bias,
                    v,
                    v_bias,
                } => {
                    vectors.extend([q_bias, k_bias, v_bias]);
                    matrices.extend([q, k, v]);
                }
            }
        }
        if let Some(bad) = vectors.iter().find(|t| t.ty != GgmlType::F32) {
            return Err(Error::tensor(
                &bad.name,
                format!("norm and bias vectors must be F32, found {}", bad.ty),
            ));
        }
        if let Some(bad) = matrices
            .iter()
            .find(|t| matches!(t.ty, GgmlType::Q8_1 | GgmlType::Q8_K))
        {
            return Err(Error::tensor(
                &bad.name,
                format!("{} is an activation format, not a weight format", bad.ty),
            ));
        }
        Ok(())
    }
}

impl Weights {
    /// Every matrix, the LM head included (the embedding appears twice when tied).
    pub fn matrices(&self) -> impl Iterator<Item = &Tensor> {
        let per_layer = self.layers.iter().flat_map(|l| {
            let attn: Vec<&Tensor> = match &l.attn {
                Attention::Fused { qkv, .. } => vec![qkv],
                Attention::Split { q, k, v, .. } => vec![q, k, v],
            };
            attn.into_iter()
                .chain([&l.attn_out, &l.ffn_gate, &l.ffn_up, &l.ffn_down])
        });
        [&self.token_embd, &self.output]
            .into_iter()
            .chain(per_layer)
    }

    /// Every F32 vector: norms and biases.
    pub fn vectors(&self) -> impl Iterator<Item = &Tensor> {
        let per_layer = self.layers.iter().flat_map(|l| {
            let biases: Vec<&Tensor> = match &l.attn {
                Attention::Fused { qkv_bias, .. } => vec![qkv_bias],
                Attention::Split {
                    q_bias,
                    k_bias,
                    v_bias,
                    ..
                } => vec![q_bias, k_bias, v_bias],
            };
            biases.into_iter().chain([&l.attn_norm, &l.ffn_norm])
        });
        std::iter::once(&self.output_norm).chain(per_layer)
    }
}
