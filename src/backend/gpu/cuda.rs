//! [`GpuApi`] on CUDA through cudarc's thin driver and NVRTC bindings, both loaded at run time
//! (`dynamic-loading`): without libcuda / libnvrtc the backend reports which is missing.

use super::{DevPtr, GpuApi, Handle};
use crate::backend::layout::Launch;
use crate::backend::BackendKind;
use crate::error::{Error, Result};
use cudarc::driver::{result as drv, sys as dsys};
use cudarc::nvrtc::{result as rtc, sys as rsys};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Mutex, OnceLock};

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Backend(format!("cuda: {what}: {e:?}"))
}

/// Whether libnvrtc can be loaded (without panicking, unlike cudarc's first call).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { rsys::is_culib_present() }
}

/// Whether libcuda (the driver) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { dsys::is_culib_present() }
}

/// Compiles one program with NVRTC for `arch` (`compute_80`, `sm_90`, ...) and returns its PTX,
/// or the compiler's log as the error. Needs libnvrtc, not a device.
pub fn compile_ptx(name: &str, src: &str, arch: &str) -> Result<String> {
    if !nvrtc_present() {
        return Err(Error::Backend(
            "cuda: libnvrtc.so not found (install the CUDA runtime compiler, or put its directory on LD_LIBRARY_PATH)".into(),
        ));
    }
    let csrc = CString::new(src).map_err(|e| err("kernel source", e))?;
    let cname = CString::new(name).map_err(|e| err("kernel name", e))?;
    let prog =
        rtc::create_program(&csrc, Some(&cname)).map_err(|e| err("nvrtcCreateProgram", e))?;
    let opts = [
        format!("--gpu-architecture={arch}"),
        "--std=c++14".to_string(),
    ];
    // SAFETY: prog was just created and is destroyed once below.
    let compiled = unsafe { rtc::compile_program(prog, &opts) };
    let result = match compiled {
        Ok(()) => {
            // SAFETY: as above.
            unsafe { rtc::get_ptx(prog) }
                .map(|p| c_chars_to_string(&p))
                .map_err(|e| err("nvrtcGetPTX", e))
        }
        Err(e) => {
            // SAFETY: as above.
            let log = unsafe { rtc::get_program_log(prog) }
                .map(|l| c_chars_to_string(&l))
                .unwrap_or_default();
            Err(Error::Backend(format!(
                "cuda: NVRTC failed to compile {name} for {arch} ({e:?}):\n{log}"
            )))
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { rtc::destroy_program(prog) };
    result
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// PTX per (architecture, source), compiled once per process.
fn ptx_cache() -> &'static Mutex<HashMap<(String, String), CString>> {
    static CACHE: OnceLock<Mutex<HashMap<(String, String), CString>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

pub struct Cuda {
    dev: dsys::CUdevice,
    ctx: dsys::CUcontext,
    /// Every launch and copy goes here: graphs are recorded from a stream, never from the
    /// legacy null stream. Non-blocking, so another thread's use of the null stream (another
    /// backend in the process) neither waits for it nor breaks a recording in progress.
    stream: dsys::CUstream,
    name: String,
    arch: String,
}

impl Cuda {
    fn make_current(&self) -> Result<()> {
        // SAFETY: ctx is the retained primary context of dev.
        unsafe { drv::ctx::set_current(self.ctx) }.map_err(|e| err("cuCtxSetCurrent", e))
    }
}

// SAFETY: the primary context is a process-wide object usable from any thread once made
// current there; the backend calls `bind_thread` (cuCtxSetCurrent) before using it on a thread.
unsafe impl Send for Cuda {}

impl Drop for Cuda {
    fn drop(&mut self) {
        let _ = self.make_current();
        // SAFETY: created in open, destroyed once; then the context retained once in open.
        unsafe {
            let _ = drv::stream::destroy(self.stream);
            let _ = drv::primary_ctx::release(self.dev);
        }
    }
}

impl GpuApi for Cuda {
    const KIND: BackendKind = BackendKind::Cuda;
    type Module = Handle<dsys::CUmodule>;
    type Function = Handle<dsys::CUfunction>;
    type Graph = Handle<dsys::CUgraphExec>;

    fn open(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::Backend(
                "cuda: libcuda.so not found (no NVIDIA driver on this machine?)".into(),
            ));
        }
        if !nvrtc_present() {
            return Err(Error::Backend(
                "cuda: libnvrtc.so not found (the kernels are compiled at run time with NVRTC)"
                    .into(),
            ));
        }
        drv::init().map_err(|e| err("cuInit", e))?;
        let n = drv::device::get_count().map_err(|e| err("cuDeviceGetCount", e))?;
        if ordinal >= n.max(0) as usize {
            return Err(Error::Backend(format!(
                "cuda: no device {ordinal} ({n} device(s) present)"
            )));
        }
        let dev = drv::device::get(ordinal as i32).map_err(|e| err("cuDeviceGet", e))?;
        let attr = |a| {
            // SAFETY: dev came from cuDeviceGet.
            unsafe { drv::device::get_attribute(dev, a) }
                .map_err(|e| err("cuDeviceGetAttribute", e))
        };
        let major = attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let name = drv::device::get_name(dev).unwrap_or_else(|_| "?".into());
        // SAFETY: dev is valid; released in Drop.
        let ctx = unsafe { drv::primary_ctx::retain(dev) }
            .map_err(|e| err("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: the context just retained; released if the stream cannot be made.
        let stream = unsafe {
            drv::ctx::set_current(ctx)
                .and_then(|()| drv::stream::create(drv::stream::StreamKind::NonBlocking))
        };
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: retained above.
                let _ = unsafe { drv::primary_ctx::release(dev) };
                return Err(err("cuStreamCreate", e));
            }
        };
        Ok(Cuda {
            dev,
            ctx,
            stream,
            name: format!("{ordinal} {name}"),
            arch: format!("compute_{major}{minor}"),
        })
    }

    fn device_name(&self) -> String {
        format!("{} ({})", self.name, self.arch.replace("compute_", "sm_"))
    }

    fn bind_thread(&self) -> Result<()> {
        self.make_current()
    }

    fn compile(&self, name: &str, src: &str) -> Result<Self::Module> {
        let key = (self.arch.clone(), src.to_string());
        let cached = ptx_cache().lock().ok().and_then(|c| c.get(&key).cloned());
        let ptx = match cached {
            Some(p) => p,
            None => {
                let p =
                    CString::new(compile_ptx(name, src, &self.arch)?).map_err(|e| err("PTX", e))?;
                if let Ok(mut c) = ptx_cache().lock() {
                    c.insert(key, p.clone());
                }
                p
            }
        };
        self.make_current()?;
        // SAFETY: a NUL-terminated PTX image.
        unsafe { drv::module::load_data(ptx.as_ptr() as *const c_void) }
            .map(Handle)
            .map_err(|e| {
                err(
                    &format!("cuModuleLoadData({name}) (driver older than NVRTC?)"),
                    e,
                )
            })
    }

    fn function(&self, m: &Self::Module, name: &str) -> Result<Self::Function> {
        let cname = CString::new(name).map_err(|e| err("kernel name", e))?;
        // SAFETY: m is a loaded module kept alive by the backend.
        unsafe { drv::module::get_function(m.0, cname) }
            .map(Handle)
            .map_err(|e| err(name, e))
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        // SAFETY: plain allocation in the current context.
        unsafe { drv::malloc_sync(bytes) }
            .map_err(|e| err(&format!("cuMemAlloc({bytes} bytes)"), e))
    }

    unsafe fn free(&self, p: DevPtr) {
        // SAFETY: the caller guarantees p came from alloc and is freed once.
        let _ = unsafe { drv::free_sync(p) };
    }

    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        // SAFETY: the caller guarantees the range lies in one allocation; the stream is
        // synchronized before returning, so `src` may be reused at once.
        unsafe {
            drv::memcpy_htod_async(dst, src, self.stream)
                .and_then(|()| drv::stream::synchronize(self.stream))
        }
        .map_err(|e| err("cuMemcpyHtoDAsync", e))
    }

    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        // SAFETY: the caller guarantees the range lies in one allocation and keeps `src`
        // until the stream is next synchronized.
        unsafe { drv::memcpy_htod_async(dst, src, self.stream) }
            .map_err(|e| err("cuMemcpyHtoDAsync", e))
    }

    unsafe fn download(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        // SAFETY: as in upload; ordered after every launch on the stream.
        unsafe {
            drv::memcpy_dtoh_async(dst, src, self.stream)
                .and_then(|()| drv::stream::synchronize(self.stream))
        }
        .map_err(|e| err("cuMemcpyDtoHAsync", e))
    }

    unsafe fn launch(&self, f: Self::Function, l: Launch, args: &mut [*mut c_void]) -> Result<()> {
        // SAFETY: the caller guarantees args match the kernel's parameters.
        unsafe { drv::launch_kernel(f.0, l.grid, l.block, 0, self.stream, args) }
            .map_err(|e| err("cuLaunchKernel", e))
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: the backend's live stream.
        unsafe { drv::stream::synchronize(self.stream) }.map_err(|e| err("cuStreamSynchronize", e))
    }

    fn begin_capture(&self) -> Result<bool> {
        // Thread-local mode: only this thread's unsafe calls (there are none while recording)
        // would break the capture; other sessions on other threads go on.
        let mode = dsys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        // SAFETY: the backend's live stream.
        unsafe { drv::stream::begin_capture(self.stream, mode) }
            .map_err(|e| err("cuStreamBeginCapture", e))?;
        Ok(true)
    }

    fn end_capture(&self) -> Result<Self::Graph> {
        // SAFETY: the stream is capturing (begin_capture succeeded); the graph is destroyed
        // once instantiated (the executable graph does not need it).
        unsafe {
            let graph =
                drv::stream::end_capture(self.stream).map_err(|e| err("cuStreamEndCapture", e))?;
            let exec = drv::graph::instantiate(graph, dsys::CUgraphInstantiate_flags(0));
            let _ = drv::graph::destroy(graph);
            exec.map(Handle).map_err(|e| err("cuGraphInstantiate", e))
        }
    }

    fn replay(&self, g: &Self::Graph) -> Result<()> {
        // SAFETY: an instantiated graph of this context, launched on its stream.
        unsafe { drv::graph::launch(g.0, self.stream) }.map_err(|e| err("cuGraphLaunch", e))
    }

    unsafe fn destroy_graph(&self, g: Self::Graph) {
        // SAFETY: the caller's contract.
        let _ = unsafe { drv::graph::exec_destroy(g.0) };
    }
}
