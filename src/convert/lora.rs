//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), merged into the
//! base weights before quantization: `W' = W + scale · (alpha / r) · B · A`
//! (`alpha / √r` with `use_rslora`), A `[r, in]`, B `[out, r]`.

use super::hf::{self, JsonObj, Shard};
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The low-rank update of one Linear, ready to add to its rows.
#[derive(Clone, Debug)]
pub struct Delta {
    /// `[r, in]`.
    a: Vec<f32>,
    /// `[out, r]`.
    b: Vec<f32>,
    r: usize,
    cols: usize,
    scale: f64,
}

impl Delta {
    /// Adds the update to rows `row0..` of the weight (`buf` holds whole rows).
    pub fn apply(&self, row0: usize, buf: &mut [f32]) {
        for (i, row) in buf.chunks_exact_mut(self.cols).enumerate() {
            let b = &self.b[(row0 + i) * self.r..(row0 + i + 1) * self.r];
            for (k, w) in row.iter_mut().enumerate() {
                let dot: f64 = (0..self.r)
                    .map(|j| b[j] as f64 * self.a[j * self.cols + k] as f64)
                    .sum();
                *w += (self.scale * dot) as f32;
            }
        }
    }
}

/// An adapter, its factors matched to the base model's modules.
pub struct Adapter {
    /// HF module name (`transformer.h.0.attn.c_attn`) → its update.
    deltas: BTreeMap<String, (Delta, [String; 2])>,
}

/// PEFT's module matching: the name equals the key or ends with `.key`.
fn matches_key(module: &str, key: &str) -> bool {
    module == key || module.ends_with(&format!(".{key}"))
}

impl Adapter {
    /// Reads the adapter in `dir`; `user_scale` multiplies PEFT's own scaling.
    pub fn open(dir: &Path, user_scale: f64) -> Result<Adapter> {
        let config_path = dir.join("adapter_config.json");
        if !config_path.is_file() {
            return Err(Error::io(
                &config_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found: not a PEFT LoRA adapter directory",
                ),
            ));
        }
        let v = hf::read_json(&config_path)?;
        let name = config_path.display().to_string();
        let c = JsonObj {
            file: &name,
            value: &v,
        };
        if let Some(t) = c.opt_str("peft_type") {
            if t != "LORA" {
                return Err(Error::Unsupported(format!(
                    "{name}: peft_type `{t}` (only LORA)"
                )));
            }
        }
        if c.flag("use_dora", false) {
            return Err(Error::Unsupported(format!("{name}: DoRA adapters")));
        }
        if c.flag("fan_in_fan_out", false) {
            return Err(Error::Unsupported(format!(
                "{name}: fan_in_fan_out (Conv1D layers; Qwen uses nn.Linear)"
            )));
        }
        let alpha = c.opt_f64("lora_alpha")?.unwrap_or(8.0);
        let rslora = c.flag("use_rslora", false);
        let alpha_pattern: Vec<(String, f64)> = c
            .opt("alpha_pattern")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();

        let weights = dir.join("adapter_model.safetensors");
        if !weights.is_file() {
            let has_bin = dir.join("adapter_model.bin").is_file();
            return Err(Error::io(
                &weights,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    if has_bin {
                        "adapter weights are a PyTorch .bin: save them as safetensors"
                    } else {
                        "adapter weights not found"
                    },
                ),
            ));
        }
        let shard = Shard::open(&weights)?;
        let mut factors: BTreeMap<String, [Option<String>; 2]> = BTreeMap::new();
        for tensor in shard.names() {
            let bad = || {
                Error::Unsupported(format!(
                    "{}: tensor `{tensor}` is not a LoRA factor of a Linear layer \
                     (embedding LoRA and modules_to_save are not merged)",
                    weights.display()
                ))
            };
            let rest = tensor.strip_prefix("base_model.model.").ok_or_else(bad)?;
            let rest = rest.replace(".default.weight", ".weight");
            let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else {
                return Err(bad());
            };
            factors.entry(module.to_string()).or_default()[which] = Some(tensor.clone());
        }
        let mut deltas = BTreeMap::new();
        for (module, [a, b]) in factors {
            let (Some(a_name), Some(b_name)) = (a, b) else {
                return Err(Error::Checkpoint(format!(
                    "{}: module `{module}` has only one of lora_A / lora_B",
                    weights.display()
                )));
            };
            let a_raw = shard.raw(&a_name).expect("listed by the shard");
            let b_raw = shard.raw(&b_name).expect("listed by the shard");
            let (a_shape, b_shape) = (a_raw.1.to_vec(), b_raw.1.to_vec());
            if a_shape.len() != 2
                || b_shape.len() != 2
                || a_shape[0] != b_shape[1]
                || a_shape[0] == 0
            {
                return Err(Error::tensor(
                    &a_name,
                    format!(
                        "{}: lora_A {a_shape:?} and lora_B {b_shape:?} do not form a rank-r update",
                        weights.display()
                    ),
                ));
            }
            let r = a_shape[0];
            let alpha = alpha_pattern
                .iter()
                .find(|(k, _)| matches_key(&module, k))
                .map_or(alpha, |(_, a)| *a);
            let peft_scale = if rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            let read = |n: &str, raw: (safetensors::Dtype, &[usize], &[u8])| {
                hf::read_f32(&hf::RawTensor {
                    name: n,
                    file: &weights,
                    dtype: raw.0,
                    shape: raw.1,
                    data: raw.2,
                })
            };
            let delta = Delta {
                a: read(&a_name, a_raw)?,
                b: read(&b_name, b_raw)?,
                r,
                cols: a_shape[1],
                scale: user_scale * peft_scale,
            };
            deltas.insert(module, (delta, [a_name, b_name]));
        }
        if deltas.is_empty() {
            return Err(Error::Checkpoint(format!(
                "{}: no LoRA factors",
                weights.display()
            )));
        }
        Ok(Adapter { deltas })
    }

    /// Takes the update for `module` of PyTorch shape `[rows, cols]`, checking it fits.
    pub fn take(&mut self, module: &str, rows: usize, cols: usize) -> Result<Option<Delta>> {
        let Some((delta, [a_name, b_name])) = self.deltas.remove(module) else {
            return Ok(None);
        };
        if delta.cols != cols || delta.b.len() != rows * delta.r {
            return Err(Error::tensor(
                if delta.cols != cols { a_name } else { b_name },
                format!(
                    "the adapter's [{}, {}] update does not fit the base weight [{rows}, {cols}]: \
                     an adapter for another base model?",
                    delta.b.len() / delta.r,
                    delta.cols
                ),
            ));
        }
        Ok(Some(delta))
    }

    /// Fails if some adapter module matched nothing in the base model.
    pub fn finish(self) -> Result<()> {
        match self.deltas.keys().next() {
            None => Ok(()),
            Some(module) => Err(Error::Checkpoint(format!(
                "LoRA module `{module}`{} is not a layer of the base model: an adapter for \
                 another base model?",
                match self.deltas.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                }
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_adds_scaled_product() {
        // W is 2x3, r = 1: B = [1, 2]ᵀ, A = [1, 0, -1], scale 0.5.
        let d = Delta {
            a: vec![1.0, 0.0, -1.0],
            b: vec![1.0, 2.0],
            r: 1,
            cols: 3,
            scale: 0.5,
        };
        let mut w = vec![0.0; 6];
        d.apply(0, &mut w);
        assert_eq!(w, vec![0.5, 0.0, -0.5, 1.0, 0.0, -1.0]);
        let mut second_row = vec![0.0; 3];
        d.apply(1, &mut second_row);
        assert_eq!(second_row, vec![1.0, 0.0, -1.0]);
    }

    #[test]
    fn peft_key_matching() {
        assert!(matches_key("transformer.h.0.attn.c_proj", "c_proj"));
        assert!(matches_key("c_proj", "c_proj"));
        assert!(!matches_key("transformer.h.0.attn.xc_proj", "c_proj"));
    }
}
