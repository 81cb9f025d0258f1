//! The tensors each architecture needs: Hugging Face name, GGUF (llama.cpp) name and shape.
//! This table is the single place that knows the mapping; the loader in `model/weights.rs`
//! reads the GGUF side of it.

use super::hf::HfConfig;
use crate::model::config::Arch;

/// What a tensor does in the network; decides its output type (`_m` mixes, vectors stay F32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    TokenEmbd,
    Output,
    /// Norm weights and biases: always F32.
    Vector,
    AttnQkv,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    /// A matrix this table does not know (only when re-quantizing someone else's GGUF).
    Other,
}

impl Role {
    /// The role of a tensor from its GGUF name (`blk.3.attn_v.weight` → `AttnV`).
    pub fn of_gguf_name(name: &str, n_dims: usize) -> Role {
        if n_dims < 2 || name.ends_with(".bias") || name.ends_with("_norm.weight") {
            return Role::Vector;
        }
        let base = name.strip_suffix(".weight").unwrap_or(name);
        let last = base.rsplit('.').next().unwrap_or(base);
        match last {
            "token_embd" => Role::TokenEmbd,
            "output" => Role::Output,
            "attn_qkv" => Role::AttnQkv,
            "attn_q" => Role::AttnQ,
            "attn_k" => Role::AttnK,
            "attn_v" => Role::AttnV,
            "attn_output" => Role::AttnOutput,
            "ffn_up" => Role::FfnUp,
            "ffn_gate" => Role::FfnGate,
            "ffn_down" => Role::FfnDown,
            _ => Role::Other,
        }
    }
}

/// The block index of `blk.N.…` names.
pub fn layer_of(gguf_name: &str) -> Option<usize> {
    gguf_name
        .strip_prefix("blk.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// One tensor the architecture needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub gguf: String,
    /// The Linear / Embedding / Norm module in the HF checkpoint (`transformer.h.0.attn.c_attn`).
    pub hf_module: String,
    /// The HF tensor: `hf_module` + `.weight` or `.bias`.
    pub hf: String,
    /// HF (PyTorch) shape: `[out_features, in_features]` for matrices, `[n]` for vectors.
    pub shape: Vec<usize>,
    pub role: Role,
}

impl TensorSpec {
    fn new(gguf: String, hf_module: String, suffix: &str, shape: Vec<usize>) -> TensorSpec {
        let role = Role::of_gguf_name(&gguf, shape.len());
        TensorSpec {
            hf: format!("{hf_module}.{suffix}"),
            gguf,
            hf_module,
            shape,
            role,
        }
    }

    /// GGUF dims: ggml order, the row length first.
    pub fn gguf_dims(&self) -> Vec<usize> {
        self.shape.iter().rev().copied().collect()
    }

    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape[0]
        } else {
            1
        }
    }

    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
}

/// Every tensor of the model in file order (the order llama.cpp writes them).
pub fn tensor_specs(c: &HfConfig) -> Vec<TensorSpec> {
    let d = c.hidden_size;
    let v = c.vocab_size;
    let kv = c.n_head_kv * c.head_dim;
    let ff = c.n_ff;
    let mut out = Vec::new();
    let mut push = |gguf: &str, module: String, suffix: &str, shape: Vec<usize>| {
        out.push(TensorSpec::new(gguf.to_string(), module, suffix, shape));
    };
    match c.arch {
        Arch::Qwen => {
            push(
                "token_embd.weight",
                "transformer.wte".into(),
                "weight",
                vec![v, d],
            );
            for i in 0..c.n_layer {
                let g = |s: &str| format!("blk.{i}.{s}");
                let h = |s: &str| format!("transformer.h.{i}.{s}");
                push(&g("attn_norm.weight"), h("ln_1"), "weight", vec![d]);
                push(
                    &g("attn_qkv.weight"),
                    h("attn.c_attn"),
                    "weight",
                    vec![3 * d, d],
                );
                push(&g("attn_qkv.bias"), h("attn.c_attn"), "bias", vec![3 * d]);
                push(
                    &g("attn_output.weight"),
                    h("attn.c_proj"),
                    "weight",
                    vec![d, d],
                );
                push(&g("ffn_norm.weight"), h("ln_2"), "weight", vec![d]);
                // Qwen-1 applies SiLU to w2's output: w2 is the gate, w1 the up branch.
                push(&g("ffn_up.weight"), h("mlp.w1"), "weight", vec![ff, d]);
                push(&g("ffn_gate.weight"), h("mlp.w2"), "weight", vec![ff, d]);
                push(
                    &g("ffn_down.weight"),
                    h("mlp.c_proj"),
                    "weight",
                    vec![d, ff],
                );
            }
            push(
                "output_norm.weight",
                "transformer.ln_f".into(),
                "weight",
                vec![d],
            );
            if !c.tie_word_embeddings {
                push("output.weight", "lm_head".into(), "weight", vec![v, d]);
            }
        }
        Arch::Qwen2 => {
            push(
                "token_embd.weight",
                "model.embed_tokens".into(),
                "weight",
                vec![v, d],
            );
            for i in 0..c.n_layer {
                let g = |s: &str| format!("blk.{i}.{s}");
                let h = |s: &str| format!("model.layers.{i}.{s}");
                push(
                    &g("attn_norm.weight"),
                    h("input_layernorm"),
                    "weight",
                    vec![d],
                );
                push(
                    &g("attn_q.weight"),
                    h("self_attn.q_proj"),
                    "weight",
                    vec![d, d],
                );
                push(&g("attn_q.bias"), h("self_attn.q_proj"), "bias", vec![d]);
                push(
                    &g("attn_k.weight"),
                    h("self_attn.k_proj"),
                    "weight",
                    vec![kv, d],
                );
                push(&g("attn_k.bias"), h("self_attn.k_proj"), "bias", vec![kv]);
                push(
                    &g("attn_v.weight"),
                    h("self_attn.v_proj"),
                    "weight",
                    vec![kv, d],
                );
                push(&g("attn_v.bias"), h("self_attn.v_proj"), "bias", vec![kv]);
                push(
                    &g("attn_output.weight"),
                    h("self_attn.o_proj"),
                    "weight",
                    vec![d, d],
                );
                push(
                    &g("ffn_norm.weight"),
                    h("post_attention_layernorm"),
                    "weight",
                    vec![d],
                );
                push(
                    &g("ffn_gate.weight"),
                    h("mlp.gate_proj"),
                    "weight",
                    vec![ff, d],
                );
                push(&g("ffn_up.weight"), h("mlp.up_proj"), "weight", vec![ff, d]);
                push(
                    &g("ffn_down.weight"),
                    h("mlp.down_proj"),
                    "weight",
                    vec![d, ff],
                );
            }
            push("output_norm.weight", "model.norm".into(), "weight", vec![d]);
            if !c.tie_word_embeddings {
                push("output.weight", "lm_head".into(), "weight", vec![v, d]);
            }
        }
    }
    out
}

/// Checkpoint tensors that carry no weights and are skipped without complaint.
pub fn is_ignorable(hf_name: &str) -> bool {
    // Non-persistent buffers that old exports sometimes saved.
    hf_name.ends_with(".rotary_emb.inv_freq")
        || hf_name.ends_with(".attn.masked_bias")
        || hf_name.ends_with(".attn.bias") && !hf_name.contains("c_attn")
}
