//! Reading a Hugging Face checkpoint directory: `config.json`, `generation_config.json` and the
//! safetensors shards (memory-mapped; nothing is read until a tensor is converted).

use crate::error::{Error, Result};
use crate::model::config::{Arch, RopeScaling};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Reads and parses a JSON file, naming the file in every error.
pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint(format!("{}: invalid JSON: {e}", path.display())))
}

/// Typed access to a JSON object with errors that name the file and key.
pub(crate) struct JsonObj<'a> {
    pub file: &'a str,
    pub value: &'a Value,
}

impl JsonObj<'_> {
    fn err(&self, key: &str, msg: &str) -> Error {
        Error::Checkpoint(format!("{}: `{key}` {msg}", self.file))
    }

    pub fn opt(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, "must be a non-negative integer")),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| self.err(key, "is missing"))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, "must be a number")),
        }
    }

    /// A flag that real configs write as a bool, and sometimes as a string (`"auto"`, `"true"`):
    /// anything but an explicit true counts as false, which is what the reference code does.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        match self.opt(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
            Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
            _ => default,
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.opt(key).and_then(Value::as_str)
    }
}

/// The hyperparameters of a checkpoint, normalized across Qwen-1 and Qwen-2 config formats.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Rows of the gate/up matrices. Qwen-1's `intermediate_size` counts both branches, so this
    /// is half of it there.
    pub n_ff: usize,
    pub max_position_embeddings: usize,
    pub rope_base: f64,
    /// Dimensions of each head that RoPE rotates (Qwen-1's `rotary_pct` may make it partial).
    pub rope_dims: usize,
    pub rms_eps: f64,
    pub tie_word_embeddings: bool,
    /// Qwen-1 only: `seq_length`, the training length dynamic NTK and logN are relative to.
    pub seq_length: usize,
    pub use_dynamic_ntk: bool,
    pub use_logn_attn: bool,
    /// The `quantization_config` object, if the checkpoint has one (GPTQ).
    pub quantization_config: Option<Value>,
    /// Qwen-2's optional `rope_scaling` (YaRN or linear, for long contexts).
    pub rope_scaling: Option<RopeScaling>,
}

/// `rope_scaling` from config.json (Qwen2.5's long-context setting is
/// `{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}`), checked as the
/// runtime will apply it and recorded under llama.cpp's `{arch}.rope.scaling.*` keys.
/// `max_position_embeddings` stands in for a missing original context (HF's fallback).
fn rope_scaling(c: &JsonObj, max_position_embeddings: usize) -> Result<Option<RopeScaling>> {
    let Some(v) = c.opt("rope_scaling") else {
        return Ok(None);
    };
    let file = format!("{}: rope_scaling", c.file);
    let r = JsonObj {
        file: &file,
        value: v,
    };
    if !v.is_object() {
        return Err(Error::Checkpoint(format!("{file}: not a JSON object")));
    }
    let kind = r.opt_str("type").or_else(|| r.opt_str("rope_type"));
    let kind = match kind {
        None | Some("default") | Some("none") => return Ok(None),
        Some(k @ ("linear" | "yarn")) => k,
        Some(other) => {
            return Err(Error::Checkpoint(format!(
                "{file}: type `{other}` is not supported (libqwen runs linear and yarn)"
            )))
        }
    };
    let factor = r
        .opt_f64("factor")?
        .ok_or_else(|| r.err("factor", &format!("is missing (type `{kind}`)")))?;
    let original = r
        .opt_usize("original_max_position_embeddings")?
        .unwrap_or(max_position_embeddings);
    for key in ["mscale", "mscale_all_dim"] {
        if r.opt_f64(key)?.is_some_and(|x| x != 0.0 && x != 1.0) {
            return Err(r.err(key, "(DeepSeek's YaRN variant) is not supported"));
        }
    }
    if r.opt("truncate").is_some_and(|t| t == &Value::Bool(false)) {
        return Err(r.err("truncate", "false is not supported"));
    }
    let mut scaling = RopeScaling::from_parts(kind, factor, original)
        .map_err(|e| Error::Checkpoint(format!("{file}: {e}")))?;
    if let RopeScaling::Yarn(y) = &mut scaling {
        if let Some(b) = r.opt_f64("beta_fast")? {
            y.beta_fast = b;
        }
        if let Some(b) = r.opt_f64("beta_slow")? {
            y.beta_slow = b;
        }
        if let Some(e) = r.opt_f64("extrapolation_factor")? {
            y.ext_factor = e;
        }
        y.attn_factor = match r.opt_f64("attention_factor")? {
            Some(a) => Some(a),
            None => r.opt_f64("attn_factor")?,
        };
        scaling
            .check()
            .map_err(|e| Error::Checkpoint(format!("{file}: {e}")))?;
    }
    Ok(Some(scaling))
}

impl HfConfig {
    pub fn from_file(path: &Path) -> Result<HfConfig> {
        let v = read_json(path)?;
        let name = path.display().to_string();
        Self::from_json(&name, &v)
    }

    pub fn from_json(file: &str, v: &Value) -> Result<HfConfig> {
        let c = JsonObj { file, value: v };
        if !v.is_object() {
            return Err(Error::Checkpoint(format!("{file}: not a JSON object")));
        }
        let arch = detect_arch(&c)?;
        let hidden_size = c.usize("hidden_size")?;
        let n_head = c.usize("num_attention_heads")?;
        let n_layer = c.usize("num_hidden_layers")?;
        let vocab_size = c.usize("vocab_size")?;
        if n_head == 0 || hidden_size == 0 || hidden_size % n_head != 0 {
            return Err(c.err(
                "num_attention_heads",
                &format!("({n_head}) must divide hidden_size ({hidden_size})"),
            ));
        }
        if n_layer == 0 || vocab_size == 0 {
            return Err(c.err("num_hidden_layers", "and vocab_size must be positive"));
        }
        let head_dim = hidden_size / n_head;
        let quantization_config = c.opt("quantization_config").cloned();
        let cfg = match arch {
            Arch::Qwen => {
                if let Some(kv) = c.opt_usize("kv_channels")? {
                    if kv != head_dim {
                        return Err(c.err(
                            "kv_channels",
                            &format!("({kv}) must equal hidden_size / num_attention_heads"),
                        ));
                    }
                }
                let inter = c.usize("intermediate_size")?;
                if inter == 0 || inter % 2 != 0 {
                    return Err(c.err("intermediate_size", "must be even (it counts w1 and w2)"));
                }
                let rotary_pct = c.opt_f64("rotary_pct")?.unwrap_or(1.0);
                let seq_length = c.opt_usize("seq_length")?.unwrap_or(2048);
                HfConfig {
                    arch,
                    vocab_size,
                    hidden_size,
                    n_layer,
                    n_head,
                    n_head_kv: n_head,
                    head_dim,
                    n_ff: inter / 2,
                    max_position_embeddings: c
                        .opt_usize("max_position_embeddings")?
                        .unwrap_or(seq_length),
                    rope_base: c.opt_f64("rotary_emb_base")?.unwrap_or(10000.0),
                    rope_dims: (head_dim as f64 * rotary_pct).round() as usize,
                    rms_eps: c.opt_f64("layer_norm_epsilon")?.unwrap_or(1e-6),
                    tie_word_embeddings: c.flag("tie_word_embeddings", false),
                    seq_length,
                    use_dynamic_ntk: c.flag("use_dynamic_ntk", false),
                    use_logn_attn: c.flag("use_logn_attn", false),
                    quantization_config,
                    rope_scaling: None,
                }
            }
            Arch::Qwen2 => {
                let n_head_kv = c.opt_usize("num_key_value_heads")?.unwrap_or(n_head);
                if n_head_kv == 0 || n_head % n_head_kv != 0 {
                    return Err(c.err(
                        "num_key_value_heads",
                        &format!("({n_head_kv}) must divide num_attention_heads ({n_head})"),
                    ));
                }
                let max_position_embeddings =
                    c.opt_usize("max_position_embeddings")?.unwrap_or(32768);
                HfConfig {
                    arch,
                    vocab_size,
                    hidden_size,
                    n_layer,
                    n_head,
                    n_head_kv,
                    head_dim,
                    n_ff: c.usize("intermediate_size")?,
                    max_position_embeddings,
                    rope_base: c.opt_f64("rope_theta")?.unwrap_or(10000.0),
                    rope_dims: head_dim,
                    rms_eps: c.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
                    tie_word_embeddings: c.flag("tie_word_embeddings", false),
                    seq_length: 0,
                    use_dynamic_ntk: false,
                    use_logn_attn: false,
                    quantization_config,
                    rope_scaling: rope_scaling(&c, max_position_embeddings)?,
                }
            }
        };
        if cfg.n_ff == 0 {
            return Err(c.err("intermediate_size", "must be positive"));
        }
        Ok(cfg)
    }
}

/// The architecture from `architectures` (authoritative) or `model_type`.
fn detect_arch(c: &JsonObj) -> Result<Arch> {
    let from_class = |s: &str| match s {
        "QWenLMHeadModel" => Some(Arch::Qwen),
        "Qwen2ForCausalLM" => Some(Arch::Qwen2),
        _ => None,
    };
    let classes: Vec<&str> = c
        .opt("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(arch) = classes.iter().find_map(|s| from_class(s)) {
        return Ok(arch);
    }
    let model_type = c.opt_str("model_type");
    match model_type {
        Some("qwen") if classes.is_empty() => Ok(Arch::Qwen),
        Some("qwen2") if classes.is_empty() => Ok(Arch::Qwen2),
        _ => Err(Error::Unsupported(format!(
            "{}: architecture {} (model_type {}); qwen-convert handles QWenLMHeadModel (Qwen-1) \
             and Qwen2ForCausalLM (Qwen-1.5/2/2.5)",
            c.file,
            if classes.is_empty() {
                "not given".to_string()
            } else {
                classes.join(", ")
            },
            model_type.unwrap_or("not given"),
        ))),
    }
}

/// Sampling defaults and chat settings from `generation_config.json` (every field optional).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    pub chat_format: Option<String>,
    pub max_window_size: Option<usize>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    pub fn from_file(path: &Path) -> Result<GenerationConfig> {
        let v = read_json(path)?;
        let file = path.display().to_string();
        let c = JsonObj {
            file: &file,
            value: &v,
        };
        Ok(GenerationConfig {
            chat_format: c.opt_str("chat_format").map(str::to_string),
            max_window_size: c.opt_usize("max_window_size")?,
            do_sample: c.opt("do_sample").and_then(Value::as_bool),
            temperature: c.opt_f64("temperature")?,
            top_p: c.opt_f64("top_p")?,
            top_k: c.opt_usize("top_k")?,
            repetition_penalty: c.opt_f64("repetition_penalty")?,
            max_new_tokens: c.opt_usize("max_new_tokens")?,
        })
    }
}

/// One memory-mapped `.safetensors` file with its validated header.
pub struct Shard {
    pub path: PathBuf,
    map: Mmap,
    header_len: usize,
    meta: Metadata,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a file truncated by someone else while we convert is
        // outside what a converter can defend against (the same holds for every mmap reader).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            Error::Checkpoint(format!(
                "{}: invalid safetensors file: {e:?}",
                path.display()
            ))
        })?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            header_len,
            meta,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.meta.tensors().into_keys().collect()
    }

    /// The raw bytes, dtype and shape of a tensor (offsets were validated when opening).
    pub fn raw(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let info = self.meta.info(name)?;
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        Some((info.dtype, &info.shape, &self.map[start..end]))
    }

    /// Tells the kernel we are done with a tensor's pages (see [`release_pages`]).
    pub fn release(&self, name: &str) {
        if let Some((_, _, data)) = self.raw(name) {
            release_pages(data);
        }
    }
}

/// Drops the resident pages of a read-only file mapping that lie wholly inside `bytes`, so
/// converting a checkpoint larger than memory does not keep it all resident. The pages are
/// file-backed: touching them again just reads them from the file again.
pub fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let page = page.max(1);
        let start = bytes.as_ptr() as usize;
        // Round inward: neighbouring tensors or rows may share the edge pages.
        let a = start.div_ceil(page) * page;
        let b = (start + bytes.len()) / page * page;
        if b > a {
            // SAFETY: [a, b) lies inside `bytes`, which callers only take from private
            // read-only file mappings (checkpoint shards); MADV_DONTNEED there never loses data.
            unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// All tensors of a checkpoint, whichever shard holds them.
pub struct Checkpoint {
    pub shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    pub index: BTreeMap<String, usize>,
}

/// A tensor found in a checkpoint.
pub struct RawTensor<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl Checkpoint {
    /// Opens `model.safetensors`, or every shard listed in `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        if index_path.is_file() {
            let v = read_json(&index_path)?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    Error::Checkpoint(format!("{}: no `weight_map` object", index_path.display()))
                })?;
            let mut files: Vec<&str> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "{}: weight_map entry for `{tensor}` is not a file name",
                        index_path.display()
                    ))
                })?;
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(Error::Checkpoint(format!(
                        "{}: shard name `{file}` must be a plain file name",
                        index_path.display()
                    )));
                }
                if !files.contains(&file) {
                    files.push(file);
                }
            }
            files.sort_unstable();
            for file in &files {
                shards.push(Shard::open(&dir.join(file))?);
            }
            for (tensor, file) in map {
                let shard_idx = files.iter().position(|f| Some(*f) == file.as_str());
                let shard_idx = shard_idx.expect("every file was collected above");
                if shards[shard_idx].meta.info(tensor).is_none() {
                    return Err(Error::Checkpoint(format!(
                        "{}: tensor `{tensor}` is listed for {} but that shard does not have it",
                        index_path.display(),
                        shards[shard_idx].path.display()
                    )));
                }
                index.insert(tensor.clone(), shard_idx);
            }
            // Tensors a shard holds but the index forgot are still tensors of the checkpoint.
            for (i, shard) in shards.iter().enumerate() {
                for name in shard.names() {
                    if let Some(prev) = index.insert(name.clone(), i) {
                        if prev != i {
                            return Err(Error::Checkpoint(format!(
                                "tensor `{name}` is in both {} and {}",
                                shards[prev].path.display(),
                                shard.path.display()
                            )));
                        }
                    }
                }
            }
        } else if single.is_file() {
            let shard = Shard::open(&single)?;
            for name in shard.names() {
                index.insert(name, 0);
            }
            shards.push(shard);
        } else {
            let has_bin = dir.join("pytorch_model.bin").exists()
                || dir.join("pytorch_model.bin.index.json").exists();
            return Err(Error::Checkpoint(format!(
                "{}: no model.safetensors or model.safetensors.index.json{}",
                dir.display(),
                if has_bin {
                    " (PyTorch .bin checkpoints are not read: save them as safetensors first)"
                } else {
                    ""
                }
            )));
        }
        Ok(Checkpoint { shards, index })
    }

    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        let (key, &shard) = self.index.get_key_value(name)?;
        let s = &self.shards[shard];
        let (dtype, shape, data) = s.raw(name)?;
        Some(RawTensor {
            name: key,
            file: &s.path,
            dtype,
            shape,
            data,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn release(&self, name: &str) {
        if let Some(&shard) = self.index.get(name) {
            self.shards[shard].release(name);
        }
    }
}

/// Converts `n` elements of a float tensor starting at element `start` to f32.
pub fn floats_to_f32(t: &RawTensor, start: usize, out: &mut [f32]) -> Result<()> {
    let size = t.dtype.size();
    let bytes = t
        .data
        .get(start * size..(start + out.len()) * size)
        .ok_or_else(|| Error::tensor(t.name, "read past the end of the tensor"))?;
    match t.dtype {
        Dtype::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Dtype::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Dtype::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        other => {
            return Err(Error::tensor(
                t.name,
                format!(
                    "{}: dtype {other:?} is not a float type (F32, F16 or BF16 expected)",
                    t.file.display()
                ),
            ))
        }
    }
    Ok(())
}

/// Reads a whole (small) tensor as f32: LoRA factors, biases, GPTQ scales.
pub fn read_f32(t: &RawTensor) -> Result<Vec<f32>> {
    let n = t.shape.iter().product();
    let mut v = vec![0.0; n];
    floats_to_f32(t, 0, &mut v)?;
    Ok(v)
}

/// Reads a whole I32 tensor (GPTQ packed words, group indices).
pub fn read_i32(t: &RawTensor) -> Result<Vec<i32>> {
    if t.dtype != Dtype::I32 {
        return Err(Error::tensor(
            t.name,
            format!("{}: dtype {:?}, expected I32", t.file.display(), t.dtype),
        ));
    }
    Ok(t.data
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Whether a dtype is a float type the converter reads.
pub fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}
