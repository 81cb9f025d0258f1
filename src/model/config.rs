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

/// llama.cpp's RoPE scaling keys, after the `{arch}.` prefix (`qwen2.rope.scaling.type`, ...).
pub mod rope_scaling_keys {
    /// String: `none`, `linear` or `yarn`.
    pub const TYPE: &str = "rope.scaling.type";
    /// f32: context extension ratio (`linear`: every frequency is divided by it).
    pub const FACTOR: &str = "rope.scaling.factor";
    /// u32: the context the model was trained with, which YaRN's correction range is relative to.
    pub const ORIGINAL_CONTEXT_LENGTH: &str = "rope.scaling.original_context_length";
    /// f32: YaRN `beta_fast` (default 32): rotations below which a dimension is interpolated.
    pub const YARN_BETA_FAST: &str = "rope.scaling.yarn_beta_fast";
    /// f32: YaRN `beta_slow` (default 1): rotations above which a dimension is extrapolated.
    pub const YARN_BETA_SLOW: &str = "rope.scaling.yarn_beta_slow";
    /// f32: how much of the extrapolated frequencies is mixed in (default 1, as in the paper).
    pub const YARN_EXT_FACTOR: &str = "rope.scaling.yarn_ext_factor";
    /// f32: the cos/sin multiplier (HF `attention_factor`; default `0.1 ln(factor) + 1`).
    pub const YARN_ATTN_FACTOR: &str = "rope.scaling.yarn_attn_factor";
    /// f32: DeepSeek's `mscale_all_dim` variant; not used by Qwen, refused unless 0.
    pub const YARN_LOG_MULTIPLIER: &str = "rope.scaling.yarn_log_multiplier";
    /// f32: llama.cpp's extra attention multiplier; refused unless 1.
    pub const ATTN_FACTOR: &str = "rope.scaling.attn_factor";
    /// f32: the pre-`rope.scaling.*` linear factor of old llama.cpp files.
    pub const SCALE_LINEAR: &str = "rope.scale_linear";
}

/// RoPE scaling for contexts beyond the training length.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    Yarn(Yarn),
}

/// YaRN (Peng et al. 2023, arXiv:2309.00071) with Hugging Face `_compute_yarn_parameters`
/// semantics: dimensions that turn fewer than `beta_slow` times over the original context are
/// interpolated (frequency / factor), those that turn more than `beta_fast` times keep their
/// frequency, a linear ramp blends the ones between; cos and sin are multiplied by the
/// attention factor (`0.1 ln(factor) + 1` unless given).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    /// The context length the model was trained with.
    pub original_context: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Weight of the extrapolated frequencies in the blend (llama.cpp's `ext_factor`; 1 in HF).
    pub ext_factor: f64,
    /// The cos/sin multiplier; `None` = `0.1 ln(factor) + 1`.
    pub attn_factor: Option<f64>,
}

impl Yarn {
    /// The paper's defaults for `factor` over `original_context`.
    pub fn new(factor: f64, original_context: usize) -> Yarn {
        Yarn {
            factor,
            original_context,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: None,
        }
    }

    /// The multiplier of cos and sin (HF's `attention_factor`, the paper's `sqrt(1/t)`).
    pub fn attention_factor(&self) -> f64 {
        match self.attn_factor {
            Some(a) => a,
            None if self.factor > 1.0 => 0.1 * self.factor.ln() + 1.0,
            None => 1.0,
        }
    }

    /// The dimension (of `head_dim`) whose wavelength turns `rotations` times over the original
    /// context: `d * ln(L / (2 pi r)) / (2 ln base)`.
    fn correction_dim(&self, rotations: f64, head_dim: usize, base: f64) -> f64 {
        let d = head_dim as f64;
        d * (self.original_context as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * base.ln())
    }

    /// The ramp's ends, floored/ceiled and clamped to `[0, head_dim - 1]` as HF does.
    pub fn correction_range(&self, head_dim: usize, base: f64) -> (f64, f64) {
        let low = self.correction_dim(self.beta_fast, head_dim, base).floor();
        let high = self.correction_dim(self.beta_slow, head_dim, base).ceil();
        (low.max(0.0), high.min(head_dim as f64 - 1.0))
    }

    /// Inverse frequencies for `head_dim / 2` rotated pairs, computed in f64.
    pub fn inv_freq(&self, head_dim: usize, base: f64, out: &mut [f64]) {
        let (low, mut high) = self.correction_range(head_dim, base);
        if low == high {
            high += 0.001; // HF: avoid a zero-width ramp
        }
        for (i, f) in out.iter_mut().enumerate() {
            let extrapolated = 1.0 / base.powf((2 * i) as f64 / head_dim as f64);
            let interpolated = extrapolated / self.factor;
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            // HF's `inv_freq_extrapolation_factor`, scaled by llama.cpp's ext_factor.
            let keep = (1.0 - ramp) * self.ext_factor;
            *f = interpolated * (1.0 - keep) + extrapolated * keep;
        }
    }
}

impl RopeScaling {
    /// A scaling given by name (`none`, `linear`, `yarn`) as files and the CLI spell it, with
    /// the paper's defaults for the rest. `original_context` only matters for YaRN.
    pub fn from_parts(kind: &str, factor: f64, original_context: usize) -> Result<RopeScaling> {
        let r = match kind {
            "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor },
            "yarn" => RopeScaling::Yarn(Yarn::new(factor, original_context)),
            other => {
                return Err(Error::Unsupported(format!(
                    "RoPE scaling type `{other}` (libqwen knows none, linear and yarn)"
                )))
            }
        };
        r.check()?;
        Ok(r)
    }

    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::None => "none",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Yarn(_) => "yarn",
        }
    }

    /// Checks the values; the message names the offending one.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str, v: f64, need: &str| {
            Err(Error::InvalidArgument(format!(
                "RoPE scaling: {what} {v} ({need})"
            )))
        };
        match self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => {
                if !(factor.is_finite() && *factor > 0.0) {
                    return bad("factor", *factor, "must be a finite number > 0");
                }
                Ok(())
            }
            RopeScaling::Yarn(y) => {
                if !(y.factor.is_finite() && y.factor >= 1.0) {
                    return bad("YaRN factor", y.factor, "must be a finite number >= 1");
                }
                if y.original_context < 2 {
                    return bad(
                        "YaRN original context length",
                        y.original_context as f64,
                        "must be at least 2",
                    );
                }
                if !(y.beta_fast.is_finite() && y.beta_slow.is_finite() && y.beta_slow > 0.0) {
                    return bad(
                        "YaRN beta_slow",
                        y.beta_slow,
                        "betas must be finite and > 0",
                    );
                }
                if y.beta_fast < y.beta_slow {
                    return bad("YaRN beta_fast", y.beta_fast, "must not be below beta_slow");
                }
                if !(0.0..=1.0).contains(&y.ext_factor) {
                    return bad("YaRN ext_factor", y.ext_factor, "must be in [0, 1]");
                }
                if let Some(a) = y.attn_factor {
                    if !(a.is_finite() && a > 0.0) {
                        return bad("YaRN attention factor", a, "must be a finite number > 0");
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads `{arch}.rope.scaling.*`; `n_ctx_train` stands in for a missing original context.
    fn from_gguf(f: &GgufFile, arch: &str, n_ctx_train: usize) -> Result<RopeScaling> {
        use rope_scaling_keys as k;
        let key = |s: &str| format!("{arch}.{s}");
        let meta_err = |s: &str, e: Error| match e {
            Error::InvalidArgument(msg) | Error::Unsupported(msg) => Error::metadata(key(s), msg),
            e => e,
        };
        let f64_of =
            |s: &str| -> Result<Option<f64>> { Ok(f.get_opt_f32(&key(s))?.map(f64::from)) };
        if let Some(v) = f64_of(k::YARN_LOG_MULTIPLIER)? {
            if v != 0.0 {
                return Err(Error::metadata(
                    key(k::YARN_LOG_MULTIPLIER),
                    format!("{v}: DeepSeek's mscale_all_dim YaRN variant is not supported"),
                ));
            }
        }
        if let Some(v) = f64_of(k::ATTN_FACTOR)? {
            if v != 1.0 {
                return Err(Error::metadata(
                    key(k::ATTN_FACTOR),
                    format!("{v}: an attention factor other than 1 is not supported"),
                ));
            }
        }
        let kind = match f.get_opt_str(&key(k::TYPE))? {
            Some(kind) => kind.to_string(),
            None => match f64_of(k::SCALE_LINEAR)? {
                Some(s) if s != 1.0 => {
                    let r = RopeScaling::Linear { factor: s };
                    r.check().map_err(|e| meta_err(k::SCALE_LINEAR, e))?;
                    return Ok(r);
                }
                _ => return Ok(RopeScaling::None),
            },
        };
        if kind == "none" {
            return Ok(RopeScaling::None);
        }
        let factor = f64_of(k::FACTOR)?
            .ok_or_else(|| Error::metadata(key(k::FACTOR), format!("missing (type `{kind}`)")))?;
        let original = match f.get_opt_u32(&key(k::ORIGINAL_CONTEXT_LENGTH))? {
            Some(n) => n as usize,
            None => n_ctx_train,
        };
        let mut r =
            RopeScaling::from_parts(&kind, factor, original).map_err(|e| meta_err(k::TYPE, e))?;
        if let RopeScaling::Yarn(y) = &mut r {
            if let Some(v) = f64_of(k::YARN_BETA_FAST)? {
                y.beta_fast = v;
            }
            if let Some(v) = f64_of(k::YARN_BETA_SLOW)? {
                y.beta_slow = v;
            }
            if let Some(v) = f64_of(k::YARN_EXT_FACTOR)? {
                y.ext_factor = v;
            }
            y.attn_factor = f64_of(k::YARN_ATTN_FACTOR)?;
            r.check().map_err(|e| meta_err("rope.scaling", e))?;
        }
        Ok(r)
    }
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
    /// RoPE scaling (`{arch}.rope.scaling.*`); `None` for plain RoPE.
    pub rope_scaling: RopeScaling,
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
        let rope_scaling = RopeScaling::from_gguf(f, a, n_ctx_train)?;
        let config = ModelConfig {
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
            rope_scaling,
        };
        config
            .check_rope()
            .map_err(|e| Error::metadata(format!("{a}.rope.scaling.type"), e.to_string()))?;
        Ok(config)
    }

    /// Settings that exclude each other: Qwen-1's dynamic NTK rescales the base per prefill,
    /// which does not compose with a fixed linear/YaRN scaling.
    pub fn check_rope(&self) -> Result<()> {
        self.rope_scaling.check()?;
        if self.use_dynamic_ntk && self.rope_scaling != RopeScaling::None {
            return Err(Error::InvalidArgument(format!(
                "{} RoPE scaling and Qwen-1's dynamic NTK exclude each other (turn NTK off)",
                self.rope_scaling.name()
            )));
        }
        Ok(())
    }

    /// The factor RoPE's cos and sin are multiplied by (YaRN's attention factor; 1 otherwise).
    pub fn rope_attn_factor(&self) -> f32 {
        match &self.rope_scaling {
            RopeScaling::Yarn(y) => y.attention_factor() as f32,
            _ => 1.0,
        }
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

    /// RoPE inverse frequencies for a given NTK alpha (alpha 1 = plain RoPE), with the model's
    /// RoPE scaling applied. `out` has `head_dim / 2` entries.
    pub fn rope_inv_freq(&self, alpha: f64, out: &mut [f32]) {
        if let RopeScaling::Yarn(y) = &self.rope_scaling {
            // In f64, rounded once (there is no fp32 reference to follow bit for bit here).
            let mut f64s = vec![0.0f64; out.len()];
            y.inv_freq(self.head_dim, self.rope_base as f64, &mut f64s);
            for (o, f) in out.iter_mut().zip(f64s) {
                *o = f as f32;
            }
            return;
        }
        let d = self.head_dim as f64;
        let base = self.rope_base as f64 * alpha.powf(d / (d - 2.0));
        // The reference computes `base ** (arange(0, D, 2) / D)` in fp32.
        let base32 = base as f32;
        for (i, f) in out.iter_mut().enumerate() {
            let exponent = (2 * i) as f32 / self.head_dim as f32;
            *f = 1.0 / base32.powf(exponent);
        }
        if let RopeScaling::Linear { factor } = self.rope_scaling {
            // HF: `inv_freq /= factor` on the fp32 frequencies.
            let factor = factor as f32;
            out.iter_mut().for_each(|f| *f /= factor);
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
