//! The stable C ABI of libqwen (`include/qwen.h` is generated from this module by cbindgen).
//!
//! Principles (DESIGN.md, "C ABI"):
//! - Opaque handles (`qwen_model`, `qwen_session`) with `_load`/`_new` and `_free` pairs.
//!   Handles are looked up in a registry of live handles on every call, so a NULL, freed,
//!   double-freed or wrong-kind handle is an error (`QWEN_ERR_INVALID_HANDLE`), never a crash.
//!   A call holds its own reference, so freeing a handle while another thread uses it is safe:
//!   the object lives until that call returns.
//! - Integer status codes (`QWEN_OK`, `QWEN_ERR_*`) plus a thread-local message
//!   (`qwen_last_error`).
//! - Buffer-size negotiation: calls that fill a caller's buffer return the size they need and
//!   write at most the capacity they were given.
//! - Every exported function catches panics and checks its pointers.
//! - A model is shared by any number of threads and sessions; a session serves one call at a
//!   time (a concurrent second call gets `QWEN_ERR_BUSY`), except `qwen_session_abort`.
//!
//! The functions call the same `Session` / `chat` API the CLI uses; nothing here knows about
//! the forward pass.

#![allow(non_camel_case_types)]
// Every exported function validates its raw pointers itself (documented per function);
// marking them `unsafe fn` would only move that contract into Rust callers of the C ABI.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod error;
mod generate;
mod handles;
mod model;
mod session;
mod state;

#[cfg(feature = "jni")]
pub mod jni;

pub use error::*;
pub use model::*;
pub use session::*;

/// ABI major version: bumped on any incompatible change (a removed or changed function or
/// struct layout).
pub const QWEN_ABI_VERSION_MAJOR: u32 = 2;
/// ABI minor version: bumped when functions or constants are added.
pub const QWEN_ABI_VERSION_MINOR: u32 = 0;
/// ABI patch version: bumped for fixes that change no declaration.
pub const QWEN_ABI_VERSION_PATCH: u32 = 0;
/// `(MAJOR << 16) | (MINOR << 8) | PATCH`: what `qwen_abi_version()` returns for the library
/// this header was generated with. A program should check that the major parts agree:
/// `(qwen_abi_version() >> 16) == QWEN_ABI_VERSION_MAJOR`.
pub const QWEN_ABI_VERSION: u32 =
    (QWEN_ABI_VERSION_MAJOR << 16) | (QWEN_ABI_VERSION_MINOR << 8) | QWEN_ABI_VERSION_PATCH;

/// The ABI version of the loaded library, `(major << 16) | (minor << 8) | patch`.
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn qwen_abi_version() -> u32 {
    QWEN_ABI_VERSION
}

/// The library's version string, e.g. "0.1.0" (static storage, never freed).
///
/// Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn qwen_version_string() -> *const std::os::raw::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_version_macro_is_consistent() {
        assert_eq!(
            QWEN_ABI_VERSION,
            (QWEN_ABI_VERSION_MAJOR << 16) | (QWEN_ABI_VERSION_MINOR << 8) | QWEN_ABI_VERSION_PATCH
        );
        assert_eq!(qwen_abi_version(), QWEN_ABI_VERSION);
    }
}
