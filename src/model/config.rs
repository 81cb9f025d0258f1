//! Hyperparameters read from GGUF metadata (llama.cpp's key names, plus our Qwen-1 extras).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Which forward pass the file needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Qwen-1 (`QWenLMHeadModel`): fused QKV, dynamic NTK RoPE, logN attention scaling.
    Qwen,
    /// Qwen-1.5 / 2 / 2.5 (`Qwen2ForCausalLM`): separate q/k/v with bias, GQA.
    Qwen2,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen => "qwen",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Metadata keys for Qwen-1 behaviour that llama.cpp's `qwen` arch does not record. Readers that
/// do not know them ignore them; without them a Qwen-1 file runs like llama.cpp runs it.
pub mod qwen1_keys {
    /// `seq_length` of the HF config: the training length NTK and logN are relative to.
    pub const SEQ_LENGTH: &str = "qwen.seq_length";
    pub const USE_DYNAMIC_NTK: &str = "qwen.rope.use_dynamic_ntk";
    pub const USE_LOGN_ATTN: &str = "qwen.attention.use_logn";
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Hidden size of the MLP (rows of `ffn_up` / `ffn_gate`).
    pub n_ff: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// `context_length` from the file (the longest context the model was built for).
    pub n_ctx_train: usize,
    /// Qwen-1: `seq_length` (NTK and logN engage beyond it). 0 when not applicable.
    pub seq_length: usize,
    pub use_dynamic_ntk: bool,
    pub use_logn_attn: bool,
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig> {
        let arch_name = f.get_str("general.architecture")?;
        let arch = match arch_name {
            "qwen" => Arch::Qwen,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::Unsupported(format!(
                    "architecture `{other}` (libqwen runs `qwen` and `qwen2`)"
                )))
            }
        };
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let usize_of = |k: &str| -> Result<usize> { Ok(f.get_u64(&key(k))? as usize) };
        let n_embd = usize_of("embedding_length")?;
        let n_head = usize_of("attention.head_count")?;
        let n_head_kv = match f.get_opt_u32(&key("attention.head_count_kv"))? {
            Some(v) => v as usize,
            None => n_head,
        };
        let n_layer = usize_of("block_count")?;
        // Qwen-1 files (ours and llama.cpp's) store the HF intermediate_size, which counts both
        // MLP branches: each of ffn_up / ffn_gate has half of it as rows.
        let n_ff = match arch {
            Arch::Qwen => usize_of("feed_forward_length")? / 2,
            Arch::Qwen2 => usize_of("feed_forward_length")?,
        };
        let n_ctx_train = usize_of("context_length")?;
        let rms_eps = f.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let rope_base = f.get_opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
        if n_head == 0 || n_head_kv == 0 || n_embd % n_head != 0 || n_head % n_head_kv != 0 {
            return Err(Error::metadata(
                key("attention.head_count"),
                format!("{n_head} heads / {n_head_kv} kv heads do not divide embedding {n_embd}"),
            ));
        }
        let head_dim = n_embd / n_head;
        if let Some(rot) = f.get_opt_u32(&key("rope.dimension_count"))? {
            if rot as usize != head_dim {
                return Err(Error::Unsupported(format!(
                    "partial rotary embedding ({rot} of {head_dim} dims)"
                )));
            }
        }
        if head_dim % 2 != 0 || n_layer == 0 || n_ff == 0 {
            return Err(Error::metadata(a, "degenerate hyperparameters"));
        }
        // The embedding's row count is the model's vocabulary; the tokenizer may know fewer
        // tokens (Qwen-1 pads 151851 tokens to 151936 rows).
        let n_vocab = match f.tensor("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => t.dims[1],
            _ => return Err(Error::tensor("token_embd.weight", "missing or not 2-D")),
        };
        let (seq_length, use_dynamic_ntk, use_logn_attn) = match arch {
            Arch::Qwen => (
                f.get_opt_u32(qwen1_keys::SEQ_LENGTH)?
                    .map(|v| v as usize)
                    .unwrap_or(0),
                f.get_opt_bool(qwen1_keys::USE_DYNAMIC_NTK)?
                    .unwrap_or(false),
                f.get_opt_bool(qwen1_keys::USE_LOGN_ATTN)?.unwrap_or(false),
            ),
            Arch::Qwen2 => (0, false, false),
        };
        if (use_dynamic_ntk || use_logn_attn) && seq_length < 2 {
            return Err(Error::metadata(
                qwen1_keys::SEQ_LENGTH,
                "dynamic NTK / logN attention need a seq_length of at least 2",
            ));
        }
        Ok(ModelConfig {
            arch,
            n_vocab,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            rms_eps,
            rope_base,
            n_ctx_train,
            seq_length,
            use_dynamic_ntk,
            use_logn_attn,
        })
    }

    /// Qwen-1's dynamic NTK alpha for a prefill of `len` tokens (testdata README §4):
    /// `alpha = max(2^ceil(log2(len/S) + 1) - 1, 1)`.
    pub fn ntk_alpha(&self, len: usize) -> f64 {
        if !self.use_dynamic_ntk || len == 0 || self.seq_length == 0 {
            return 1.0;
        }
        let context_value = (len as f64 / self.seq_length as f64).log2() + 1.0;
        (2f64.powf(context_value.ceil()) - 1.0).max(1.0)
    }

    /// RoPE inverse frequencies for a given NTK alpha (alpha 1 = plain RoPE).
    pub fn rope_inv_freq(&self, alpha: f64, out: &mut [f32]) {
        let d = self.head_dim as f64;
        let base = self.rope_base as f64 * alpha.powf(d / (d - 2.0));
        // The reference computes `base ** (arange(0, D, 2) / D)` in fp32.
        let base32 = base as f32;
        for (i, f) in out.iter_mut().enumerate() {
            let exponent = (2 * i) as f32 / self.head_dim as f32;
            *f = 1.0 / base32.powf(exponent);
        }
    }

    /// Qwen-1 logN factor for the query at absolute position `pos`.
    pub fn logn_scale(&self, pos: usize) -> f32 {
        if !self.use_logn_attn || pos < self.seq_length {
            return 1.0;
        }
        // Precomputed in float64 by the reference, stored as fp32.
        (((pos + 1) as f64).ln() / (self.seq_length as f64).ln()) as f32
    }
}
