//! Which ggml type each tensor gets for a `--type`, and the fallbacks for rows that do not fill
//! whole blocks.

use super::names::Role;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;

/// The `--type` argument: one type for every matrix, or a llama.cpp-style mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutType {
    Uniform(GgmlType),
    /// `q4_k_m` / `q5_k_m`: the base K-quant for most matrices, more bits where errors hurt
    /// most. Following llama.cpp's `llama_tensor_get_type`:
    /// * `output.weight` (or `token_embd.weight` when it doubles as the LM head): Q6_K;
    /// * `attn_v` and `ffn_down` of the first and last eighth of the blocks and every third block
    ///   between (llama.cpp's `use_more_bits`): Q6_K;
    /// * Qwen-1's fused `attn_qkv` (it holds V): Q5_K for `q4_k_m`, Q6_K for `q5_k_m`;
    /// * `token_embd.weight` of untied models keeps the base type (it is only looked up).
    Mix(GgmlType),
}

impl OutType {
    pub const NAMES: &'static [&'static str] = &[
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k",
        "q4_k_m", "q5_k_m",
    ];

    pub fn parse(s: &str) -> Result<OutType> {
        let lower = s.to_ascii_lowercase();
        let t = match lower.as_str() {
            "q4_k_m" => OutType::Mix(GgmlType::Q4_K),
            "q5_k_m" => OutType::Mix(GgmlType::Q5_K),
            other if Self::NAMES.contains(&other) => {
                OutType::Uniform(GgmlType::from_name(other).expect("names come from the table"))
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown output type `{s}` (one of {})",
                    Self::NAMES.join(", ")
                )))
            }
        };
        Ok(t)
    }

    pub fn name(self) -> String {
        match self {
            OutType::Uniform(t) => t.name().to_string(),
            OutType::Mix(t) => format!("{}_m", t.name()),
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, OutType::Uniform(t) if !t.is_quantized())
    }

    /// llama.cpp's `general.file_type` (`enum llama_ftype`) for this choice.
    pub fn file_type(self) -> u32 {
        use GgmlType::*;
        match self {
            OutType::Uniform(t) => match t {
                F32 => 0,
                F16 => 1,
                Q4_0 => 2,
                Q4_1 => 3,
                Q8_0 => 7,
                Q5_0 => 8,
                Q5_1 => 9,
                Q4_K => 14,
                Q5_K => 16,
                Q6_K => 18,
                BF16 => 32,
                _ => 1024, // LLAMA_FTYPE_GUESSED
            },
            OutType::Mix(Q4_K) => 15,
            OutType::Mix(_) => 17,
        }
    }
}

/// llama.cpp's `use_more_bits`: the layers whose attn_v / ffn_down matter most.
fn use_more_bits(layer: usize, n_layer: usize) -> bool {
    layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2
}

/// The type a tensor gets before the block-size check. `lm_head` is true for the tensor the
/// model multiplies its last hidden state with (`output`, or `token_embd` when tied).
pub fn preferred_type(
    out: OutType,
    role: Role,
    layer: Option<usize>,
    n_layer: usize,
    lm_head: bool,
) -> GgmlType {
    if role == Role::Vector {
        return GgmlType::F32;
    }
    match out {
        OutType::Uniform(t) => t,
        OutType::Mix(base) => {
            let more = layer.is_some_and(|l| l < n_layer && use_more_bits(l, n_layer));
            if lm_head {
                return GgmlType::Q6_K;
            }
            match role {
                Role::AttnV | Role::FfnDown if more => GgmlType::Q6_K,
                Role::AttnQkv if base == GgmlType::Q4_K => GgmlType::Q5_K,
                Role::AttnQkv => GgmlType::Q6_K,
                _ => base,
            }
        }
    }
}

/// `ty` if a row of `cols` elements is a whole number of its blocks, else the closest type that
/// fits (llama.cpp's choices: Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0; F16 when nothing else fits).
pub fn fit_type(ty: GgmlType, cols: usize) -> GgmlType {
    use GgmlType::*;
    if cols.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let next = match ty {
        Q2_K | Q3_K | Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K | Q8_K => Q8_0,
        _ => F16,
    };
    fit_type(next, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names() {
        for n in OutType::NAMES {
            assert_eq!(OutType::parse(n).unwrap().name(), *n);
        }
        assert!(OutType::parse("q3_k").is_err());
        assert_eq!(
            OutType::parse("Q8_0").unwrap(),
            OutType::Uniform(GgmlType::Q8_0)
        );
    }

    #[test]
    fn fallbacks() {
        assert_eq!(fit_type(GgmlType::Q4_K, 64), GgmlType::Q5_0);
        assert_eq!(fit_type(GgmlType::Q6_K, 128), GgmlType::Q8_0);
        assert_eq!(fit_type(GgmlType::Q5_K, 4096), GgmlType::Q5_K);
        assert_eq!(fit_type(GgmlType::Q4_0, 48), GgmlType::F16);
        assert_eq!(fit_type(GgmlType::Q4_K, 48), GgmlType::F16);
    }

    #[test]
    fn mix() {
        let m = OutType::Mix(GgmlType::Q4_K);
        let t = |role, layer, lm| preferred_type(m, role, layer, 24, lm);
        assert_eq!(t(Role::Output, None, true), GgmlType::Q6_K);
        assert_eq!(t(Role::TokenEmbd, None, false), GgmlType::Q4_K);
        assert_eq!(t(Role::TokenEmbd, None, true), GgmlType::Q6_K);
        assert_eq!(t(Role::AttnV, Some(0), false), GgmlType::Q6_K);
        assert_eq!(t(Role::AttnV, Some(3), false), GgmlType::Q4_K);
        assert_eq!(t(Role::FfnDown, Some(23), false), GgmlType::Q6_K);
        assert_eq!(t(Role::AttnQkv, Some(5), false), GgmlType::Q5_K);
        assert_eq!(t(Role::FfnUp, Some(0), false), GgmlType::Q4_K);
        assert_eq!(t(Role::Vector, Some(0), false), GgmlType::F32);
    }
}
