//! JNI glue for `bindings/java` (class `io.qwen.QwenNative`) and the Android module: each
//! native method calls the C ABI of this module, so Java gets exactly its semantics (handle
//! registry, BUSY, abort, buffer negotiation). A negative status becomes a
//! `io.qwen.QwenException(status, message)`; a panic in the glue becomes one with
//! `QWEN_ERR_INTERNAL`. Handles travel as `long`.

use super::*;
use ::jni::objects::{JByteArray, JClass, JFloatArray, JIntArray, JObject, JString, JValue};
use ::jni::sys::{
    jboolean, jbyteArray, jdouble, jfloat, jfloatArray, jint, jintArray, jlong, jstring,
};
use ::jni::JNIEnv;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

/// Why a native method fails: a status and message to throw, or a Java exception that is
/// already pending.
enum Fail {
    Throw(i32, String),
    Pending,
}

type R<T> = std::result::Result<T, Fail>;

impl From<::jni::errors::Error> for Fail {
    fn from(e: ::jni::errors::Error) -> Self {
        match e {
            ::jni::errors::Error::JavaException => Fail::Pending,
            e => Fail::Throw(QWEN_ERR_INTERNAL, format!("JNI: {e}")),
        }
    }
}

fn last_error() -> String {
    // SAFETY: qwen_last_error never returns NULL and the string lives until the next call.
    unsafe { CStr::from_ptr(qwen_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A C status as a result: negative codes carry the thread's last error message.
fn ok(rc: i32) -> R<i32> {
    if rc < 0 {
        Err(Fail::Throw(rc, last_error()))
    } else {
        Ok(rc)
    }
}

fn throw(env: &mut JNIEnv, status: i32, msg: &str) {
    let thrown = (|| -> ::jni::errors::Result<()> {
        let cls = env.find_class("io/qwen/QwenException")?;
        let jmsg = env.new_string(msg)?;
        let obj = env.new_object(
            cls,
            "(ILjava/lang/String;)V",
            &[JValue::Int(status), JValue::Object(&jmsg)],
        )?;
        env.throw(::jni::objects::JThrowable::from(obj))
    })();
    if thrown.is_err() && !env.exception_check().unwrap_or(false) {
        let _ = env.throw_new("java/lang/RuntimeException", msg);
    }
}

/// Runs a native method body: turns failures and panics into Java exceptions and returns
/// `default` to the JVM in that case.
fn call<'l, T>(env: &mut JNIEnv<'l>, default: T, f: impl FnOnce(&mut JNIEnv<'l>) -> R<T>) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(v)) => v,
        Ok(Err(Fail::Pending)) => default,
        Ok(Err(Fail::Throw(status, msg))) => {
            throw(env, status, &msg);
            default
        }
        Err(_) => {
            throw(
                env,
                QWEN_ERR_INTERNAL,
                "internal error (panic) in the JNI glue",
            );
            default
        }
    }
}

fn string(env: &mut JNIEnv, s: &JString) -> R<String> {
    if s.is_null() {
        return Err(Fail::Throw(
            QWEN_ERR_INVALID_ARGUMENT,
            "string is null".into(),
        ));
    }
    Ok(env.get_string(s)?.into())
}

fn int_array(env: &mut JNIEnv, a: &JIntArray) -> R<Vec<i32>> {
    if a.is_null() {
        return Err(Fail::Throw(
            QWEN_ERR_INVALID_ARGUMENT,
            "array is null".into(),
        ));
    }
    let n = env.get_array_length(a)? as usize;
    let mut v = vec![0i32; n];
    env.get_int_array_region(a, 0, &mut v)?;
    Ok(v)
}

fn new_int_array(env: &mut JNIEnv, v: &[i32]) -> R<jintArray> {
    let a = env.new_int_array(v.len() as i32)?;
    env.set_int_array_region(&a, 0, v)?;
    Ok(a.into_raw())
}

/// Text from a negotiating C function (returns the length, writes at most the capacity).
fn text(fill: impl Fn(*mut c_char, usize) -> i32) -> R<String> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = ok(fill(buf.as_mut_ptr().cast(), buf.len()))? as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        buf.resize(n + 1, 0);
    }
}

fn model(h: jlong) -> *mut qwen_model {
    h as usize as *mut qwen_model
}

fn session(h: jlong) -> *mut qwen_session {
    h as usize as *mut qwen_session
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_abiVersion(_env: JNIEnv, _c: JClass) -> jint {
    qwen_abi_version() as jint
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_modelLoad(
    mut env: JNIEnv,
    _c: JClass,
    path: JString,
    n_threads: jint,
    n_ctx: jint,
    kv_type: jint,
) -> jlong {
    call(&mut env, 0, |env| {
        let path = std::ffi::CString::new(string(env, &path)?)
            .map_err(|_| Fail::Throw(QWEN_ERR_INVALID_ARGUMENT, "path contains NUL".into()))?;
        let mut p = qwen_model_default_params();
        p.n_threads = n_threads;
        p.n_ctx = n_ctx;
        p.kv_type = kv_type;
        let m = qwen_model_load(path.as_ptr(), &p);
        if m.is_null() {
            return Err(Fail::Throw(qwen_last_status(), last_error()));
        }
        Ok(m as usize as jlong)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_modelFree(_env: JNIEnv, _c: JClass, h: jlong) {
    qwen_model_free(model(h));
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_nVocab(
    mut env: JNIEnv,
    _c: JClass,
    h: jlong,
) -> jint {
    call(&mut env, 0, |_| ok(qwen_model_n_vocab(model(h))))
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_arch(
    mut env: JNIEnv,
    _c: JClass,
    h: jlong,
) -> jstring {
    call(&mut env, null_mut(), |env| {
        let mut info = std::mem::MaybeUninit::<qwen_model_info>::uninit();
        ok(qwen_model_get_info(model(h), info.as_mut_ptr()))?;
        // SAFETY: filled by qwen_model_get_info on success; arch is a static C string.
        let arch = unsafe { CStr::from_ptr(info.assume_init().arch) };
        Ok(env.new_string(arch.to_string_lossy())?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_tokenize(
    mut env: JNIEnv,
    _c: JClass,
    h: jlong,
    text: JString,
    parse_special: jboolean,
) -> jintArray {
    call(&mut env, null_mut(), |env| {
        let t = string(env, &text)?;
        let need = ok(qwen_tokenize(
            model(h),
            t.as_ptr().cast(),
            t.len(),
            parse_special != 0,
            null_mut(),
            0,
        ))?;
        let mut ids = vec![0i32; need as usize];
        ok(qwen_tokenize(
            model(h),
            t.as_ptr().cast(),
            t.len(),
            parse_special != 0,
            ids.as_mut_ptr(),
            ids.len(),
        ))?;
        new_int_array(env, &ids)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_detokenize(
    mut env: JNIEnv,
    _c: JClass,
    h: jlong,
    ids: JIntArray,
    skip_special: jboolean,
) -> jstring {
    call(&mut env, null_mut(), |env| {
        let ids = int_array(env, &ids)?;
        let s = text(|buf, cap| {
            qwen_detokenize(
                model(h),
                ids.as_ptr(),
                ids.len(),
                skip_special != 0,
                buf,
                cap,
            )
        })?;
        Ok(env.new_string(s)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_specialToken(
    mut env: JNIEnv,
    _c: JClass,
    h: jlong,
    name: JString,
) -> jint {
    call(&mut env, -1, |env| {
        let n = string(env, &name)?;
        ok(qwen_token_special_id(model(h), n.as_ptr().cast(), n.len()))
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_sessionNew(
    mut env: JNIEnv,
    _c: JClass,
    h: jlong,
    n_ctx: jint,
    n_threads: jint,
    max_batch: jint,
) -> jlong {
    call(&mut env, 0, |_| {
        let p = qwen_session_params {
            n_ctx,
            n_threads,
            max_batch,
        };
        let s = qwen_session_new(model(h), &p);
        if s.is_null() {
            return Err(Fail::Throw(qwen_last_status(), last_error()));
        }
        Ok(s as usize as jlong)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_sessionFree(_env: JNIEnv, _c: JClass, s: jlong) {
    qwen_session_free(session(s));
}

/// A session call that takes one string.
fn with_text(env: &mut JNIEnv, text: &JString, f: impl FnOnce(*const c_char, usize) -> i32) {
    call(env, (), |env| {
        let t = string(env, text)?;
        ok(f(t.as_ptr().cast(), t.len())).map(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_setSystemPrompt(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    text: JString,
) {
    with_text(&mut env, &text, |p, n| {
        qwen_session_set_system_prompt(session(s), p, n)
    });
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_chat(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    text: JString,
) {
    with_text(&mut env, &text, |p, n| qwen_session_chat(session(s), p, n));
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_prompt(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    text: JString,
    parse_special: jboolean,
) {
    with_text(&mut env, &text, |p, n| {
        qwen_session_prompt(session(s), p, n, parse_special != 0)
    });
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_addStopString(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    text: JString,
) {
    with_text(&mut env, &text, |p, n| {
        qwen_session_add_stop_string(session(s), p, n)
    });
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_clearStopStrings(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) {
    call(&mut env, (), |_| {
        ok(qwen_session_clear_stop_strings(session(s))).map(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_eval(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    ids: JIntArray,
) {
    call(&mut env, (), |env| {
        let ids = int_array(env, &ids)?;
        ok(qwen_session_eval(session(s), ids.as_ptr(), ids.len())).map(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_setSampling(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    temperature: jfloat,
    top_p: jfloat,
    top_k: jint,
    repetition_penalty: jfloat,
    seed: jlong,
) {
    call(&mut env, (), |_| {
        let p = qwen_sampling_params {
            temperature,
            top_p,
            top_k,
            repetition_penalty,
            seed: seed as u64,
        };
        ok(qwen_session_set_sampling(session(s), &p)).map(|_| ())
    })
}

/// What the generation callback needs: the JNI environment of the calling thread and the
/// Java `TokenCallback`.
struct CallbackCtx<'a, 'l> {
    env: &'a mut JNIEnv<'l>,
    callback: &'a JObject<'l>,
    /// A Java exception from the callback is pending: generation stops, nothing else is
    /// called through JNI until it propagates.
    failed: bool,
}

unsafe extern "C" fn java_callback(
    piece: *const c_char,
    len: usize,
    token: i32,
    user_data: *mut c_void,
) -> i32 {
    // SAFETY: user_data is the CallbackCtx passed to qwen_session_generate below, alive for the
    // whole call; piece points to `len` bytes of UTF-8.
    let ctx = unsafe { &mut *(user_data as *mut CallbackCtx) };
    let bytes = unsafe { std::slice::from_raw_parts(piece.cast::<u8>(), len) };
    let r = catch_unwind(AssertUnwindSafe(|| -> ::jni::errors::Result<bool> {
        let text = ctx.env.new_string(String::from_utf8_lossy(bytes))?;
        let go_on = ctx
            .env
            .call_method(
                ctx.callback,
                "onToken",
                "(Ljava/lang/String;I)Z",
                &[JValue::Object(&text), JValue::Int(token)],
            )?
            .z()?;
        ctx.env.delete_local_ref(text)?;
        Ok(go_on)
    }));
    match r {
        Ok(Ok(true)) => 0,
        _ => {
            ctx.failed = true;
            1
        }
    }
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_generate<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    s: jlong,
    max_tokens: jint,
    callback: JObject<'l>,
) -> jint {
    call(&mut env, -1, |env| {
        if callback.is_null() {
            return ok(qwen_session_generate(
                session(s),
                max_tokens,
                None,
                null_mut(),
            ));
        }
        let mut ctx = CallbackCtx {
            env,
            callback: &callback,
            failed: false,
        };
        let rc = qwen_session_generate(
            session(s),
            max_tokens,
            Some(java_callback),
            &mut ctx as *mut CallbackCtx as *mut c_void,
        );
        let failed = ctx.failed;
        if failed && ctx.env.exception_check()? {
            return Err(Fail::Pending);
        }
        ok(rc)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_nextToken(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) -> jint {
    call(&mut env, -1, |_| {
        let mut tok = -1;
        match ok(qwen_session_next_token(session(s), &mut tok))? {
            QWEN_DONE => Ok(-1),
            _ => Ok(tok),
        }
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_lastPiece(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) -> jstring {
    call(&mut env, null_mut(), |env| {
        let p = text(|buf, cap| qwen_session_last_piece(session(s), buf, cap))?;
        Ok(env.new_string(p)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_finishReason(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) -> jint {
    call(&mut env, -1, |_| ok(qwen_session_finish_reason(session(s))))
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_historyLength(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) -> jint {
    call(&mut env, -1, |_| ok(qwen_session_history_len(session(s))))
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_nCtx(mut env: JNIEnv, _c: JClass, s: jlong) -> jint {
    call(&mut env, -1, |_| ok(qwen_session_n_ctx(session(s))))
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_abort(mut env: JNIEnv, _c: JClass, s: jlong) {
    call(&mut env, (), |_| {
        ok(qwen_session_abort(session(s))).map(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_reset(mut env: JNIEnv, _c: JClass, s: jlong) {
    call(&mut env, (), |_| {
        ok(qwen_session_reset(session(s))).map(|_| ())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_tokens(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) -> jintArray {
    call(&mut env, null_mut(), |env| {
        let n = ok(qwen_session_tokens(session(s), null_mut(), 0))?;
        let mut v = vec![0i32; n as usize];
        let n = ok(qwen_session_tokens(session(s), v.as_mut_ptr(), v.len()))?;
        v.truncate(n as usize);
        new_int_array(env, &v)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_logits(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) -> jfloatArray {
    call(&mut env, null_mut(), |env| {
        let n = ok(qwen_session_logits(session(s), null_mut(), 0))?;
        let mut v = vec![0f32; n as usize];
        ok(qwen_session_logits(session(s), v.as_mut_ptr(), v.len()))?;
        let a: JFloatArray = env.new_float_array(n)?;
        env.set_float_array_region(&a, 0, &v)?;
        Ok(a.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_perplexity(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    ids: JIntArray,
) -> jdouble {
    call(&mut env, f64::NAN, |env| {
        let ids = int_array(env, &ids)?;
        let mut ppl = 0.0;
        ok(qwen_session_perplexity(
            session(s),
            ids.as_ptr(),
            ids.len(),
            &mut ppl,
        ))?;
        Ok(ppl)
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_saveState(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
) -> jbyteArray {
    call(&mut env, null_mut(), |env| {
        let n = ok(qwen_session_save_state(session(s), null_mut(), 0))?;
        let mut v = vec![0u8; n as usize];
        ok(qwen_session_save_state(session(s), v.as_mut_ptr(), v.len()))?;
        Ok(env.byte_array_from_slice(&v)?.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_io_qwen_QwenNative_loadState(
    mut env: JNIEnv,
    _c: JClass,
    s: jlong,
    state: JByteArray,
) {
    call(&mut env, (), |env| {
        if state.is_null() {
            return Err(Fail::Throw(
                QWEN_ERR_INVALID_ARGUMENT,
                "state is null".into(),
            ));
        }
        let v = env.convert_byte_array(&state)?;
        ok(qwen_session_load_state(session(s), v.as_ptr(), v.len())).map(|_| ())
    })
}
