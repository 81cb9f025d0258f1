//! The first pass: open the input, check it, decide every output tensor and the metadata.

use super::gptq::{self, GptqConfig, GptqLayer};
use super::hf::{self, Checkpoint, GenerationConfig, HfConfig, RawTensor};
use super::lora::{Adapter, Delta};
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
    /// A GPTQ-packed Linear.
    Gptq(Box<GptqLayer<'a>>),
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
    /// A LoRA update added to the rows before quantizing.
    pub lora: Option<Delta>,
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
    pub info: Vec<String>,
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
            info: self.info.clone(),
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
                "not found: not a Hugging Face checkpoint directory",
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
        let gptq_cfg = GptqConfig::find(&self.dir, cfg.quantization_config.as_ref())?;
        let mut adapter = match &opts.lora {
            Some(dir) => Some(Adapter::open(dir, opts.lora_scale)?),
            None => None,
        };
        let mut warnings = Vec::new();
        let mut info = Vec::new();
        let mut consumed: BTreeSet<&str> = BTreeSet::new();
        let mut gptq_modules: Vec<&str> = Vec::new();
        let mut jobs = Vec::with_capacity(specs.len());
        let mut missing = Vec::new();
        for spec in &specs {
            let lm_head = spec.role == Role::Output
                || (spec.role == Role::TokenEmbd && cfg.tie_word_embeddings);
            let (mut ty, mut note) = choose_type(
                opts.out_type,
                spec.role,
                &spec.gguf,
                cfg.n_layer,
                lm_head,
                spec.cols(),
            );
            let lora = match (&mut adapter, spec.shape.len()) {
                (Some(a), 2) => a.take(&spec.hf_module, spec.rows(), spec.cols())?,
                _ => None,
            };
            let data = if let Some(t) = self.ckpt.get(&spec.hf) {
                consumed.insert(t.name);
                check_float_tensor(&t, spec)?;
                Data::Hf {
                    t,
                    ckpt: &self.ckpt,
                }
            } else if let (Some(gc), true) = (
                &gptq_cfg,
                spec.shape.len() == 2 && self.ckpt.contains(&format!("{}.qweight", spec.hf_module)),
            ) {
                let layer =
                    GptqLayer::open(&self.ckpt, &spec.hf_module, gc, spec.rows(), spec.cols())?;
                for n in gptq::tensor_names(&spec.hf_module) {
                    if let Some((k, _)) = self.ckpt.index.get_key_value(&n) {
                        consumed.insert(k);
                    }
                }
                gptq_modules.push(&spec.hf_module);
                (ty, note) = gptq_type(&layer, gc, opts, lora.is_some(), ty);
                Data::Gptq(Box::new(layer))
            } else {
                missing.push(spec.hf.clone());
                continue;
            };
            jobs.push(Job {
                name: spec.gguf.clone(),
                source: spec.hf.clone(),
                dims: spec.gguf_dims(),
                rows: spec.rows(),
                cols: spec.cols(),
                ty,
                data,
                lora,
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
        if let Some(a) = adapter {
            a.finish()?;
        }
        // AutoGPTQ gives every quantized Linear a bias; those the model has no slot for must be
        // zero (they are, in every AutoGPTQ export) and are dropped.
        for module in gptq_modules {
            let bias = format!("{module}.bias");
            if let Some(t) = self.ckpt.get(&bias) {
                if !consumed.contains(t.name) {
                    if hf::read_f32(&t)?.iter().any(|&x| x != 0.0) {
                        return Err(Error::tensor(
                            t.name,
                            format!(
                                "{}: a non-zero bias on a layer the architecture has no bias for",
                                t.file.display()
                            ),
                        ));
                    }
                    consumed.insert(t.name);
                }
            }
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
        if let Some(r) = &cfg.rope_scaling {
            info.push(match r {
                crate::model::RopeScaling::Yarn(y) => format!(
                    "RoPE scaling yarn: factor {} over an original context of {} tokens",
                    y.factor, y.original_context
                ),
                other => format!("RoPE scaling {}", other.name()),
            });
        }
        warnings.extend(summarize_fallbacks(&jobs));
        summarize_gptq(&jobs, &mut info, &mut warnings);
        let merged = jobs.iter().filter(|j| j.lora.is_some()).count();
        if merged > 0 {
            info.push(format!(
                "LoRA merged into {merged} matrices (scale {})",
                opts.lora_scale
            ));
        }

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
            info,
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

/// The type of a GPTQ layer. `--type f32` dequantizes it (exactly); otherwise a layer that maps
/// exactly keeps its codes as Q4_0 / Q8_0, and one that does not (or gets a LoRA update) is
/// dequantized and quantized again, to its native type where there is one.
fn gptq_type(
    layer: &GptqLayer,
    cfg: &GptqConfig,
    opts: &ConvertOptions,
    has_lora: bool,
    chosen: GgmlType,
) -> (GgmlType, Option<String>) {
    let bits = layer.bits;
    if opts.out_type == OutType::Uniform(GgmlType::F32) {
        return (
            GgmlType::F32,
            Some(format!("GPTQ int{bits} dequantized exactly")),
        );
    }
    match cfg.native_type() {
        Some(native) if layer.exact && !has_lora => (
            native,
            Some(format!("GPTQ int{bits} mapped exactly onto {native}")),
        ),
        native => {
            let why = if has_lora {
                "a LoRA update is merged into it"
            } else {
                layer.inexact_reason(cfg)
            };
            let ty = native
                .filter(|t| layer.in_features.is_multiple_of(t.block_size()))
                .unwrap_or(chosen);
            (
                ty,
                Some(format!(
                    "GPTQ int{bits} dequantized and re-quantized to {ty}: {why}"
                )),
            )
        }
    }
}

/// One line for the exactly mapped GPTQ layers, one warning per reason for the others.
fn summarize_gptq(jobs: &[Job], info: &mut Vec<String>, warnings: &mut Vec<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for j in jobs {
        if let (Data::Gptq(_), Some(n)) = (&j.data, &j.note) {
            *counts.entry(n.as_str()).or_default() += 1;
        }
    }
    for (note, n) in counts {
        let line = format!("{n} layer(s): {note}");
        if note.contains("exactly") {
            info.push(
                line + if note.contains("mapped") {
                    " (bit for bit)"
                } else {
                    ""
                },
            );
        } else {
            warnings.push(line);
        }
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
