//! GPTQ checkpoints (AutoGPTQ's "GPTQ v1" layout, as Qwen's official Int4/Int8 releases ship):
//! `qweight` / `qzeros` / `scales` / `g_idx` per quantized Linear.
//!
//! Symmetric int4 / int8 with `g_idx` constant on every 32-wide block of the input dimension (so
//! groups of 32, 64, 128, … without act-order) map onto ggml's Q4_0 / Q8_0 **bit for bit**: each
//! block takes its group's fp16 scale as `d`, and the codes are rearranged, not re-rounded.
//! Anything else (act-order, asymmetric zeros, 2-bit) is dequantized exactly to f32 and then
//! quantized again, with a warning.

use super::hf::{self, Checkpoint, JsonObj, RawTensor};
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use safetensors::tensor::Dtype;
use serde_json::Value;
use std::path::Path;

/// What `quantize_config.json` (or config.json's `quantization_config`) says.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqConfig {
    pub bits: u32,
    pub group_size: Option<usize>,
    pub desc_act: bool,
    /// GPTQ v1 stores `zero - 1`; v2 stores the zero itself.
    pub zero_offset: u32,
}

impl GptqConfig {
    /// The checkpoint's GPTQ settings, `None` for an unquantized checkpoint.
    pub fn find(dir: &Path, quantization_config: Option<&Value>) -> Result<Option<GptqConfig>> {
        let file = dir.join("quantize_config.json");
        let (name, v) = if file.is_file() {
            (file.display().to_string(), hf::read_json(&file)?)
        } else if let Some(q) = quantization_config {
            (
                format!("{}: quantization_config", dir.join("config.json").display()),
                q.clone(),
            )
        } else {
            return Ok(None);
        };
        let c = JsonObj {
            file: &name,
            value: &v,
        };
        let method = c.opt_str("quant_method").unwrap_or("gptq");
        if method != "gptq" {
            return Err(Error::Unsupported(format!(
                "{name}: quant_method `{method}` (only GPTQ checkpoints are read)"
            )));
        }
        if c.flag("is_marlin_format", false) || c.opt_str("checkpoint_format") == Some("marlin") {
            return Err(Error::Unsupported(format!(
                "{name}: Marlin-packed GPTQ (convert it back to the GPTQ format first)"
            )));
        }
        let bits = c.usize("bits")? as u32;
        if !matches!(bits, 2 | 4 | 8) {
            return Err(Error::Unsupported(format!(
                "{name}: {bits}-bit GPTQ (2, 4 and 8 bits are read)"
            )));
        }
        // group_size -1 means one group over the whole input dimension.
        let group_size = match c.opt("group_size").and_then(Value::as_i64) {
            Some(g) if g > 0 => Some(g as usize),
            _ => None,
        };
        Ok(Some(GptqConfig {
            bits,
            group_size,
            desc_act: c.flag("desc_act", false),
            zero_offset: if c.opt_str("checkpoint_format") == Some("gptq_v2") {
                0
            } else {
                1
            },
        }))
    }

    /// The ggml type the layers map onto exactly, if any.
    pub fn native_type(&self) -> Option<GgmlType> {
        match self.bits {
            4 => Some(GgmlType::Q4_0),
            8 => Some(GgmlType::Q8_0),
            _ => None,
        }
    }
}

/// One GPTQ-quantized Linear, `[out, in]` in PyTorch terms.
pub struct GptqLayer<'a> {
    pub module: String,
    pub bits: u32,
    pub in_features: usize,
    pub out_features: usize,
    qweight: RawTensor<'a>,
    /// Zero point per (group, output), with the v1 offset already added.
    zeros: Vec<u8>,
    /// Scale per (group, output), fp16 bits.
    scales: Vec<u16>,
    /// Group of each input row.
    g_idx: Vec<usize>,
    /// Whether every 32-block maps exactly onto the native ggml type.
    pub exact: bool,
}

/// The tensor names of a GPTQ layer, for the extra-tensor check.
pub fn tensor_names(module: &str) -> [String; 4] {
    ["qweight", "qzeros", "scales", "g_idx"].map(|s| format!("{module}.{s}"))
}

fn word(data: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([
        data[4 * i],
        data[4 * i + 1],
        data[4 * i + 2],
        data[4 * i + 3],
    ])
}

impl<'a> GptqLayer<'a> {
    /// Reads and checks the layer `module` with PyTorch shape `[out, in]`.
    pub fn open(
        ckpt: &'a Checkpoint,
        module: &str,
        cfg: &GptqConfig,
        out_features: usize,
        in_features: usize,
    ) -> Result<GptqLayer<'a>> {
        let [qw, qz, sc, gi] = tensor_names(module);
        let get = |n: &str| {
            ckpt.get(n)
                .ok_or_else(|| Error::tensor(n, "missing from the GPTQ checkpoint"))
        };
        let bits = cfg.bits;
        let per_word = (32 / bits) as usize;
        let mask = (1u32 << bits) - 1;
        let shape_err = |t: &RawTensor, want: &[usize]| {
            Error::tensor(
                t.name,
                format!(
                    "{}: {:?} {:?}, expected {:?} for a {bits}-bit layer of [{out_features}, {in_features}]",
                    t.file.display(),
                    t.dtype,
                    t.shape,
                    want
                ),
            )
        };
        if !in_features.is_multiple_of(per_word) || !out_features.is_multiple_of(per_word) {
            return Err(Error::tensor(
                module,
                format!("[{out_features}, {in_features}] does not pack into {bits}-bit words"),
            ));
        }
        let qweight = get(&qw)?;
        let want = [in_features / per_word, out_features];
        if qweight.dtype != Dtype::I32 || qweight.shape != want {
            return Err(shape_err(&qweight, &want));
        }
        let scales_t = get(&sc)?;
        let n_groups = scales_t.shape.first().copied().unwrap_or(0);
        if scales_t.shape != [n_groups, out_features]
            || n_groups == 0
            || !hf::is_float(scales_t.dtype)
        {
            return Err(shape_err(&scales_t, &[n_groups.max(1), out_features]));
        }
        let zeros_t = get(&qz)?;
        let want = [n_groups, out_features / per_word];
        if zeros_t.dtype != Dtype::I32 || zeros_t.shape != want {
            return Err(shape_err(&zeros_t, &want));
        }
        let g_idx: Vec<usize> = match ckpt.get(&gi) {
            Some(t) => {
                if t.shape != [in_features] {
                    return Err(shape_err(&t, &[in_features]));
                }
                let v = hf::read_i32(&t)?;
                v.iter()
                    .map(|&g| usize::try_from(g).ok().filter(|&g| g < n_groups))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        Error::tensor(t.name, format!("group index out of 0..{n_groups}"))
                    })?
            }
            // Old exports without g_idx: consecutive groups.
            None => {
                let g = cfg.group_size.unwrap_or(in_features).max(1);
                (0..in_features)
                    .map(|k| (k / g).min(n_groups - 1))
                    .collect()
            }
        };
        let zero_words = hf::read_i32(&zeros_t)?;
        let zeros: Vec<u8> = (0..n_groups * out_features)
            .map(|i| {
                let (g, o) = (i / out_features, i % out_features);
                let w = zero_words[g * (out_features / per_word) + o / per_word] as u32;
                let stored = (w >> (bits as usize * (o % per_word))) & mask;
                ((stored + cfg.zero_offset) & mask) as u8
            })
            .collect();
        // Scales as fp16 bits; F32 scales are kept exactly only if they are fp16 values.
        let scale_f32 = hf::read_f32(&scales_t)?;
        let scales: Vec<u16> = scale_f32
            .iter()
            .map(|&s| half::f16::from_f32(s).to_bits())
            .collect();
        let scales_are_f16 = scale_f32
            .iter()
            .zip(&scales)
            .all(|(s, h)| half::f16::from_bits(*h).to_f32().to_bits() == s.to_bits());

        let symmetric_zero = 1u8 << (bits - 1);
        let exact = cfg.native_type().is_some()
            && scales_are_f16
            && in_features.is_multiple_of(32)
            && g_idx.chunks(32).all(|b| b.iter().all(|&g| g == b[0]))
            && zeros.iter().all(|&z| z == symmetric_zero);
        Ok(GptqLayer {
            module: module.to_string(),
            bits,
            in_features,
            out_features,
            qweight,
            zeros,
            scales,
            g_idx,
            exact,
        })
    }

    /// Why the layer cannot be mapped exactly (for the warning).
    pub fn inexact_reason(&self, cfg: &GptqConfig) -> &'static str {
        if cfg.native_type().is_none() {
            "no ggml type holds these codes"
        } else if cfg.desc_act || self.g_idx.chunks(32).any(|b| b.iter().any(|&g| g != b[0])) {
            "act-order g_idx splits 32-wide blocks across groups"
        } else if !self.in_features.is_multiple_of(32) {
            "in_features is not a multiple of 32"
        } else {
            "zero points are not symmetric (or scales are not fp16)"
        }
    }

    /// The code of input `k` for output `o`.
    fn q(&self, k: usize, o: usize) -> u32 {
        let per_word = (32 / self.bits) as usize;
        let w = word(self.qweight.data, (k / per_word) * self.out_features + o);
        (w >> (self.bits as usize * (k % per_word))) & ((1 << self.bits) - 1)
    }

    /// Rows `o0..` (output features) dequantized: `scale16 · (q − zero)`, exact in f32.
    pub fn read_rows(&self, o0: usize, buf: &mut [f32]) -> Result<()> {
        let n_in = self.in_features;
        for (i, row) in buf.chunks_exact_mut(n_in).enumerate() {
            let o = o0 + i;
            if o >= self.out_features {
                return Err(Error::tensor(&self.module, "row out of range"));
            }
            for (k, w) in row.iter_mut().enumerate() {
                let g = self.g_idx[k] * self.out_features + o;
                let scale = half::f16::from_bits(self.scales[g]).to_f32();
                *w = scale * (self.q(k, o) as f32 - self.zeros[g] as f32);
            }
        }
        Ok(())
    }

    /// The whole layer as Q4_0 / Q8_0 blocks (requires `exact`): codes rearranged, scales copied.
    pub fn write_exact(&self, ty: GgmlType, out: &mut [u8]) -> Result<()> {
        let block_bytes = ty.type_size();
        let blocks_per_row = self.in_features / 32;
        if !self.exact || out.len() != self.out_features * blocks_per_row * block_bytes {
            return Err(Error::tensor(&self.module, "cannot be mapped exactly"));
        }
        for (i, block) in out.chunks_exact_mut(block_bytes).enumerate() {
            let (o, b) = (i / blocks_per_row, i % blocks_per_row);
            let k0 = 32 * b;
            let d = self.scales[self.g_idx[k0] * self.out_features + o];
            block[..2].copy_from_slice(&d.to_le_bytes());
            match ty {
                // y = d · (nibble − 8); element j in the low nibble of qs[j], j + 16 in the high.
                GgmlType::Q4_0 => {
                    for j in 0..16 {
                        let lo = self.q(k0 + j, o);
                        let hi = self.q(k0 + j + 16, o);
                        block[2 + j] = (lo | (hi << 4)) as u8;
                    }
                }
                // y = d · qs with qs = q − 128 (−128 included: the format holds it).
                GgmlType::Q8_0 => {
                    for j in 0..32 {
                        block[2 + j] = (self.q(k0 + j, o) as i32 - 128) as i8 as u8;
                    }
                }
                _ => {
                    return Err(Error::tensor(
                        &self.module,
                        format!("no exact mapping to {ty}"),
                    ))
                }
            }
        }
        Ok(())
    }
}
