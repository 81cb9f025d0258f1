//! `qwen-convert`: Hugging Face Qwen checkpoints (and existing GGUF files) into the one GGUF file
//! the runtime memory-maps.
//!
//! The work happens in two passes. [`plan`] reads only headers and JSON: it maps every checkpoint
//! tensor to its GGUF name, checks names, shapes and dtypes, picks each output type and builds the
//! metadata — so `--dry-run` and every error about the checkpoint come before anything is written.
//! [`write`] then streams one tensor at a time (read rows → f32 → optional LoRA delta → quantize)
//! into a temporary file that is renamed only when complete.
//!
//! Tensor names and metadata keys follow llama.cpp (see `names.rs`, `meta.rs`), so the files also
//! load there; Qwen-1's dynamic NTK / logN / `seq_length` go into the `qwen.*` extras that
//! `model/config.rs` reads, and `generation_config.json` into [`meta::generation_keys`].

mod gptq;
mod hf;
mod lora;
mod meta;
mod names;
mod plan;
mod quantize;
mod requant;
mod vocab;
mod write;

pub use hf::{GenerationConfig, HfConfig};
pub use meta::generation_keys;
pub use quantize::OutType;

use crate::error::Result;
use crate::gguf::GgmlType;
use std::path::PathBuf;

/// What to convert and how.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// A Hugging Face checkpoint directory, or a `.gguf` file to re-quantize.
    pub input: PathBuf,
    pub output: PathBuf,
    pub out_type: OutType,
    /// A tokenizer for checkpoints that ship none (`qwen.tiktoken`, `tokenizer.json`, ...).
    pub tokenizer: Option<PathBuf>,
    /// A PEFT LoRA adapter directory to merge into the weights before quantizing.
    pub lora: Option<PathBuf>,
    /// Multiplies the adapter's own `lora_alpha / r` scaling.
    pub lora_scale: f64,
    /// `general.name`; defaults to the input's file name.
    pub name: Option<String>,
    /// Check everything and report the plan, but write nothing.
    pub dry_run: bool,
}

impl ConvertOptions {
    pub fn new(input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> ConvertOptions {
        ConvertOptions {
            input: input.into(),
            output: output.into(),
            out_type: OutType::Uniform(GgmlType::F16),
            tokenizer: None,
            lora: None,
            lora_scale: 1.0,
            name: None,
            dry_run: false,
        }
    }
}

/// Progress as the conversion goes; the binary draws a bar from these.
#[derive(Debug)]
pub enum ProgressEvent<'a> {
    /// Writing starts: this many tensors, this many bytes of tensor data.
    Start { tensors: usize, bytes: u64 },
    /// A tensor is being converted.
    Tensor {
        index: usize,
        name: &'a str,
        ty: GgmlType,
        bytes: u64,
    },
    /// The current tensor has been written.
    TensorDone { bytes: u64 },
    /// Something the user should know (a fallback type, a re-quantized GPTQ layer, ...).
    Warning(&'a str),
}

/// One tensor of the output file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: row length first.
    pub dims: Vec<usize>,
    /// Where it came from (checkpoint tensor or input GGUF tensor).
    pub source: String,
    pub bytes: u64,
    /// Why it got a type other than the one asked for, or how it was mapped.
    pub note: Option<String>,
}

/// What a conversion did (or would do, for a dry run).
#[derive(Clone, Debug, Default)]
pub struct ConvertReport {
    pub arch: String,
    pub tensors: Vec<TensorReport>,
    pub warnings: Vec<String>,
    /// Facts worth a line of output (e.g. GPTQ layers mapped bit for bit).
    pub info: Vec<String>,
    /// Total bytes of tensor data.
    pub data_bytes: u64,
    /// Number of tokens written into the file (0 if it has no tokenizer).
    pub n_tokens: usize,
    /// The output file, when one was written.
    pub output: Option<PathBuf>,
}

/// Converts `opts.input` into `opts.output`, reporting progress through `progress`.
pub fn convert(
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(ProgressEvent),
) -> Result<ConvertReport> {
    let input = plan::Input::open(opts)?;
    let plan = input.plan(opts)?;
    let mut report = plan.report();
    for w in &report.warnings {
        progress(ProgressEvent::Warning(w));
    }
    if !opts.dry_run {
        write::write(&plan, &opts.output, progress)?;
        report.output = Some(opts.output.clone());
    }
    Ok(report)
}
