//! Status codes, the thread-local last error, the panic boundary and argument checks shared by
//! every exported function.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Success.
pub const QWEN_OK: i32 = 0;
/// Not an error: `qwen_session_next_token` has nothing more to generate (see
/// `qwen_session_finish_reason`).
pub const QWEN_DONE: i32 = 1;
/// A bad argument: a NULL pointer where one is required, text that is not UTF-8, a token id
/// outside the vocabulary, an out-of-range parameter.
pub const QWEN_ERR_INVALID_ARGUMENT: i32 = -1;
/// The handle is NULL, already freed, or of the wrong kind.
pub const QWEN_ERR_INVALID_HANDLE: i32 = -2;
/// A file could not be opened or read.
pub const QWEN_ERR_IO: i32 = -3;
/// The model file is malformed (GGUF structure, metadata or tensors), or saved session state
/// does not fit this model.
pub const QWEN_ERR_FORMAT: i32 = -4;
/// The file or a parameter asks for something this build does not support (an architecture,
/// a backend, a KV-cache type).
pub const QWEN_ERR_UNSUPPORTED: i32 = -5;
/// The model has no tokenizer, or its vocabulary lacks a token the call needs.
pub const QWEN_ERR_TOKENIZER: i32 = -6;
/// The tokens do not fit in the session's context.
pub const QWEN_ERR_CONTEXT_FULL: i32 = -7;
/// `qwen_session_abort` stopped the call.
pub const QWEN_ERR_ABORTED: i32 = -8;
/// Another call is using the session (from another thread, or from inside a callback).
pub const QWEN_ERR_BUSY: i32 = -9;
/// A bug in libqwen (a caught panic). The session it happened in should be freed.
pub const QWEN_ERR_INTERNAL: i32 = -10;

/// An error on its way to the C caller: a status code and the message for `qwen_last_error`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub code: i32,
    pub msg: String,
}

pub(crate) type FfiResult<T> = std::result::Result<T, FfiError>;

pub(crate) fn fail<T>(code: i32, msg: impl Into<String>) -> FfiResult<T> {
    Err(FfiError {
        code,
        msg: msg.into(),
    })
}

pub(crate) fn invalid<T>(msg: impl Into<String>) -> FfiResult<T> {
    fail(QWEN_ERR_INVALID_ARGUMENT, msg)
}

impl From<crate::Error> for FfiError {
    fn from(e: crate::Error) -> Self {
        use crate::Error as E;
        let code = match &e {
            E::Io { .. } => QWEN_ERR_IO,
            E::Gguf(_) | E::Metadata { .. } | E::Tensor { .. } | E::Checkpoint(_) | E::State(_) => {
                QWEN_ERR_FORMAT
            }
            E::Unsupported(_) => QWEN_ERR_UNSUPPORTED,
            E::Tokenizer(_) => QWEN_ERR_TOKENIZER,
            E::InvalidArgument(_) => QWEN_ERR_INVALID_ARGUMENT,
        };
        FfiError {
            code,
            msg: e.to_string(),
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_STATUS: std::cell::Cell<i32> = const { std::cell::Cell::new(QWEN_OK) };
}

fn set_last_error(code: i32, msg: &str) {
    let _ = LAST_STATUS.try_with(|s| s.set(code));
    // Interior NULs cannot be represented in a C string; they never occur in our messages
    // except through user text quoted back, where a visible substitute is better than a cut.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn clear_last_error() {
    let _ = LAST_STATUS.try_with(|s| s.set(QWEN_OK));
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        if !e.as_bytes().is_empty() {
            *e = CString::default();
        }
    });
}

/// The message of the last failed `qwen_*` call on this thread, or "" when the last call
/// succeeded. Never NULL. The pointer stays valid until the next `qwen_*` call on this thread.
///
/// Thread-safe: each thread has its own message.
#[no_mangle]
pub extern "C" fn qwen_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The status code of the last failed `qwen_*` call on this thread, or `QWEN_OK` when the last
/// call succeeded: how to classify a failure of a function that returns NULL or `false`
/// (`qwen_model_load`, `qwen_session_new`).
///
/// Thread-safe: each thread has its own status.
#[no_mangle]
pub extern "C" fn qwen_last_status() -> i32 {
    LAST_STATUS.try_with(|s| s.get()).unwrap_or(QWEN_OK)
}

/// A static, human-readable name for a status code ("QWEN_OK", "QWEN_ERR_BUSY", ...; "unknown
/// status" for others). Never NULL, never freed.
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn qwen_status_name(status: i32) -> *const c_char {
    let s: &'static std::ffi::CStr = match status {
        QWEN_OK => c"QWEN_OK",
        QWEN_DONE => c"QWEN_DONE",
        QWEN_ERR_INVALID_ARGUMENT => c"QWEN_ERR_INVALID_ARGUMENT",
        QWEN_ERR_INVALID_HANDLE => c"QWEN_ERR_INVALID_HANDLE",
        QWEN_ERR_IO => c"QWEN_ERR_IO",
        QWEN_ERR_FORMAT => c"QWEN_ERR_FORMAT",
        QWEN_ERR_UNSUPPORTED => c"QWEN_ERR_UNSUPPORTED",
        QWEN_ERR_TOKENIZER => c"QWEN_ERR_TOKENIZER",
        QWEN_ERR_CONTEXT_FULL => c"QWEN_ERR_CONTEXT_FULL",
        QWEN_ERR_ABORTED => c"QWEN_ERR_ABORTED",
        QWEN_ERR_BUSY => c"QWEN_ERR_BUSY",
        QWEN_ERR_INTERNAL => c"QWEN_ERR_INTERNAL",
        _ => c"unknown status",
    };
    s.as_ptr()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs the body of an exported function: clears the last error, catches panics, and turns an
/// error into `on_error(code)` with the message stored for `qwen_last_error`.
pub(crate) fn guard<T>(on_error: impl FnOnce(i32) -> T, body: impl FnOnce() -> FfiResult<T>) -> T {
    clear_last_error();
    let err = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(payload) => FfiError {
            code: QWEN_ERR_INTERNAL,
            msg: format!("internal error: {}", panic_message(&*payload)),
        },
    };
    set_last_error(err.code, &err.msg);
    on_error(err.code)
}

/// `guard` for functions that return a status code (or a non-negative count).
pub(crate) fn status(body: impl FnOnce() -> FfiResult<i32>) -> i32 {
    guard(|code| code, body)
}

/// `guard` for functions that return a pointer (NULL on failure).
pub(crate) fn pointer<T>(body: impl FnOnce() -> FfiResult<*mut T>) -> *mut T {
    guard(|_| std::ptr::null_mut(), body)
}

/// `len` elements at `ptr` as a slice. NULL is allowed only with `len == 0`.
pub(crate) fn in_slice<'a, T>(ptr: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return invalid(format!("{what} is NULL but its length is {len}"));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return invalid(format!("{what}: length {len} is too large"));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return invalid(format!("{what} is not aligned"));
    }
    // SAFETY: non-NULL, aligned, and the caller promises `len` readable elements (the
    // documented contract of every function taking a pointer and a length).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `len` bytes of UTF-8 text at `ptr`.
pub(crate) fn in_text<'a>(ptr: *const c_char, len: usize, what: &str) -> FfiResult<&'a str> {
    let bytes = in_slice(ptr.cast::<u8>(), len, what)?;
    std::str::from_utf8(bytes).or_else(|e| {
        invalid(format!(
            "{what} is not valid UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })
}

/// A caller's output buffer of `capacity` elements. NULL is allowed only with capacity 0 (a
/// size query).
pub(crate) fn out_slice<'a, T>(ptr: *mut T, capacity: usize, what: &str) -> FfiResult<&'a mut [T]> {
    if capacity == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return invalid(format!("{what} is NULL but its capacity is {capacity}"));
    }
    if capacity > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return invalid(format!("{what}: capacity {capacity} is too large"));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return invalid(format!("{what} is not aligned"));
    }
    // SAFETY: non-NULL, aligned, and the caller promises `capacity` writable elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, capacity) })
}

/// A count as the `int32_t` the C functions return.
pub(crate) fn count_i32(n: usize, what: &str) -> FfiResult<i32> {
    i32::try_from(n).or_else(|_| invalid(format!("{what} ({n}) does not fit in int32_t")))
}

/// Buffer-size negotiation for text: writes `min(len, capacity)` bytes of `bytes`, then a NUL
/// if there is room (`len < capacity`), and returns `len`.
pub(crate) fn write_text(bytes: &[u8], out: *mut c_char, capacity: usize) -> FfiResult<i32> {
    let n = count_i32(bytes.len(), "text length")?;
    let out = out_slice(out.cast::<u8>(), capacity, "output buffer")?;
    let k = bytes.len().min(out.len());
    out[..k].copy_from_slice(&bytes[..k]);
    if bytes.len() < out.len() {
        out[bytes.len()] = 0;
    }
    Ok(n)
}

/// Buffer-size negotiation for arrays: writes `min(len, capacity)` items and returns `len`.
pub(crate) fn write_items<T: Copy>(items: &[T], out: *mut T, capacity: usize) -> FfiResult<i32> {
    let n = count_i32(items.len(), "item count")?;
    let out = out_slice(out, capacity, "output buffer")?;
    let k = items.len().min(out.len());
    out[..k].copy_from_slice(&items[..k]);
    Ok(n)
}

/// Checks an optional out-pointer and writes through it.
pub(crate) fn write_out<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: the caller passes either NULL or a pointer to writable memory for a `T`.
        unsafe { ptr.write_unaligned(value) }
    }
}
