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
        // SAFETY: retained once in open.
        let _ = unsafe { drv::primary_ctx::release(self.dev) };
    }
}

impl GpuApi for Cuda {
    const KIND: BackendKind = BackendKind::Cuda;
    type Module = Handle<dsys::CUmodule>;
    type Function = Handle<dsys::CUfunction>;

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
        let me = Cuda {
            dev,
            ctx,
            name: format!("{ordinal} {name}"),
            arch: format!("compute_{major}{minor}"),
        };
        me.make_current()?;
        Ok(me)
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
        // SAFETY: the caller guarantees the range lies in one allocation.
        unsafe { drv::memcpy_htod_sync(dst, src) }.map_err(|e| err("cuMemcpyHtoD", e))
    }

    unsafe fn download(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        // SAFETY: the caller guarantees the range lies in one allocation.
        unsafe { drv::memcpy_dtoh_sync(dst, src) }.map_err(|e| err("cuMemcpyDtoH", e))
    }

    unsafe fn launch(&self, f: Self::Function, l: Launch, args: &mut [*mut c_void]) -> Result<()> {
        // SAFETY: the caller guarantees args match the kernel's parameters.
        unsafe { drv::launch_kernel(f.0, l.grid, l.block, 0, std::ptr::null_mut(), args) }
            .map_err(|e| err("cuLaunchKernel", e))
    }

    fn synchronize(&self) -> Result<()> {
        drv::ctx::synchronize().map_err(|e| err("cuCtxSynchronize", e))
    }
}
