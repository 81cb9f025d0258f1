//! A loaded model: the memory-mapped GGUF file, its hyperparameters, its weights (byte ranges of
//! the map, never copied) and its tokenizer.

pub mod config;
pub mod forward;
pub mod weights;

pub use config::{Arch, ModelConfig, RopeScaling, Yarn};
pub use weights::{Tensor, Weights};

use crate::backend::cpu::WeightMatrix;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use std::path::Path;

pub struct Model {
    file: GgufFile,
    pub config: ModelConfig,
    pub weights: Weights,
    /// `None` when the file carries no vocabulary (then only token ids can be used).
    pub tokenizer: Option<Tokenizer>,
}

impl Model {
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let file = GgufFile::open(path)?;
        Self::from_gguf(file)
    }

    pub fn from_gguf(file: GgufFile) -> Result<Model> {
        let config = ModelConfig::from_gguf(&file)?;
        let weights = Weights::load(&file, &config)?;
        for t in weights.vectors() {
            if !(file.as_bytes()[t.bytes.clone()].as_ptr() as usize)
                .is_multiple_of(std::mem::align_of::<f32>())
            {
                return Err(Error::tensor(
                    &t.name,
                    "F32 data is not 4-byte aligned in the file",
                ));
            }
        }
        // (`contains_key`, not `get`: `get` would decode the whole vocabulary into values.)
        let tokenizer = if file.contains_key("tokenizer.ggml.tokens") {
            let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
            let types = if file.contains_key("tokenizer.ggml.token_type") {
                file.get_i32_array("tokenizer.ggml.token_type")?
            } else {
                vec![1; tokens.len()]
            };
            Some(Tokenizer::from_gguf_vocab(&tokens, &types)?)
        } else {
            None
        };
        Ok(Model {
            file,
            config,
            weights,
            tokenizer,
        })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The tokenizer, or an error saying the file has none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer("the model file has no tokenizer.ggml.tokens".into()))
    }

    pub fn matrix(&self, t: &Tensor) -> WeightMatrix<'_> {
        WeightMatrix {
            ty: t.ty,
            rows: t.rows,
            cols: t.cols,
            data: &self.file.as_bytes()[t.bytes.clone()],
        }
    }

    /// An F32 vector tensor (norm weights, biases) viewed in place.
    pub fn vector(&self, t: &Tensor) -> &[f32] {
        let bytes = &self.file.as_bytes()[t.bytes.clone()];
        // SAFETY: type F32 and 4-byte alignment are checked at load; the length is whole f32s.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4) }
    }

    /// Bytes of weights read per generated token (every matrix once; the embedding one row).
    pub fn weight_bytes_per_token(&self) -> usize {
        let w = &self.weights;
        let embd_row = w.token_embd.row_bytes();
        w.matrices()
            .filter(|t| !std::ptr::eq(*t, &w.token_embd))
            .map(|t| t.bytes.len())
            .sum::<usize>()
            + embd_row
    }
}

impl Model {
    /// The key projection's bias of layer `layer` (`[n_head_kv * head_dim]`), if the model has one.
    pub fn key_bias(&self, layer: usize) -> Option<&[f32]> {
        let kv_dim = self.config.n_head_kv * self.config.head_dim;
        match &self.weights.layers.get(layer)?.attn {
            weights::Attention::Fused { qkv_bias, .. } => {
                let d = self.config.n_embd;
                self.vector(qkv_bias).get(d..d + kv_dim)
            }
            weights::Attention::Split { k_bias, .. } => Some(self.vector(k_bias)),
        }
    }
}
