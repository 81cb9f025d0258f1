//! `HostSimt`: the GPU driver interface ([`GpuApi`]) on the host, so `GpuBackend` — its Rust
//! driver code and the kernels of `kernels/` — runs on machines without a GPU.
//!
//! "Compiling" a kernel program builds it with the system C++ compiler as a shared library,
//! with `simt_host.h` (the CUDA built-ins: threads as fibers, `__syncthreads` as a barrier
//! between them) and one launch entry point per kernel; launches run synchronously on the
//! calling thread (the emulator's state is per thread: tests launch in parallel). Device memory is host memory, each allocation ending at an inaccessible
//! guard page (an overrun of the end faults). Besides what a GPU checks, a launch fails on a
//! wrong argument count, a pointer argument outside every allocation, and a barrier some
//! threads of a block skip; uploads and downloads must lie inside one allocation.
//!
//! It emulates the semantics, not the speed: results are what the kernels compute, in f32, with
//! no fused multiply-adds (`-ffp-contract=off`), so they can differ from a GPU's in the last
//! bits; parity tests keep their tolerances.
#![allow(dead_code)]

use qwen::backend::gpu::{DevPtr, GpuApi};
use qwen::backend::layout::Launch;
use qwen::backend::BackendKind;
use qwen::{Error, Result};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The header every emulated program starts with.
const SIMT_HEADER: &str = include_str!("simt_host.h");

/// One compilation at a time (the cache directory is shared).
static COMPILE: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy)]
struct Alloc {
    /// Start of the mapping (pages), its length, and the bytes handed out (ending at the
    /// guard page).
    map: usize,
    map_len: usize,
    bytes: usize,
}

pub struct HostSimt {
    allocs: Mutex<BTreeMap<u64, Alloc>>,
    launches: AtomicUsize,
    /// While recording (`begin_capture`): the launches so far, not run (as on a GPU).
    recording: Mutex<Option<Vec<Recorded>>>,
    recordings: AtomicUsize,
    replays: AtomicUsize,
    /// Queued uploads (`upload_async`), copied only when the device would have run them: at
    /// the next launch, copy or synchronize. A backend that rewrote a source before then would
    /// send the new bytes, as a GPU's copy engine would.
    pending: Mutex<Vec<PendingUpload>>,
}

struct PendingUpload {
    dst: DevPtr,
    src: *const u8,
    len: usize,
}

// SAFETY: the source pointer is only read under the `upload_async` contract (alive and
// unchanged until the next synchronize or download), whichever thread flushes it.
unsafe impl Send for PendingUpload {}

/// One recorded launch: the kernel, its geometry and its argument values (each in the 64-bit
/// slot `launch_args` gives it), copied as a driver copies them when recording.
pub struct Recorded {
    f: usize,
    l: Launch,
    args: Vec<u64>,
}

impl HostSimt {
    /// Kernels run on this device so far (replayed ones included).
    pub fn launches(&self) -> usize {
        self.launches.load(Ordering::Relaxed)
    }

    /// Recordings made (`end_capture`) and replayed so far.
    pub fn graphs(&self) -> (usize, usize) {
        (
            self.recordings.load(Ordering::Relaxed),
            self.replays.load(Ordering::Relaxed),
        )
    }

    /// Performs the queued uploads, in order.
    fn flush(&self) {
        for u in self.pending.lock().unwrap().drain(..) {
            // SAFETY: range checked when queued; the source is alive and unchanged under the
            // `upload_async` contract (this is the next synchronizing call at the latest).
            unsafe { std::ptr::copy_nonoverlapping(u.src, u.dst as *mut u8, u.len) };
        }
    }

    /// Runs one kernel now.
    ///
    /// # Safety
    /// As [`GpuApi::launch`].
    unsafe fn run(&self, f: usize, l: Launch, args: &mut [*mut c_void]) -> Result<()> {
        self.flush();
        let geom = [
            l.grid.0, l.grid.1, l.grid.2, l.block.0, l.block.1, l.block.2,
        ];
        self.launches.fetch_add(1, Ordering::Relaxed);
        let mut msg = [0 as c_char; 512];
        // SAFETY: `f` is a `simt_launch_*` entry point of a loaded module; `args` follow the
        // caller's contract (see `GpuApi::launch`).
        let rc = unsafe {
            let entry: Entry = std::mem::transmute::<usize, Entry>(f);
            entry(
                args.as_mut_ptr(),
                args.len() as c_int,
                geom.as_ptr(),
                pointer_ok,
                self as *const HostSimt as *const c_void,
                msg.as_mut_ptr(),
                msg.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the entry point wrote a NUL-terminated message (snprintf).
            let s = unsafe { std::ffi::CStr::from_ptr(msg.as_ptr()) };
            return Err(err(format!("launch failed: {}", s.to_string_lossy())));
        }
        Ok(())
    }
}

pub struct Module {
    handle: usize,
}

// SAFETY: a dlopen handle is process-wide; the module is never unloaded (kernels may be
// launched until the process exits).
unsafe impl Send for Module {}

type Entry = unsafe extern "C" fn(
    args: *mut *mut c_void,
    nargs: c_int,
    geom: *const u32,
    ok: extern "C" fn(*const c_void, *const c_void) -> c_int,
    ctx: *const c_void,
    err: *mut c_char,
    errlen: usize,
) -> c_int;

fn err(msg: impl Into<String>) -> Error {
    Error::Backend(format!("cuda (host emulator): {}", msg.into()))
}

const PAGE: usize = 4096;

impl HostSimt {
    fn find(&self, p: u64, len: usize) -> Option<Alloc> {
        let allocs = self.allocs.lock().unwrap();
        let (&start, a) = allocs.range(..=p).next_back()?;
        let end = start + a.bytes as u64;
        (p >= start && p.checked_add(len as u64)? <= end).then_some(*a)
    }

    /// Whether `p` lies inside some allocation (a kernel's pointer argument).
    fn contains(&self, p: u64) -> bool {
        self.find(p, 0).is_some_and(|a| a.bytes > 0)
    }

    fn check_range(&self, p: u64, len: usize, what: &str) -> Result<()> {
        match self.find(p, len) {
            Some(_) => Ok(()),
            None => Err(err(format!(
                "{what} of {len} bytes at {p:#x} is not inside one allocation"
            ))),
        }
    }
}

extern "C" fn pointer_ok(ctx: *const c_void, p: *const c_void) -> c_int {
    // SAFETY: `ctx` is the `HostSimt` that made the launch, alive for its duration.
    let api = unsafe { &*(ctx as *const HostSimt) };
    api.contains(p as u64) as c_int
}

/// Names of the kernels (`extern "C" __global__ void NAME(`) in a program, after
/// preprocessing (the weight kernels come from a macro).
fn kernel_names(cxx: &str, src: &str, dir: &Path) -> Result<Vec<String>> {
    let file = dir.join(format!("names-{}.cpp", std::process::id()));
    std::fs::write(&file, src).map_err(|e| err(e.to_string()))?;
    let out = Command::new(cxx)
        .args(["-E", "-P", "-DQWEN_SIMT_HOST", "-x", "c++"])
        .arg(&file)
        .output()
        .map_err(|e| err(format!("{cxx}: {e}")))?;
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let text = String::from_utf8_lossy(&out.stdout).replace('(', " ( ");
    let toks: Vec<&str> = text.split_whitespace().collect();
    let mut names = Vec::new();
    for w in toks.windows(5) {
        if w[..4] == ["extern", "\"C\"", "__global__", "void"] {
            names.push(w[4].to_string());
        }
    }
    Ok(names)
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gpu-emulator")
}

impl GpuApi for HostSimt {
    const KIND: BackendKind = BackendKind::Cuda;
    type Module = Module;
    type Function = usize;
    type Graph = Vec<Recorded>;

    fn open(ordinal: usize) -> Result<Self> {
        if ordinal != 0 {
            return Err(err(format!("no device {ordinal}: 1 device(s) present")));
        }
        Ok(HostSimt {
            allocs: Mutex::new(BTreeMap::new()),
            launches: Default::default(),
            recording: Mutex::new(None),
            recordings: Default::default(),
            replays: Default::default(),
            pending: Mutex::new(Vec::new()),
        })
    }

    fn device_name(&self) -> String {
        "host SIMT emulator".into()
    }

    fn bind_thread(&self) -> Result<()> {
        Ok(())
    }

    fn compile(&self, name: &str, src: &str) -> Result<Module> {
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let flags = [
            "-std=c++17",
            "-O2",
            "-fPIC",
            "-shared",
            "-ffp-contract=off",
            "-fno-strict-aliasing",
            "-w",
        ];
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (SIMT_HEADER, src, &cxx, flags).hash(&mut h);
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
        let stem = format!("{}-{:016x}", name.replace('.', "_"), h.finish());
        let lib = dir.join(format!("{stem}.so"));
        {
            let _guard = COMPILE.lock().unwrap_or_else(|e| e.into_inner());
            if !lib.exists() {
                let mut program = format!("#include \"{}\"\n", dir.join("simt_host.h").display());
                program.push_str(src);
                program.push('\n');
                for k in kernel_names(&cxx, src, &dir)? {
                    program.push_str(&format!("QWEN_SIMT_ENTRY({k})\n"));
                }
                std::fs::write(dir.join("simt_host.h"), SIMT_HEADER)
                    .map_err(|e| err(e.to_string()))?;
                let cpp = dir.join(format!("{stem}.cpp"));
                std::fs::write(&cpp, program).map_err(|e| err(e.to_string()))?;
                // Built under a unique name and renamed: another test process may load it.
                let tmp = dir.join(format!("{stem}.{}.tmp.so", std::process::id()));
                let out = Command::new(&cxx)
                    .args(flags)
                    .arg("-o")
                    .arg(&tmp)
                    .arg(&cpp)
                    .output()
                    .map_err(|e| err(format!("{cxx}: {e}")))?;
                if !out.status.success() {
                    return Err(err(format!(
                        "compiling {name}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                std::fs::rename(&tmp, &lib).map_err(|e| err(e.to_string()))?;
            }
        }
        let path = CString::new(lib.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a library this function built; its initializers only zero globals.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(err(format!("dlopen {}", lib.display())));
        }
        Ok(Module {
            handle: handle as usize,
        })
    }

    fn function(&self, m: &Module, name: &str) -> Result<usize> {
        let sym = CString::new(format!("simt_launch_{name}")).unwrap();
        // SAFETY: `m.handle` is a live dlopen handle.
        let f = unsafe { libc::dlsym(m.handle as *mut c_void, sym.as_ptr()) };
        if f.is_null() {
            return Err(err(format!("kernel {name} not in the program")));
        }
        Ok(f as usize)
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let used = bytes.div_ceil(16) * 16;
        let data_pages = used.div_ceil(PAGE).max(1);
        let map_len = (data_pages + 1) * PAGE;
        // SAFETY: a fresh anonymous mapping; its last page is made inaccessible.
        let map = unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if m == libc::MAP_FAILED {
                return Err(err(format!("out of memory allocating {bytes} bytes")));
            }
            libc::mprotect(
                (m as *mut u8).add(data_pages * PAGE) as *mut c_void,
                PAGE,
                libc::PROT_NONE,
            );
            m as usize
        };
        let ptr = (map + data_pages * PAGE - used) as u64;
        self.allocs.lock().unwrap().insert(
            ptr,
            Alloc {
                map,
                map_len,
                bytes,
            },
        );
        Ok(ptr)
    }

    unsafe fn free(&self, p: DevPtr) {
        if let Some(a) = self.allocs.lock().unwrap().remove(&p) {
            // SAFETY: the mapping made by `alloc`, no longer referenced.
            unsafe { libc::munmap(a.map as *mut c_void, a.map_len) };
        }
    }

    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.flush();
        self.check_range(dst, src.len(), "upload")?;
        // SAFETY: checked above to lie inside one live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.check_range(dst, src.len(), "upload")?;
        self.pending.lock().unwrap().push(PendingUpload {
            dst,
            src: src.as_ptr(),
            len: src.len(),
        });
        Ok(())
    }

    unsafe fn download(&self, dst: &mut [u8], src: DevPtr) -> Result<()> {
        self.flush();
        self.check_range(src, dst.len(), "download")?;
        // SAFETY: checked above to lie inside one live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn launch(&self, f: usize, l: Launch, args: &mut [*mut c_void]) -> Result<()> {
        if let Some(rec) = self.recording.lock().unwrap().as_mut() {
            let args = args
                .iter()
                // SAFETY: each argument points at its live 64-bit slot (`launch_args`).
                .map(|&p| unsafe { *(p as *const u64) })
                .collect();
            rec.push(Recorded { f, l, args });
            return Ok(());
        }
        // SAFETY: the caller's contract.
        unsafe { self.run(f, l, args) }
    }

    fn synchronize(&self) -> Result<()> {
        self.flush();
        Ok(())
    }

    fn begin_capture(&self) -> Result<bool> {
        let mut rec = self.recording.lock().unwrap();
        if rec.is_some() {
            return Err(err("begin_capture while recording"));
        }
        *rec = Some(Vec::new());
        Ok(true)
    }

    fn end_capture(&self) -> Result<Vec<Recorded>> {
        let rec = self.recording.lock().unwrap().take();
        self.recordings.fetch_add(1, Ordering::Relaxed);
        rec.ok_or_else(|| err("end_capture without begin_capture"))
    }

    fn replay(&self, g: &Vec<Recorded>) -> Result<()> {
        if self.recording.lock().unwrap().is_some() {
            return Err(err("replay while recording"));
        }
        self.replays.fetch_add(1, Ordering::Relaxed);
        for r in g {
            let mut slots = r.args.clone();
            let mut ptrs: Vec<*mut c_void> = slots
                .iter_mut()
                .map(|s| s as *mut u64 as *mut c_void)
                .collect();
            // SAFETY: the values recorded from a launch the backend made, each in its slot.
            unsafe { self.run(r.f, r.l, &mut ptrs)? };
        }
        Ok(())
    }

    unsafe fn destroy_graph(&self, _g: Vec<Recorded>) {}
}

impl Drop for HostSimt {
    fn drop(&mut self) {
        for (_, a) in std::mem::take(&mut *self.allocs.lock().unwrap()) {
            // SAFETY: mappings made by `alloc` and not freed.
            unsafe { libc::munmap(a.map as *mut c_void, a.map_len) };
        }
    }
}
