//! Models and their tokenizer: load, free, information, encode and decode.

use super::error::*;
use super::handles;
use crate::backend::BackendKind;
use crate::chat::ChatTokens;
use crate::kv_cache::KvCacheType;
use crate::model::Model;
use crate::tokenizer::{EncodeMode, Tokenizer};
use std::ffi::{c_char, CStr};
use std::sync::Arc;

/// Compute backend: the CPU (always built in).
pub const QWEN_BACKEND_CPU: i32 = 0;
/// Compute backend: CUDA (a library built with feature `cuda`; the driver is loaded when a
/// session is created, so `qwen_session_new` reports a missing driver or device).
pub const QWEN_BACKEND_CUDA: i32 = 1;
/// Compute backend: ROCm/HIP for AMD GPUs and Hygon DCUs (a library built with feature `rocm`).
pub const QWEN_BACKEND_ROCM: i32 = 2;

/// KV-cache element type: 32-bit float (exact; a GPU backend stores it as 16-bit float).
pub const QWEN_KV_F32: i32 = 0;
/// KV-cache element type: 16-bit float (half the memory of f32).
pub const QWEN_KV_F16: i32 = 1;
/// KV-cache element type: int8 rows with a scale (about a quarter of f32).
pub const QWEN_KV_Q8: i32 = 2;

/// How to load a model. Get the defaults from `qwen_model_default_params()` and change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct qwen_model_params {
    /// Worker threads for sessions created with `n_threads == 0`; 0 = the number of physical
    /// cores.
    pub n_threads: i32,
    /// Context length for sessions created with `n_ctx == 0`; 0 = the model's training
    /// context, capped at 4096.
    pub n_ctx: i32,
    /// KV-cache storage of its sessions: `QWEN_KV_F32`, `QWEN_KV_F16` or `QWEN_KV_Q8`.
    pub kv_type: i32,
    /// `QWEN_BACKEND_CPU`, or `QWEN_BACKEND_CUDA` / `QWEN_BACKEND_ROCM` in a library built with
    /// that feature (`qwen_model_load` fails with `QWEN_ERR_UNSUPPORTED` otherwise).
    pub backend: i32,
    /// GPU ordinal for the GPU backends (ignored by the CPU).
    pub device: i32,
}

/// Hyperparameters of a loaded model, filled by `qwen_model_get_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct qwen_model_info {
    /// "qwen" (Qwen-1) or "qwen2" (Qwen-1.5/2/2.5); static storage.
    pub arch: *const c_char,
    /// Rows of the embedding (logits per position); may exceed the tokenizer's token count.
    pub n_vocab: i32,
    pub n_embd: i32,
    pub n_layer: i32,
    pub n_head: i32,
    pub n_head_kv: i32,
    /// The longest context the model was trained for.
    pub n_ctx_train: i32,
    /// Whether the file carries a tokenizer (without one only token ids can be used).
    pub has_tokenizer: bool,
    /// Total parameters (elements of every tensor).
    pub n_params: u64,
    /// Bytes of tensor data in the file.
    pub weight_bytes: u64,
}

/// A loaded model: weights mapped from the file, hyperparameters, tokenizer. Opaque; shared by
/// any number of threads and sessions.
pub struct qwen_model {
    pub(crate) model: Arc<Model>,
    pub(crate) params: qwen_model_params,
    /// The ChatML control tokens, when the vocabulary has them.
    pub(crate) chat: Option<ChatTokens>,
}

impl qwen_model {
    pub(crate) fn tokenizer(&self) -> FfiResult<&Tokenizer> {
        Ok(self.model.tokenizer()?)
    }
}

/// The default model parameters: CPU backend, f32 KV cache, threads and context chosen per
/// session.
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn qwen_model_default_params() -> qwen_model_params {
    qwen_model_params {
        n_threads: 0,
        n_ctx: 0,
        kv_type: QWEN_KV_F32,
        backend: QWEN_BACKEND_CPU,
        device: 0,
    }
}

/// The backend a `QWEN_BACKEND_*` value names.
pub(crate) fn backend_kind(backend: i32) -> FfiResult<BackendKind> {
    match backend {
        QWEN_BACKEND_CPU => Ok(BackendKind::Cpu),
        QWEN_BACKEND_CUDA => Ok(BackendKind::Cuda),
        QWEN_BACKEND_ROCM => Ok(BackendKind::Rocm),
        b => invalid(format!("unknown backend {b}")),
    }
}

/// The KV-cache type a `QWEN_KV_*` value names.
pub(crate) fn kv_cache_type(kv_type: i32) -> FfiResult<KvCacheType> {
    match kv_type {
        QWEN_KV_F32 => Ok(KvCacheType::F32),
        QWEN_KV_F16 => Ok(KvCacheType::F16),
        QWEN_KV_Q8 => Ok(KvCacheType::Q8),
        t => invalid(format!("unknown KV-cache type {t}")),
    }
}

fn check_model_params(p: &qwen_model_params) -> FfiResult<()> {
    if p.n_threads < 0 || p.n_ctx < 0 || p.device < 0 {
        return invalid(format!(
            "n_threads ({}), n_ctx ({}) and device ({}) must not be negative",
            p.n_threads, p.n_ctx, p.device
        ));
    }
    let kind = backend_kind(p.backend)?;
    if !kind.compiled() {
        let name = match kind {
            BackendKind::Cuda => "CUDA",
            _ => "ROCm",
        };
        return fail(
            QWEN_ERR_UNSUPPORTED,
            format!("the {name} backend is not in this build (built without feature {kind})"),
        );
    }
    kv_cache_type(p.kv_type).map(|_| ())
}

/// Loads a GGUF model from `path` (a NUL-terminated UTF-8 path). `params` may be NULL for the
/// defaults. Returns NULL on failure; `qwen_last_error()` says why (the file, key or tensor
/// concerned). Free the model with `qwen_model_free`.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_model_load(
    path: *const c_char,
    params: *const qwen_model_params,
) -> *mut qwen_model {
    pointer(|| {
        if path.is_null() {
            return invalid("path is NULL");
        }
        // SAFETY: non-NULL, and the caller passes a NUL-terminated string.
        let path = unsafe { CStr::from_ptr(path) };
        let path = path
            .to_str()
            .or_else(|_| invalid("path is not valid UTF-8"))?;
        let params = if params.is_null() {
            qwen_model_default_params()
        } else {
            // SAFETY: non-NULL; the caller passes a valid struct.
            unsafe { params.read_unaligned() }
        };
        check_model_params(&params)?;
        let model = Model::load(path)?;
        let chat = model
            .tokenizer
            .as_ref()
            .and_then(|t| ChatTokens::from_tokenizer(t).ok());
        Ok(handles::register_model(Arc::new(qwen_model {
            model: Arc::new(model),
            params,
            chat,
        })))
    })
}

/// Frees a model. NULL is a no-op. Sessions created from it stay usable (they keep the model
/// alive); the file is unmapped when the last of them is freed. Freeing a handle twice is
/// detected and reported through `qwen_last_error()`.
///
/// Thread-safe, also while other threads use the model (they finish their calls); the handle
/// must not be used after this call.
#[no_mangle]
pub extern "C" fn qwen_model_free(model: *mut qwen_model) {
    guard(
        |_| (),
        || match model.is_null() {
            true => Ok(()),
            false => handles::unregister_model(model),
        },
    );
}

/// Fills `*out` with the model's hyperparameters. Returns `QWEN_OK` or a negative status.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_model_get_info(model: *const qwen_model, out: *mut qwen_model_info) -> i32 {
    status(|| {
        let m = handles::model(model)?;
        if out.is_null() {
            return invalid("out is NULL");
        }
        let c = &m.model.config;
        let arch: &'static CStr = match c.arch {
            crate::model::Arch::Qwen => c"qwen",
            crate::model::Arch::Qwen2 => c"qwen2",
        };
        let infos = m.model.file().tensor_infos();
        let i32_of = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        write_out(
            out,
            qwen_model_info {
                arch: arch.as_ptr(),
                n_vocab: i32_of(c.n_vocab),
                n_embd: i32_of(c.n_embd),
                n_layer: i32_of(c.n_layer),
                n_head: i32_of(c.n_head),
                n_head_kv: i32_of(c.n_head_kv),
                n_ctx_train: i32_of(c.n_ctx_train),
                has_tokenizer: m.model.tokenizer.is_some(),
                n_params: infos.iter().map(|t| t.n_elements() as u64).sum(),
                weight_bytes: infos.iter().map(|t| t.n_bytes() as u64).sum(),
            },
        );
        Ok(QWEN_OK)
    })
}

/// Rows of the model's embedding: the number of logits per position, and one past the largest
/// valid token id. Negative status on failure.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_model_n_vocab(model: *const qwen_model) -> i32 {
    status(|| {
        let m = handles::model(model)?;
        count_i32(m.model.config.n_vocab, "n_vocab")
    })
}

/// Encodes `text_len` bytes of UTF-8 `text` (need not be NUL-terminated; NULL only with length
/// 0). With `parse_special` false, text that spells a control token (`<|im_end|>`) is plain
/// text: use this for anything a user typed. With true, such text becomes the control token:
/// only for text the application itself wrote.
///
/// Returns how many ids the text needs (writes min(needed, capacity) of them to `out_ids`), or a
/// negative status. `out_ids` may be NULL with capacity 0 to ask for the size.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_tokenize(
    model: *const qwen_model,
    text: *const c_char,
    text_len: usize,
    parse_special: bool,
    out_ids: *mut i32,
    capacity: usize,
) -> i32 {
    status(|| {
        let m = handles::model(model)?;
        let text = in_text(text, text_len, "text")?;
        let mode = if parse_special {
            EncodeMode::Trusted
        } else {
            EncodeMode::Text
        };
        let ids: Vec<i32> = m
            .tokenizer()?
            .encode(text, mode)
            .into_iter()
            .map(|t| t as i32)
            .collect();
        write_items(&ids, out_ids, capacity)
    })
}

pub(crate) fn check_ids(ids: &[i32], n_vocab: usize) -> FfiResult<Vec<u32>> {
    ids.iter()
        .map(|&t| {
            if t < 0 || t as usize >= n_vocab {
                invalid(format!(
                    "token id {t} is outside the vocabulary (0..{n_vocab})"
                ))
            } else {
                Ok(t as u32)
            }
        })
        .collect()
}

/// Decodes `n_ids` token ids to UTF-8 text (invalid byte sequences become U+FFFD). With
/// `skip_special`, control tokens (`<|im_end|>`, ...) are left out.
///
/// Returns the text's length in bytes, without a terminator; writes min(length, capacity) bytes
/// to `out` and a NUL after them if `length < capacity`. `out` may be NULL with capacity 0.
/// Negative status on failure (an id outside the vocabulary, no tokenizer).
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_detokenize(
    model: *const qwen_model,
    ids: *const i32,
    n_ids: usize,
    skip_special: bool,
    out: *mut c_char,
    capacity: usize,
) -> i32 {
    status(|| {
        let m = handles::model(model)?;
        let ids = check_ids(in_slice(ids, n_ids, "ids")?, m.model.config.n_vocab)?;
        let tok = m.tokenizer()?;
        let text = if skip_special {
            tok.decode_skip_special(&ids)
        } else {
            tok.decode(&ids)
        };
        write_text(text.as_bytes(), out, capacity)
    })
}

/// The raw bytes of one token: for a normal token they may be part of a UTF-8 character; for a
/// control token, its text. An id without a token (padding) gives 0 bytes.
///
/// Returns the number of bytes; writes min(bytes, capacity) and a NUL if there is room (as
/// `qwen_detokenize`). Negative status on failure.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_token_to_piece(
    model: *const qwen_model,
    token: i32,
    out: *mut c_char,
    capacity: usize,
) -> i32 {
    status(|| {
        let m = handles::model(model)?;
        let id = check_ids(&[token], m.model.config.n_vocab)?[0];
        let bytes = m.tokenizer()?.token_bytes(id).unwrap_or_default();
        write_text(bytes, out, capacity)
    })
}

/// The id of a control or user-defined token by its text (e.g. "<|im_end|>", `name_len` bytes),
/// or a negative status (`QWEN_ERR_TOKENIZER` when the vocabulary has no such token).
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_token_special_id(
    model: *const qwen_model,
    name: *const c_char,
    name_len: usize,
) -> i32 {
    status(|| {
        let m = handles::model(model)?;
        let name = in_text(name, name_len, "name")?;
        match m.tokenizer()?.special_id(name) {
            Some(id) => count_i32(id as usize, "token id"),
            None => fail(
                QWEN_ERR_TOKENIZER,
                format!("the vocabulary has no special token {name:?}"),
            ),
        }
    })
}

/// Whether `token` is a control or user-defined token. False for invalid handles or ids.
///
/// Thread-safe.
#[no_mangle]
pub extern "C" fn qwen_token_is_special(model: *const qwen_model, token: i32) -> bool {
    guard(
        |_| false,
        || {
            let m = handles::model(model)?;
            Ok(token >= 0 && m.tokenizer()?.is_special(token as u32))
        },
    )
}
