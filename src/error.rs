//! The one error type of the library. Every variant names what it concerns (file, tensor,
//! metadata key) so a user can act on the message without a debugger.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The GGUF container itself is malformed (bad magic, truncated, offsets out of range...).
    #[error("invalid GGUF file: {0}")]
    Gguf(String),
    /// A metadata key is missing or has the wrong type.
    #[error("metadata key `{key}`: {msg}")]
    Metadata { key: String, msg: String },
    /// A tensor is missing, has the wrong shape or an unsupported type.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Caller misuse: bad parameters, prompt longer than the context, etc.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A saved session state that is malformed, corrupt, or does not fit this model/session.
    #[error("session state: {0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
    pub fn metadata(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Metadata {
            key: key.into(),
            msg: msg.into(),
        }
    }
}
