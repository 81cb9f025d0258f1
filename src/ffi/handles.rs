//! The registry of live handles. A handle given to C is the address of an `Arc`'s value; every
//! call looks the address up here and clones the `Arc`, so a stale, foreign or wrong-kind
//! pointer is reported instead of dereferenced, and a free racing with a call on another
//! thread only drops the registry's reference.

use super::error::{fail, FfiResult, QWEN_ERR_INVALID_HANDLE};
use super::model::qwen_model;
use super::session::qwen_session;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

enum Handle {
    Model(Arc<qwen_model>),
    Session(Arc<qwen_session>),
}

static HANDLES: Mutex<BTreeMap<usize, Handle>> = Mutex::new(BTreeMap::new());

fn handles() -> MutexGuard<'static, BTreeMap<usize, Handle>> {
    // The map is never left half-updated, so a poisoned lock is still consistent.
    HANDLES.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn register_model(m: Arc<qwen_model>) -> *mut qwen_model {
    let p = Arc::as_ptr(&m) as *mut qwen_model;
    handles().insert(p as usize, Handle::Model(m));
    p
}

pub(crate) fn register_session(s: Arc<qwen_session>) -> *mut qwen_session {
    let p = Arc::as_ptr(&s) as *mut qwen_session;
    handles().insert(p as usize, Handle::Session(s));
    p
}

pub(crate) fn model(p: *const qwen_model) -> FfiResult<Arc<qwen_model>> {
    if p.is_null() {
        return fail(QWEN_ERR_INVALID_HANDLE, "model handle is NULL");
    }
    match handles().get(&(p as usize)) {
        Some(Handle::Model(m)) => Ok(Arc::clone(m)),
        Some(Handle::Session(_)) => fail(
            QWEN_ERR_INVALID_HANDLE,
            "a qwen_session was passed where a qwen_model is expected",
        ),
        None => fail(
            QWEN_ERR_INVALID_HANDLE,
            format!("{p:p} is not a live qwen_model (freed already?)"),
        ),
    }
}

pub(crate) fn session(p: *const qwen_session) -> FfiResult<Arc<qwen_session>> {
    if p.is_null() {
        return fail(QWEN_ERR_INVALID_HANDLE, "session handle is NULL");
    }
    match handles().get(&(p as usize)) {
        Some(Handle::Session(s)) => Ok(Arc::clone(s)),
        Some(Handle::Model(_)) => fail(
            QWEN_ERR_INVALID_HANDLE,
            "a qwen_model was passed where a qwen_session is expected",
        ),
        None => fail(
            QWEN_ERR_INVALID_HANDLE,
            format!("{p:p} is not a live qwen_session (freed already?)"),
        ),
    }
}

/// Removes a model from the registry; true if it was there. The model itself is dropped when
/// the last session using it and the last running call are gone.
pub(crate) fn unregister_model(p: *const qwen_model) -> FfiResult<()> {
    let removed = {
        let mut h = handles();
        match h.get(&(p as usize)) {
            Some(Handle::Model(_)) => h.remove(&(p as usize)),
            _ => None,
        }
    };
    match removed {
        // Dropped outside the lock: dropping a model unmaps a file.
        Some(handle) => {
            drop(handle);
            Ok(())
        }
        None => model(p).map(|_| ()),
    }
}

pub(crate) fn unregister_session(p: *const qwen_session) -> FfiResult<Arc<qwen_session>> {
    let removed = {
        let mut h = handles();
        match h.get(&(p as usize)) {
            Some(Handle::Session(_)) => h.remove(&(p as usize)),
            _ => None,
        }
    };
    match removed {
        Some(Handle::Session(s)) => Ok(s),
        _ => session(p),
    }
}
