//! Re-quantizing an existing GGUF file: same tensors and metadata, new types.

use super::meta::{self, Kv};
use super::names::Role;
use super::plan::{choose_type, summarize_fallbacks, Data, Job, Plan};
use super::vocab;
use super::ConvertOptions;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use std::path::Path;

/// Keys the writer or this conversion sets anew.
fn is_replaced_key(key: &str, new_tokenizer: bool) -> bool {
    matches!(
        key,
        "general.file_type" | "general.quantization_version" | "general.alignment"
    ) || (new_tokenizer && key.starts_with("tokenizer."))
}

pub(crate) fn plan<'a>(path: &Path, file: &'a GgufFile, opts: &ConvertOptions) -> Result<Plan<'a>> {
    if opts.lora.is_some() {
        return Err(Error::Unsupported(
            "merging a LoRA adapter needs the Hugging Face checkpoint, not a GGUF file".into(),
        ));
    }
    let arch = file
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::metadata("general.architecture", "missing in the input file"))?
        .to_string();
    let infos = file.tensor_infos();
    let has_output = infos.iter().any(|t| t.name == "output.weight");
    let n_layer = match file
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.as_u64())
    {
        Some(n) => n as usize,
        None => infos
            .iter()
            .filter_map(|t| super::names::layer_of(&t.name))
            .max()
            .map_or(0, |l| l + 1),
    };
    let mut jobs = Vec::with_capacity(infos.len());
    for info in infos {
        let view = file
            .tensor(&info.name)
            .ok_or_else(|| Error::tensor(&info.name, "listed but unreadable"))?;
        let dims = view.dims.to_vec();
        let cols = dims.first().copied().unwrap_or(1);
        let rows: usize = dims.iter().skip(1).product();
        let role = Role::of_gguf_name(&info.name, dims.len());
        let lm_head =
            info.name == "output.weight" || (info.name == "token_embd.weight" && !has_output);
        let (ty, note) = choose_type(opts.out_type, role, &info.name, n_layer, lm_head, cols);
        jobs.push(Job {
            name: info.name.clone(),
            source: format!("{} ({})", info.name, view.ty),
            dims,
            rows,
            cols,
            ty,
            data: Data::Gguf {
                ty: view.ty,
                data: view.data,
            },
            lora: None,
            note,
        });
    }
    let mut warnings = summarize_fallbacks(&jobs);
    let new_vocab = match &opts.tokenizer {
        Some(p) => {
            let n_vocab = file
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| Error::tensor("token_embd.weight", "missing or not 2-D"))?;
            Some(vocab::from_path(p, n_vocab)?)
        }
        None => None,
    };
    let mut metadata: Kv = file
        .metadata()
        .iter()
        .filter(|(k, _)| !is_replaced_key(k, new_vocab.is_some()))
        .filter(|(k, _)| !(opts.name.is_some() && k == "general.name"))
        .cloned()
        .collect();
    if let Some(name) = &opts.name {
        metadata.push((
            "general.name".into(),
            crate::gguf::MetadataValue::String(name.clone()),
        ));
    }
    let quantized = jobs.iter().any(|j| j.ty.is_quantized());
    metadata.extend(meta::file_type_metadata(
        opts.out_type.file_type(),
        quantized,
    ));
    if let Some(v) = &new_vocab {
        metadata.extend(meta::vocab_metadata(v));
    }
    let n_tokens = match &new_vocab {
        Some(v) => v.tokens.len(),
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len()),
    };
    if n_tokens == 0 {
        warnings.push(format!("{}: the file has no tokenizer", path.display()));
    }
    Ok(Plan {
        arch,
        metadata,
        jobs,
        warnings,
        info: Vec::new(),
        n_tokens,
    })
}
