//! libqwen: an embedded runtime for the Qwen family of language models.
//!
//! Data flows one way (see DESIGN.md): GGUF file → [`gguf`] (memory-mapped, validated) →
//! [`model`] (weights borrowed from the map) → [`session`] (KV cache, prefill/decode) →
//! [`sampler`] → [`tokenizer`] (streaming UTF-8 decode). [`chat`] builds ChatML contexts.

pub mod backend;
pub mod bench;
pub mod chat;
pub mod convert;
pub mod error;
pub mod ffi;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod quant;
pub mod sampler;
#[cfg(feature = "server")]
pub mod server;
pub mod session;
pub mod tokenizer;

pub use error::{Error, Result};
