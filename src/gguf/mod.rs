//! GGUF v3: the file format (reader over a memory map, writer).
pub mod types;
pub use types::{GgmlType, QK_K};
