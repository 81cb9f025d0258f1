//! The first pass: open the input, check it, decide every output tensor and the metadata.

use super::hf::{self, Checkpoint, GenerationConfig, HfConfig, RawTensor};
use super::meta::{self, Kv};
use super::names::{self, Role, TensorSpec};
use super::quantize::{fit_type, preferred_type, OutType};
use super::vocab::{self, Vocab};
use super::{ConvertOptions, ConvertReport, TensorReport};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// An opened input: a checkpoint directory or a GGUF file.
pub(crate) enum Input {
    Hf(HfInput),
    Gguf { path: PathBuf, file: GgufFile },
}

pub(crate) struct HfInput {
    pub dir: PathBuf,
    pub cfg: HfConfig,
    pub gen: GenerationConfig,
    pub ckpt: Checkpoint,
}

/// Where a tensor's values come from.
pub(crate) enum Data<'a> {
    /// A float tensor of a safetensors shard, `[rows, cols]` row-major.
    Hf {
        t: RawTensor<'a>,
        ckpt: &'a Checkpoint,
    },
    /// A tensor of an input GGUF file.
    Gguf { ty: GgmlType, data: &'a [u8] },
}

/// One output tensor.
pub(crate) struct Job<'a> {
    pub name: String,
    pub source: String,
    pub dims: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
    pub ty: GgmlType,
    pub data: Data<'a>,
    pub note: Option<String>,
}

impl Job<'_> {
    pub fn bytes(&self) -> u64 {
        self.ty.row_bytes(self.cols).unwrap_or(0) as u64 * self.rows as u64
    }
}

/// Everything the writer needs.
pub(crate) struct Plan<'a> {
    pub arch: String,
    pub metadata: Kv,
    pub jobs: Vec<Job<'a>>,
    pub warnings: Vec<String>,
    pub n_tokens: usize,
}

impl Plan<'_> {
    pub fn report(&self) -> ConvertReport {
        ConvertReport {
            arch: self.arch.clone(),
            tensors: self
                .jobs
                .iter()
                .map(|j| TensorReport {
                    name: j.name.clone(),
                    ty: j.ty,
                    dims: j.dims.clone(),
                    source: j.source.clone(),
                    bytes: j.bytes(),
                    note: j.note.clone(),
                })
                .collect(),
            warnings: self.warnings.clone(),
            data_bytes: self.jobs.iter().map(Job::bytes).sum(),
            n_tokens: self.n_tokens,
            output: None,
        }
    }
}

fn not_found(path: &Path, what: &str) -> Error {
    Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string()),
    )
}

impl Input {
    pub fn open(opts: &ConvertOptions) -> Result<Input> {
        let path = &opts.input;
        if !path.exists() {
            return Err(not_found(path, "input not found"));
        }
        if path.is_file() {
            let file = GgufFile::open(path)?;
            return Ok(Input::Gguf {
                path: path.clone(),
                file,
            });
        }
        let config_path = path.join("config.json");
        if !config_path.is_file() {
            return Err(not_found(
                &config_path,
                "no config.json: not a Hugging Face checkpoint directory",
            ));
        }
        let cfg = HfConfig::from_file(&config_path)?;
        let gen_path = path.join("generation_config.json");
        let gen = if gen_path.is_file() {
            GenerationConfig::from_file(&gen_path)?
        } else {
            GenerationConfig::default()
        };
        let ckpt = Checkpoint::open(path)?;
        Ok(Input::Hf(HfInput {
            dir: path.clone(),
            cfg,
            gen,
            ckpt,
        }))
    }

    pub fn plan(&self, opts: &ConvertOptions) -> Result<Plan<'_>> {
        match self {
            Input::Hf(h) => h.plan(opts),
            Input::Gguf { path, file } => super::requant::plan(path, file, opts),
        }
    }
}

/// The default `general.name`: the input's file or directory name.
pub(crate) fn default_name(path: &Path) -> String {
    let canon = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    canon
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string()
}

/// Chooses a tensor's type and explains a fallback.
pub(crate) fn choose_type(
    out: OutType,
    role: Role,
    gguf_name: &str,
    n_layer: usize,
    lm_head: bool,
    cols: usize,
) -> (GgmlType, Option<String>) {
    let want = preferred_type(out, role, names::layer_of(gguf_name), n_layer, lm_head);
    let got = fit_type(want, cols);
    let note = (got != want).then(|| {
        format!(
            "{want}: rows of {cols} are not a multiple of its block size {}; using {got}",
            want.block_size()
        )
    });
    (got, note)
}

/// One warning per distinct fallback instead of one per tensor.
pub(crate) fn summarize_fallbacks(jobs: &[Job]) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for j in jobs {
        if let Some(n) = &j.note {
            if n.contains("block size") {
                *counts.entry(n.as_str()).or_default() += 1;
            }
        }
    }
    counts
        .into_iter()
        .map(|(n, c)| format!("{c} tensor(s): {n}"))
        .collect()
}

impl HfInput {
    fn plan(&self, opts: &ConvertOptions) -> Result<Plan<'_>> {
        let cfg = &self.cfg;
        let specs = names::tensor_specs(cfg);
        let mut warnings = Vec::new();
        let mut consumed: BTreeSet<&str> = BTreeSet::new();
        let mut jobs = Vec::with_capacity(specs.len());
        let mut missing = Vec::new();
        for spec in &specs {
            let Some(t) = self.ckpt.get(&spec.hf) else {
                missing.push(spec.hf.clone());
                continue;
            };
            consumed.insert(t.name);
            check_float_tensor(&t, spec)?;
            let lm_head = spec.role == Role::Output
                || (spec.role == Role::TokenEmbd && cfg.tie_word_embeddings);
            let (ty, note) = choose_type(
                opts.out_type,
                spec.role,
                &spec.gguf,
                cfg.n_layer,
                lm_head,
                spec.cols(),
            );
            jobs.push(Job {
                name: spec.gguf.clone(),
                source: spec.hf.clone(),
                dims: spec.gguf_dims(),
                rows: spec.rows(),
                cols: spec.cols(),
                ty,
                data: Data::Hf {
                    t,
                    ckpt: &self.ckpt,
                },
                note,
            });
        }
        if let Some(first) = missing.first() {
            return Err(Error::Checkpoint(format!(
                "{}: tensor `{first}` is missing{} (architecture {}, {} layers)",
                self.dir.display(),
                match missing.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                },
                cfg.arch.name(),
                cfg.n_layer
            )));
        }
        if cfg.tie_word_embeddings && self.ckpt.contains("lm_head.weight") {
            // Some exports store the tied head anyway; it is the embedding, so skip it.
            consumed.insert("lm_head.weight");
            warnings.push("lm_head.weight skipped: the model ties it to the embedding".into());
        }
        let extra: Vec<&String> = self
            .ckpt
            .index
            .keys()
            .filter(|n| !consumed.contains(n.as_str()) && !names::is_ignorable(n))
            .collect();
        if let Some(first) = extra.first() {
            let file = self.ckpt.get(first).map(|t| t.file.display().to_string());
            return Err(Error::Checkpoint(format!(
                "{}: unexpected tensor `{first}`{} for architecture {} with {} layers \
                 (a checkpoint of another model, or a config.json that does not match it?)",
                file.unwrap_or_default(),
                match extra.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                },
                cfg.arch.name(),
                cfg.n_layer
            )));
        }
        warnings.extend(summarize_fallbacks(&jobs));

        let vocab = self.vocab(opts)?;
        if vocab.is_none() {
            warnings.push(format!(
                "{}: no tokenizer (qwen.tiktoken, tokenizer.json or vocab.json); the file will \
                 have none. Pass --tokenizer FILE to include one",
                self.dir.display()
            ));
        }
        let quantized = jobs.iter().any(|j| j.ty.is_quantized());
        let name = opts.name.clone().unwrap_or_else(|| default_name(&self.dir));
        let mut metadata = meta::model_metadata(cfg, &name, opts.out_type.file_type(), quantized);
        metadata.extend(meta::generation_metadata(&self.gen));
        let n_tokens = vocab.as_ref().map_or(0, |v| v.tokens.len());
        if let Some(v) = &vocab {
            metadata.extend(meta::vocab_metadata(v));
        }
        Ok(Plan {
            arch: cfg.arch.name().to_string(),
            metadata,
            jobs,
            warnings,
            n_tokens,
        })
    }

    /// `--tokenizer` first, then `qwen.tiktoken`, then the Qwen-2 files in the directory.
    fn vocab(&self, opts: &ConvertOptions) -> Result<Option<Vocab>> {
        let n_vocab = self.cfg.vocab_size;
        if let Some(p) = &opts.tokenizer {
            return vocab::from_path(p, n_vocab).map(Some);
        }
        let tiktoken = self.dir.join("qwen.tiktoken");
        if tiktoken.is_file() {
            return vocab::from_tiktoken(&tiktoken, n_vocab).map(Some);
        }
        vocab::from_hf(&self.dir, n_vocab)
    }
}

/// A plain float weight: right dtype, right shape.
fn check_float_tensor(t: &RawTensor, spec: &TensorSpec) -> Result<()> {
    if !hf::is_float(t.dtype) {
        return Err(Error::tensor(
            t.name,
            format!(
                "{}: dtype {:?}; expected F32, F16 or BF16",
                t.file.display(),
                t.dtype
            ),
        ));
    }
    if t.shape != spec.shape.as_slice() {
        return Err(Error::tensor(
            t.name,
            format!(
                "{}: shape {:?} does not match the {:?} that config.json implies",
                t.file.display(),
                t.shape,
                spec.shape
            ),
        ));
    }
    Ok(())
}
