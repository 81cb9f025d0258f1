//! [`GpuApi`] on AMD (and Hygon DCU) GPUs: the HIP runtime's module API and hiprtc, opened with
//! libloading at run time, so building needs no ROCm. It mirrors `cuda.rs` call for call; the
//! kernels are the same sources, compiled by hiprtc for the current device.

use super::{DevPtr, GpuApi, Handle};
use crate::backend::layout::Launch;
use crate::backend::BackendKind;
use crate::error::{Error, Result};
use libloading::Library;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock};

type HipError = c_int;
type Ptr = *mut c_void;

/// The HIP runtime and hiprtc entry points this backend calls.
struct Syms {
    init: unsafe extern "C" fn(c_uint) -> HipError,
    get_device_count: unsafe extern "C" fn(*mut c_int) -> HipError,
    set_device: unsafe extern "C" fn(c_int) -> HipError,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> HipError,
    get_error_string: unsafe extern "C" fn(HipError) -> *const c_char,
    malloc: unsafe extern "C" fn(*mut Ptr, usize) -> HipError,
    free: unsafe extern "C" fn(Ptr) -> HipError,
    stream_create_with_flags: unsafe extern "C" fn(*mut Ptr, c_uint) -> HipError,
    stream_destroy: unsafe extern "C" fn(Ptr) -> HipError,
    stream_synchronize: unsafe extern "C" fn(Ptr) -> HipError,
    memcpy_htod_async: unsafe extern "C" fn(Ptr, *const c_void, usize, Ptr) -> HipError,
    memcpy_dtoh_async: unsafe extern "C" fn(*mut c_void, Ptr, usize, Ptr) -> HipError,
    module_load_data: unsafe extern "C" fn(*mut Ptr, *const c_void) -> HipError,
    module_get_function: unsafe extern "C" fn(*mut Ptr, Ptr, *const c_char) -> HipError,
    #[allow(clippy::type_complexity)]
    module_launch_kernel: unsafe extern "C" fn(
        Ptr,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Ptr,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> HipError,
    rtc_create_program: unsafe extern "C" fn(
        *mut Ptr,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    rtc_compile_program: unsafe extern "C" fn(Ptr, c_int, *const *const c_char) -> c_int,
    rtc_get_program_log_size: unsafe extern "C" fn(Ptr, *mut usize) -> c_int,
    rtc_get_program_log: unsafe extern "C" fn(Ptr, *mut c_char) -> c_int,
    rtc_get_code_size: unsafe extern "C" fn(Ptr, *mut usize) -> c_int,
    rtc_get_code: unsafe extern "C" fn(Ptr, *mut c_char) -> c_int,
    rtc_destroy_program: unsafe extern "C" fn(*mut Ptr) -> c_int,
    /// Stream capture and graphs: absent from older runtimes (then launches run directly).
    graph: Option<GraphSyms>,
    _hip: Library,
    _rtc: Library,
}

struct GraphSyms {
    begin_capture: unsafe extern "C" fn(Ptr, c_int) -> HipError,
    end_capture: unsafe extern "C" fn(Ptr, *mut Ptr) -> HipError,
    instantiate: unsafe extern "C" fn(*mut Ptr, Ptr, *mut Ptr, *mut c_char, usize) -> HipError,
    launch: unsafe extern "C" fn(Ptr, Ptr) -> HipError,
    exec_destroy: unsafe extern "C" fn(Ptr) -> HipError,
    destroy: unsafe extern "C" fn(Ptr) -> HipError,
}

/// `hipStreamNonBlocking`, `hipStreamCaptureModeThreadLocal` (as CUDA's values).
const STREAM_NON_BLOCKING: c_uint = 1;
const CAPTURE_MODE_THREAD_LOCAL: c_int = 1;

const HIP_LIBS: [&str; 3] = ["libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"];
const HIPRTC_LIBS: [&str; 3] = ["libhiprtc.so", "libhiprtc.so.6", "libhiprtc.so.5"];

fn open_first(names: &[&str]) -> Option<Library> {
    // SAFETY: loading the vendor's runtime library runs its initializers, as linking would.
    names.iter().find_map(|n| unsafe { Library::new(*n) }.ok())
}

fn syms() -> Result<&'static Syms> {
    static SYMS: OnceLock<std::result::Result<Syms, String>> = OnceLock::new();
    SYMS.get_or_init(load)
        .as_ref()
        .map_err(|e| Error::Backend(format!("rocm: {e}")))
}

fn load() -> std::result::Result<Syms, String> {
    let hip = open_first(&HIP_LIBS)
        .ok_or("libamdhip64.so not found (no ROCm / HIP runtime on this machine?)")?;
    let rtc = open_first(&HIPRTC_LIBS)
        .ok_or("libhiprtc.so not found (the kernels are compiled at run time with hiprtc)")?;
    macro_rules! sym {
        ($lib:expr, $name:literal) => {
            // SAFETY: the symbol has the C signature of the field it is stored in (HIP's
            // documented API); the library outlives the pointer (kept in `Syms`).
            *unsafe { $lib.get($name) }
                .map_err(|e| format!("{}: {e}", String::from_utf8_lossy($name)))?
        };
    }
    Ok(Syms {
        init: sym!(hip, b"hipInit"),
        get_device_count: sym!(hip, b"hipGetDeviceCount"),
        set_device: sym!(hip, b"hipSetDevice"),
        device_get_name: sym!(hip, b"hipDeviceGetName"),
        get_error_string: sym!(hip, b"hipGetErrorString"),
        malloc: sym!(hip, b"hipMalloc"),
        free: sym!(hip, b"hipFree"),
        stream_create_with_flags: sym!(hip, b"hipStreamCreateWithFlags"),
        stream_destroy: sym!(hip, b"hipStreamDestroy"),
        stream_synchronize: sym!(hip, b"hipStreamSynchronize"),
        memcpy_htod_async: sym!(hip, b"hipMemcpyHtoDAsync"),
        memcpy_dtoh_async: sym!(hip, b"hipMemcpyDtoHAsync"),
        module_load_data: sym!(hip, b"hipModuleLoadData"),
        module_get_function: sym!(hip, b"hipModuleGetFunction"),
        module_launch_kernel: sym!(hip, b"hipModuleLaunchKernel"),
        rtc_create_program: sym!(rtc, b"hiprtcCreateProgram"),
        rtc_compile_program: sym!(rtc, b"hiprtcCompileProgram"),
        rtc_get_program_log_size: sym!(rtc, b"hiprtcGetProgramLogSize"),
        rtc_get_program_log: sym!(rtc, b"hiprtcGetProgramLog"),
        rtc_get_code_size: sym!(rtc, b"hiprtcGetCodeSize"),
        rtc_get_code: sym!(rtc, b"hiprtcGetCode"),
        rtc_destroy_program: sym!(rtc, b"hiprtcDestroyProgram"),
        graph: (|| -> std::result::Result<GraphSyms, String> {
            Ok(GraphSyms {
                begin_capture: sym!(hip, b"hipStreamBeginCapture"),
                end_capture: sym!(hip, b"hipStreamEndCapture"),
                instantiate: sym!(hip, b"hipGraphInstantiate"),
                launch: sym!(hip, b"hipGraphLaunch"),
                exec_destroy: sym!(hip, b"hipGraphExecDestroy"),
                destroy: sym!(hip, b"hipGraphDestroy"),
            })
        })()
        .ok(),
        _hip: hip,
        _rtc: rtc,
    })
}

/// Code objects per (device, source), compiled once per process.
type CodeCache = Mutex<HashMap<(usize, String), Vec<u8>>>;

fn code_cache() -> &'static CodeCache {
    static CACHE: OnceLock<CodeCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

pub struct Hip {
    s: &'static Syms,
    ordinal: usize,
    name: String,
    /// Every launch and copy goes here (as in cuda.rs: non-blocking, recordable).
    stream: Handle<Ptr>,
}

impl Drop for Hip {
    fn drop(&mut self) {
        if !self.stream.0.is_null() {
            // SAFETY: created in open, destroyed once, on the device made current first.
            unsafe {
                (self.s.set_device)(self.ordinal as c_int);
                (self.s.stream_destroy)(self.stream.0);
            }
        }
    }
}

impl Hip {
    /// The graph entry points (present whenever `begin_capture` recorded).
    fn graphs(&self) -> Result<&GraphSyms> {
        self.s
            .graph
            .as_ref()
            .ok_or_else(|| Error::Backend("rocm: this HIP runtime has no graph API".into()))
    }

    fn check(&self, what: &str, e: HipError) -> Result<()> {
        if e == 0 {
            return Ok(());
        }
        // SAFETY: hipGetErrorString returns a static string for any code.
        let msg = unsafe { CStr::from_ptr((self.s.get_error_string)(e)) }.to_string_lossy();
        Err(Error::Backend(format!("rocm: {what}: {msg} ({e})")))
    }

    fn compile_code(&self, name: &str, src: &str) -> Result<Vec<u8>> {
        let s = self.s;
        let csrc = CString::new(src).map_err(|e| Error::Backend(format!("rocm: {e}")))?;
        let cname = CString::new(name).map_err(|e| Error::Backend(format!("rocm: {e}")))?;
        let mut prog: Ptr = std::ptr::null_mut();
        // SAFETY: valid C strings; no headers.
        let r = unsafe {
            (s.rtc_create_program)(
                &mut prog,
                csrc.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(Error::Backend(format!(
                "rocm: hiprtcCreateProgram failed ({r})"
            )));
        }
        // The current device's architecture unless QWEN_HIP_ARCH names one (e.g. gfx90a).
        let mut opts = vec![CString::new("-O3").expect("no NUL")];
        if let Ok(arch) = std::env::var("QWEN_HIP_ARCH") {
            opts.push(
                CString::new(format!("--offload-arch={arch}"))
                    .map_err(|e| Error::Backend(format!("rocm: {e}")))?,
            );
        }
        let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        // SAFETY: prog was created above; options are valid C strings.
        let r = unsafe { (s.rtc_compile_program)(prog, ptrs.len() as c_int, ptrs.as_ptr()) };
        let result = if r != 0 {
            let mut n = 0usize;
            let mut log = Vec::new();
            // SAFETY: sized by hiprtc itself.
            unsafe {
                if (s.rtc_get_program_log_size)(prog, &mut n) == 0 && n > 0 {
                    log = vec![0u8; n];
                    (s.rtc_get_program_log)(prog, log.as_mut_ptr() as *mut c_char);
                }
            }
            let log = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string();
            Err(Error::Backend(format!(
                "rocm: hiprtc failed to compile {name} ({r}):\n{log}"
            )))
        } else {
            let mut n = 0usize;
            // SAFETY: sized by hiprtc itself.
            unsafe {
                if (s.rtc_get_code_size)(prog, &mut n) != 0 {
                    n = 0;
                }
                let mut code = vec![0u8; n];
                if n > 0 && (s.rtc_get_code)(prog, code.as_mut_ptr() as *mut c_char) == 0 {
                    Ok(code)
                } else {
                    Err(Error::Backend(format!(
                        "rocm: hiprtcGetCode({name}) failed"
                    )))
                }
            }
        };
        // SAFETY: created above, destroyed once.
        unsafe { (s.rtc_destroy_program)(&mut prog) };
        result
    }
}

impl GpuApi for Hip {
    const KIND: BackendKind = BackendKind::Rocm;
    type Module = Handle<Ptr>;
    type Function = Handle<Ptr>;
    type Graph = Handle<Ptr>;

    fn open(ordinal: usize) -> Result<Self> {
        let s = syms()?;
        let mut me = Hip {
            s,
            ordinal,
            name: String::new(),
            stream: Handle(std::ptr::null_mut()),
        };
        // SAFETY: plain C calls with valid out-pointers.
        unsafe {
            me.check("hipInit", (s.init)(0))?;
            let mut n: c_int = 0;
            me.check("hipGetDeviceCount", (s.get_device_count)(&mut n))?;
            if ordinal >= n.max(0) as usize {
                return Err(Error::Backend(format!(
                    "rocm: no device {ordinal} ({n} device(s) present)"
                )));
            }
            me.check("hipSetDevice", (s.set_device)(ordinal as c_int))?;
            let mut buf = [0 as c_char; 256];
            let name =
                if (s.device_get_name)(buf.as_mut_ptr(), buf.len() as c_int, ordinal as c_int) == 0
                {
                    CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
                } else {
                    "?".into()
                };
            me.name = format!("{ordinal} {name}");
            let mut stream: Ptr = std::ptr::null_mut();
            me.check(
                "hipStreamCreateWithFlags",
                (s.stream_create_with_flags)(&mut stream, STREAM_NON_BLOCKING),
            )?;
            me.stream = Handle(stream);
            Ok(me)
        }
    }

    fn device_name(&self) -> String {
        self.name.clone()
    }

    fn bind_thread(&self) -> Result<()> {
        // SAFETY: a plain C call; the ordinal was checked in `open`.
        self.check("hipSetDevice", unsafe {
            (self.s.set_device)(self.ordinal as c_int)
        })
    }

    fn compile(&self, name: &str, src: &str) -> Result<Self::Module> {
        let key = (self.ordinal, src.to_string());
        let cached = code_cache().lock().ok().and_then(|c| c.get(&key).cloned());
        let code = match cached {
            Some(c) => c,
            None => {
                let c = self.compile_code(name, src)?;
                if let Ok(mut cache) = code_cache().lock() {
                    cache.insert(key, c.clone());
                }
                c
            }
        };
        let mut m: Ptr = std::ptr::null_mut();
        // SAFETY: a code object produced by hiprtc.
        self.check("hipModuleLoadData", unsafe {
            (self.s.module_load_data)(&mut m, code.as_ptr() as *const c_void)
        })?;
        Ok(Handle(m))
    }

    fn function(&self, m: &Self::Module, name: &str) -> Result<Self::Function> {
        let cname = CString::new(name).map_err(|e| Error::Backend(format!("rocm: {e}")))?;
        let mut f: Ptr = std::ptr::null_mut();
        // SAFETY: m is a loaded module kept alive by the backend.
        self.check(name, unsafe {
            (self.s.module_get_function)(&mut f, m.0, cname.as_ptr())
        })?;
        Ok(Handle(f))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let mut p: Ptr = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check(&format!("hipMalloc({bytes} bytes)"), unsafe {
            (self.s.malloc)(&mut p, bytes)
        })?;
        Ok(p as DevPtr)
    }

    unsafe fn free(&self, p: DevPtr) {
        // SAFETY: the caller guarantees p came from alloc and is freed once.
        unsafe { (self.s.free)(p as Ptr) };
    }

    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        let st = self.stream.0;
        // SAFETY: the caller guarantees the range lies in one allocation; the stream is
        // synchronized before returning, so `src` may be reused at once.
        self.check("hipMemcpyHtoDAsync", unsafe {
            (self.s.memcpy_htod_async)(dst as Ptr, src.as_ptr() as *const c_void, src.len(), st)
        })?;
        self.synchronize()
    }

    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        let st = self.stream.0;
        // SAFETY: the caller guarantees the range lies in one allocation and keeps `src`
        // until the stream is next synchronized.
        self.check("hipMemcpyHtoDAsync", unsafe {
            (self.s.memcpy_htod_async)(dst as Ptr, src.as_ptr() as *const c_void, src.len(), st)
        })
    }

    unsafe fn download(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        let st = self.stream.0;
        // SAFETY: as in upload; ordered after every launch on the stream.
        self.check("hipMemcpyDtoHAsync", unsafe {
            (self.s.memcpy_dtoh_async)(dst.as_mut_ptr() as *mut c_void, src as Ptr, dst.len(), st)
        })?;
        self.synchronize()
    }

    unsafe fn launch(&self, f: Self::Function, l: Launch, args: &mut [*mut c_void]) -> Result<()> {
        let (g, b) = (l.grid, l.block);
        // SAFETY: the caller guarantees args match the kernel's parameters.
        let r = unsafe {
            (self.s.module_launch_kernel)(
                f.0,
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                0,
                self.stream.0,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        self.check("hipModuleLaunchKernel", r)
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: the backend's live stream.
        self.check("hipStreamSynchronize", unsafe {
            (self.s.stream_synchronize)(self.stream.0)
        })
    }

    fn begin_capture(&self) -> Result<bool> {
        let Some(g) = &self.s.graph else {
            return Ok(false);
        };
        // SAFETY: the backend's live stream; thread-local mode as in cuda.rs.
        self.check("hipStreamBeginCapture", unsafe {
            (g.begin_capture)(self.stream.0, CAPTURE_MODE_THREAD_LOCAL)
        })?;
        Ok(true)
    }

    fn end_capture(&self) -> Result<Self::Graph> {
        let g = self.graphs()?;
        let (mut graph, mut exec): (Ptr, Ptr) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: the stream is capturing; the graph is destroyed once instantiated.
        unsafe {
            self.check(
                "hipStreamEndCapture",
                (g.end_capture)(self.stream.0, &mut graph),
            )?;
            let r = (g.instantiate)(
                &mut exec,
                graph,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
            (g.destroy)(graph);
            self.check("hipGraphInstantiate", r)?;
        }
        Ok(Handle(exec))
    }

    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        let g = self.graphs()?;
        // SAFETY: an instantiated graph, launched on the backend's stream.
        self.check("hipGraphLaunch", unsafe {
            (g.launch)(graph.0, self.stream.0)
        })
    }

    unsafe fn destroy_graph(&self, graph: Self::Graph) {
        if let Some(g) = &self.s.graph {
            // SAFETY: the caller's contract.
            unsafe { (g.exec_destroy)(graph.0) };
        }
    }
}
