//! GGUF v3: the file format (reader over a memory map, writer).
mod parse;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use parse::{GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, KEY_ALIGNMENT};
pub use reader::*;
pub use types::{GgmlType, QK_K};
pub use value::{MetadataValue, MAX_ARRAY_DEPTH};
pub use writer::{write_gguf, GgufTensorSink, GgufWriter};

#[cfg(test)]
mod tests;
