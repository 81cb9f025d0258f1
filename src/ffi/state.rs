//! Saved session state: a small versioned little-endian format holding the tokens of the
//! sequence, the system prompt and the chat history, tagged with the model's shape.
//!
//! The KV cache is not stored: `Session` does not expose it, and recomputing it from the
//! tokens is exact (the forward pass is deterministic), costing one prefill on restore.
//!
//! ```text
//! "QWST" u32 version=1
//! u32 n_vocab u32 n_layer u32 n_embd u32 n_head_kv      (must match the model)
//! u32 n_tokens, n_tokens × u32
//! str system                                             (str = u32 length + UTF-8 bytes)
//! u32 n_turns, n_turns × (str user, str assistant)
//! ```

use super::error::{fail, FfiResult, QWEN_ERR_FORMAT};
use super::generate::State;
use crate::chat::Turn;
use crate::model::ModelConfig;

const MAGIC: &[u8; 4] = b"QWST";
const VERSION: u32 = 1;

pub(crate) struct Saved {
    pub tokens: Vec<u32>,
    pub system: String,
    pub history: Vec<Turn>,
}

fn shape(c: &ModelConfig) -> [u32; 4] {
    [c.n_vocab, c.n_layer, c.n_embd, c.n_head_kv].map(|v| v as u32)
}

pub(crate) fn save(st: &State) -> Vec<u8> {
    encode(
        &st.session.model().config,
        &st.all_tokens(),
        &st.system,
        &st.history,
    )
}

fn encode(config: &ModelConfig, tokens: &[u32], system: &str, history: &[Turn]) -> Vec<u8> {
    let mut out = Vec::new();
    let u32_ = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
    let str_ = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    out.extend_from_slice(MAGIC);
    u32_(&mut out, VERSION);
    for v in shape(config) {
        u32_(&mut out, v);
    }
    u32_(&mut out, tokens.len() as u32);
    for &t in tokens {
        u32_(&mut out, t);
    }
    str_(&mut out, system);
    u32_(&mut out, history.len() as u32);
    for t in history {
        str_(&mut out, &t.user);
        str_(&mut out, &t.assistant);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> FfiResult<&[u8]> {
        if n > self.0.len() {
            return fail(QWEN_ERR_FORMAT, "session state is truncated");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> FfiResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> FfiResult<String> {
        let n = self.u32()? as usize;
        match std::str::from_utf8(self.bytes(n)?) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => fail(
                QWEN_ERR_FORMAT,
                "session state holds text that is not UTF-8",
            ),
        }
    }
}

pub(crate) fn parse(bytes: &[u8], config: &ModelConfig) -> FfiResult<Saved> {
    let mut r = Reader(bytes);
    if r.bytes(4)? != MAGIC {
        return fail(QWEN_ERR_FORMAT, "not a libqwen session state (bad magic)");
    }
    let version = r.u32()?;
    if version != VERSION {
        return fail(
            QWEN_ERR_FORMAT,
            format!("session state version {version} (this library reads {VERSION})"),
        );
    }
    let mut saved_shape = [0u32; 4];
    for v in &mut saved_shape {
        *v = r.u32()?;
    }
    if saved_shape != shape(config) {
        return fail(
            QWEN_ERR_FORMAT,
            format!(
                "session state is for another model (n_vocab, n_layer, n_embd, n_head_kv = \
                 {saved_shape:?}; this model has {:?})",
                shape(config)
            ),
        );
    }
    let n = r.u32()? as usize;
    // Each token takes 4 bytes: a count beyond the data is caught before allocating.
    if n > r.0.len() / 4 {
        return fail(QWEN_ERR_FORMAT, "session state is truncated");
    }
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        let t = r.u32()?;
        if t as usize >= config.n_vocab {
            return fail(QWEN_ERR_FORMAT, format!("session state holds token id {t}"));
        }
        tokens.push(t);
    }
    let system = r.str()?;
    let n_turns = r.u32()? as usize;
    if n_turns > r.0.len() / 8 {
        return fail(QWEN_ERR_FORMAT, "session state is truncated");
    }
    let mut history = Vec::with_capacity(n_turns);
    for _ in 0..n_turns {
        let user = r.str()?;
        let assistant = r.str()?;
        history.push(Turn { user, assistant });
    }
    if !r.0.is_empty() {
        return fail(QWEN_ERR_FORMAT, "session state has trailing bytes");
    }
    Ok(Saved {
        tokens,
        system,
        history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::error::QWEN_ERR_FORMAT;
    use crate::model::Arch;

    fn config(n_vocab: usize) -> ModelConfig {
        ModelConfig {
            arch: Arch::Qwen2,
            n_vocab,
            n_embd: 64,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            head_dim: 16,
            n_ff: 128,
            rms_eps: 1e-6,
            rope_base: 10000.0,
            n_ctx_train: 4096,
            seq_length: 0,
            use_dynamic_ntk: false,
            use_logn_attn: false,
            rope_scaling: crate::model::config::RopeScaling::None,
        }
    }

    fn sample() -> Vec<u8> {
        let history = vec![Turn {
            user: "héllo".into(),
            assistant: "wörld 😀".into(),
        }];
        encode(&config(300), &[1, 2, 299], "Be brief.", &history)
    }

    #[test]
    fn round_trip() {
        let saved = parse(&sample(), &config(300)).unwrap_or_else(|e| panic!("{}", e.msg));
        assert_eq!(saved.tokens, [1, 2, 299]);
        assert_eq!(saved.system, "Be brief.");
        assert_eq!(saved.history[0].assistant, "wörld 😀");
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_an_error_or_a_valid_state() {
        let bytes = sample();
        for n in 0..bytes.len() {
            let e = parse(&bytes[..n], &config(300))
                .err()
                .expect("truncated state accepted");
            assert_eq!(e.code, QWEN_ERR_FORMAT, "{n}: {}", e.msg);
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(parse(&extra, &config(300)).is_err());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(s) = parse(&b, &config(300)) {
                    assert!(s.tokens.iter().all(|&t| t < 300));
                }
            }
        }
    }

    #[test]
    fn another_model_shape_is_refused() {
        let e = parse(&sample(), &config(301)).err().unwrap();
        assert!(e.msg.contains("another model"), "{}", e.msg);
    }
}
