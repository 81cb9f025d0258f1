//! GGUF metadata for a converted checkpoint: llama.cpp's keys for the architecture and the
//! tokenizer, our Qwen-1 extras, and the generation defaults.

use super::hf::{GenerationConfig, HfConfig};
use super::vocab::{Vocab, CHATML_TEMPLATE};
use crate::gguf::MetadataValue as V;
use crate::model::config::{qwen1_keys, Arch, RopeScaling, Yarn};

/// Generation defaults from `generation_config.json`, stored so a runtime can use the sampling
/// the model was published with. Only keys present in the checkpoint are written.
pub mod generation_keys {
    /// String: `chatml` or `raw` (Qwen-1's `chat_format`).
    pub const CHAT_FORMAT: &str = "generation.chat_format";
    /// u32: Qwen-1's `max_window_size`, the token budget `make_context` keeps history within.
    pub const MAX_WINDOW_SIZE: &str = "generation.max_window_size";
    /// bool: sample (true) or decode greedily (false).
    pub const DO_SAMPLE: &str = "generation.do_sample";
    /// f32.
    pub const TEMPERATURE: &str = "generation.temperature";
    /// f32.
    pub const TOP_P: &str = "generation.top_p";
    /// u32; 0 disables top-k.
    pub const TOP_K: &str = "generation.top_k";
    /// f32; 1.0 disables it.
    pub const REPETITION_PENALTY: &str = "generation.repetition_penalty";
    /// u32.
    pub const MAX_NEW_TOKENS: &str = "generation.max_new_tokens";
}

pub type Kv = Vec<(String, V)>;

fn u32v(n: usize) -> V {
    V::U32(u32::try_from(n).unwrap_or(u32::MAX))
}

/// `general.*` and `{arch}.*` hyperparameters.
pub fn model_metadata(c: &HfConfig, name: &str, file_type: u32, quantized: bool) -> Kv {
    let a = c.arch.name();
    let k = |s: &str| format!("{a}.{s}");
    let mut kv: Kv = vec![
        ("general.architecture".into(), V::String(a.into())),
        ("general.name".into(), V::String(name.into())),
        (k("context_length"), u32v(c.max_position_embeddings)),
        (k("embedding_length"), u32v(c.hidden_size)),
        (k("block_count"), u32v(c.n_layer)),
        // llama.cpp's convention: Qwen-1 files store the HF `intermediate_size`, twice the rows
        // of ffn_up/ffn_gate (the loader halves it), so our files and llama.cpp's are the same.
        (
            k("feed_forward_length"),
            u32v(if c.arch == Arch::Qwen {
                2 * c.n_ff
            } else {
                c.n_ff
            }),
        ),
        (k("attention.head_count"), u32v(c.n_head)),
    ];
    if c.arch == Arch::Qwen2 {
        kv.push((k("attention.head_count_kv"), u32v(c.n_head_kv)));
    }
    kv.extend([
        (k("rope.freq_base"), V::F32(c.rope_base as f32)),
        (k("rope.dimension_count"), u32v(c.rope_dims)),
        (
            k("attention.layer_norm_rms_epsilon"),
            V::F32(c.rms_eps as f32),
        ),
    ]);
    if let Some(r) = &c.rope_scaling {
        use crate::model::config::rope_scaling_keys as rk;
        kv.push((k(rk::TYPE), V::String(r.name().into())));
        match r {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => kv.push((k(rk::FACTOR), V::F32(*factor as f32))),
            RopeScaling::Yarn(y) => {
                kv.push((k(rk::FACTOR), V::F32(y.factor as f32)));
                kv.push((k(rk::ORIGINAL_CONTEXT_LENGTH), u32v(y.original_context)));
                // Like llama.cpp's converter, only what departs from the paper's defaults.
                let defaults = Yarn::new(y.factor, y.original_context);
                let extras = [
                    (rk::YARN_BETA_FAST, y.beta_fast, defaults.beta_fast),
                    (rk::YARN_BETA_SLOW, y.beta_slow, defaults.beta_slow),
                    (rk::YARN_EXT_FACTOR, y.ext_factor, defaults.ext_factor),
                ];
                for (key, v, default) in extras {
                    if v != default {
                        kv.push((k(key), V::F32(v as f32)));
                    }
                }
                if let Some(a) = y.attn_factor {
                    kv.push((k(rk::YARN_ATTN_FACTOR), V::F32(a as f32)));
                }
            }
        }
    }
    if c.arch == Arch::Qwen {
        kv.extend([
            (qwen1_keys::SEQ_LENGTH.into(), u32v(c.seq_length)),
            (
                qwen1_keys::USE_DYNAMIC_NTK.into(),
                V::Bool(c.use_dynamic_ntk),
            ),
            (qwen1_keys::USE_LOGN_ATTN.into(), V::Bool(c.use_logn_attn)),
        ]);
    }
    kv.extend(file_type_metadata(file_type, quantized));
    kv
}

pub fn file_type_metadata(file_type: u32, quantized: bool) -> Kv {
    let mut kv: Kv = vec![("general.file_type".into(), V::U32(file_type))];
    if quantized {
        // ggml's GGML_QNT_VERSION: the current block layouts.
        kv.push(("general.quantization_version".into(), V::U32(2)));
    }
    kv
}

pub fn generation_metadata(g: &GenerationConfig) -> Kv {
    use generation_keys::*;
    let mut kv = Kv::new();
    if let Some(f) = &g.chat_format {
        kv.push((CHAT_FORMAT.into(), V::String(f.clone())));
    }
    if let Some(n) = g.max_window_size {
        kv.push((MAX_WINDOW_SIZE.into(), u32v(n)));
    }
    if let Some(b) = g.do_sample {
        kv.push((DO_SAMPLE.into(), V::Bool(b)));
    }
    let floats = [
        (TEMPERATURE, g.temperature),
        (TOP_P, g.top_p),
        (REPETITION_PENALTY, g.repetition_penalty),
    ];
    for (key, v) in floats {
        if let Some(x) = v {
            kv.push((key.into(), V::F32(x as f32)));
        }
    }
    if let Some(n) = g.top_k {
        kv.push((TOP_K.into(), u32v(n)));
    }
    if let Some(n) = g.max_new_tokens {
        kv.push((MAX_NEW_TOKENS.into(), u32v(n)));
    }
    kv
}

/// `tokenizer.ggml.*` and the chat template.
pub fn vocab_metadata(v: &Vocab) -> Kv {
    let strings = |list: &[String]| V::Array(list.iter().map(|s| V::String(s.clone())).collect());
    let mut kv: Kv = vec![
        ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), strings(&v.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            V::Array(v.types.iter().map(|&t| V::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(&v.merges)),
    ];
    if let Some(eot) = v.id_of("<|endoftext|>") {
        for key in ["bos", "eos", "padding"] {
            kv.push((format!("tokenizer.ggml.{key}_token_id"), V::U32(eot)));
        }
    }
    if let Some(im_end) = v.id_of("<|im_end|>") {
        // llama.cpp stops chat turns at its end-of-turn token.
        kv.push(("tokenizer.ggml.eot_token_id".into(), V::U32(im_end)));
    }
    // Qwen never prepends a BOS token.
    kv.push(("tokenizer.ggml.add_bos_token".into(), V::Bool(false)));
    let template = v.chat_template.as_deref().unwrap_or(CHATML_TEMPLATE);
    kv.push(("tokenizer.chat_template".into(), V::String(template.into())));
    kv
}
