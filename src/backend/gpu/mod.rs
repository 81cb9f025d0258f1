//! The GPU backends: one forward pass over a small driver interface ([`GpuApi`]) that CUDA
//! (cudarc: driver API + NVRTC) and HIP (libamdhip64 + hiprtc, loaded with libloading) both
//! implement 1:1, and the kernels of `kernels/` compiled at first use for the device.
//!
//! Everything is allocated once in [`GpuBackend::new`]: the weights in their block formats (no
//! dequantized copies), the KV cache, the activations of `max_batch` tokens, and host staging
//! buffers. A forward step uploads the batch's token ids, sequences, positions and RoPE tables
//! (computed on the host exactly as the CPU does), launches the kernels and copies the wanted
//! logits back; sampling then runs on the host.
//!
//! This module is built without the GPU features too: it needs no driver, and
//! tests/gpu_emulator implements [`GpuApi`] on the host (threads as fibers), so the forward
//! pass and the kernels run in every test run, GPU or not.
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "rocm")]
pub mod hip;

use super::layout::{self, KvLayout, Launch};
use super::{check_batch, check_batch_rows, check_params, Backend, BackendKind, BackendParams};
use crate::backend::cpu::ops;
use crate::error::{Error, Result};
use crate::kv_cache::KvCacheType;
use crate::model::forward::Batch;
use crate::model::weights::{Attention, Tensor};
use crate::model::Model;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ops::Range;

/// A device address.
pub type DevPtr = u64;

/// A driver handle (a loaded module, a kernel function) that may move to another thread with
/// its backend.
#[derive(Clone, Copy, Debug)]
pub struct Handle<T: Copy>(pub T);

// SAFETY: module and function handles name process-wide driver objects, valid on any thread;
// the backend uses them only after `GpuApi::bind_thread` made its device current on the
// calling thread, and `&mut self` on `forward` keeps one thread at a time.
unsafe impl<T: Copy> Send for Handle<T> {}

/// The driver operations the forward pass needs, shaped like both vendors' driver APIs.
///
/// `Send`: a backend may move to another thread (a server's scheduler), which calls
/// [`bind_thread`](GpuApi::bind_thread) before its first driver call there.
pub trait GpuApi: Sized + Send {
    const KIND: BackendKind;
    type Module: Send;
    type Function: Copy + Send;
    /// A recorded sequence of launches.
    type Graph: Send;

    /// Loads the driver library, initializes it and makes device `ordinal` current; errors name
    /// what is missing ("libcuda.so not found", "no device 1: 1 device(s) present").
    fn open(ordinal: usize) -> Result<Self>;
    /// "NVIDIA H200 (sm_90)".
    fn device_name(&self) -> String;
    /// Makes this device (and its context) current on the calling thread. Driver state such as
    /// the current context is per thread, so every entry point that may run on a thread other
    /// than the creating one (`forward`, `drop`) calls it first.
    fn bind_thread(&self) -> Result<()>;
    /// Compiles one kernel program for this device (runtime compiler) and loads it; compiled
    /// code is cached per device and source for the life of the process.
    fn compile(&self, name: &str, src: &str) -> Result<Self::Module>;
    fn function(&self, m: &Self::Module, name: &str) -> Result<Self::Function>;
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// # Safety
    /// `p` came from [`alloc`](Self::alloc) and is not used afterwards.
    unsafe fn free(&self, p: DevPtr);
    /// # Safety
    /// `dst..dst + src.len()` lies inside one allocation.
    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// [`upload`](Self::upload) queued behind earlier work without waiting for it: a step's
    /// inputs cost no round trip each.
    ///
    /// # Safety
    /// As `upload`, and `src` stays alive and unchanged until the next
    /// [`download`](Self::download) or [`synchronize`](Self::synchronize) returns.
    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// # Safety
    /// `src..src + dst.len()` lies inside one allocation.
    unsafe fn download(&self, dst: &mut [u8], src: DevPtr) -> Result<()>;
    /// # Safety
    /// `args` point at values of the kernel's parameter types, in order, and every pointer
    /// argument addresses memory the kernel may touch.
    unsafe fn launch(&self, f: Self::Function, l: Launch, args: &mut [*mut c_void]) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Starts recording this thread's launches instead of running them (CUDA/HIP graphs:
    /// a decode step's launches then cost one driver call). `Ok(false)` when this API records
    /// nothing; the launches then run as they are made.
    fn begin_capture(&self) -> Result<bool>;
    /// Ends the recording [`begin_capture`](Self::begin_capture) started, returning it ready to
    /// replay. Called after every successful `begin_capture`, also when a launch in between
    /// failed (the stream must leave capture mode either way).
    fn end_capture(&self) -> Result<Self::Graph>;
    /// Runs a recording: after earlier launches and copies, before later ones.
    fn replay(&self, g: &Self::Graph) -> Result<()>;
    /// # Safety
    /// `g` came from this API's `end_capture` and is not replayed afterwards.
    unsafe fn destroy_graph(&self, g: Self::Graph);
}

/// A kernel argument (device pointers, 32-bit ints and floats, 64-bit counts).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    P(DevPtr),
    I(i32),
    F(f32),
    U(u64),
}

impl Arg {
    /// The argument's bytes in a 64-bit slot (little endian: a 32-bit parameter reads the low
    /// four bytes of its slot).
    fn slot(self) -> u64 {
        match self {
            Arg::P(p) | Arg::U(p) => p,
            Arg::I(x) => x as u32 as u64,
            Arg::F(x) => x.to_bits() as u64,
        }
    }
}

const MAX_ARGS: usize = 24;

/// Launches `f` with `args` packed as [`GpuApi::launch`] takes them (a pointer to each value).
/// Panics with more than 24 arguments.
///
/// # Safety
/// `args` are the kernel's parameters in order with matching widths, and every pointer
/// argument addresses memory the kernel may touch.
pub unsafe fn launch_args<A: GpuApi>(
    api: &A,
    f: A::Function,
    l: Launch,
    args: &[Arg],
) -> Result<()> {
    assert!(args.len() <= MAX_ARGS);
    let mut slots = [0u64; MAX_ARGS];
    for (s, a) in slots.iter_mut().zip(args) {
        *s = a.slot();
    }
    let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
    for (p, s) in ptrs.iter_mut().zip(slots.iter_mut()) {
        *p = s as *mut u64 as *mut c_void;
    }
    // SAFETY: the caller's contract; `ptrs` point at live slots for the call's duration.
    unsafe { api.launch(f, l, &mut ptrs[..args.len()]) }
}

fn launch<A: GpuApi>(api: &A, f: A::Function, l: Launch, args: &[Arg]) -> Result<()> {
    // SAFETY: every call site passes the kernel's parameters in order with matching widths, and
    // pointers into buffers sized for `max_batch` tokens / the whole cache (checked by
    // `check_batch` before any launch).
    unsafe { launch_args(api, f, l, args) }
}

/// A device allocation the backend frees when dropped.
struct DevBuf {
    ptr: DevPtr,
    bytes: usize,
}

/// A weight matrix on the device, in its file block format.
#[derive(Clone, Copy)]
struct DMat<F> {
    ptr: DevPtr,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    matmul: F,
    get_rows: F,
}

/// Projections that read the same normed activations and write one output row between them:
/// runs of matrices that share a format are concatenated on the device (one matrix, one
/// launch); each matrix writes the columns after the previous one's.
struct Proj<F>(Vec<DMat<F>>);

impl<F> Proj<F> {
    /// Output columns: the matrices' rows together.
    fn rows(&self) -> usize {
        self.0.iter().map(|m| m.rows).sum()
    }
}

struct DLayer<F> {
    attn_norm: DevPtr,
    /// q | k | v rows; output row `[d + 2 kv]`.
    qkv: Proj<F>,
    /// `[d + 2 kv]`: the q, k and v biases.
    qkv_bias: DevPtr,
    attn_out: DMat<F>,
    ffn_norm: DevPtr,
    /// gate | up rows; output row `[2 n_ff]`.
    gate_up: Proj<F>,
    down: DMat<F>,
}

struct Kernels<F> {
    qkv_finish: F,
    swiglu: F,
    kv_store_q8: F,
    key_bias_sub: F,
    attention_f16: F,
    attention_q8: F,
    argmax_rows: F,
}

/// Per-layer device KV cache pointers.
struct DKv {
    k: DevPtr,
    v: DevPtr,
    ks: DevPtr,
    vs: DevPtr,
}

/// Activations of up to `max_batch` tokens.
struct Act {
    x: DevPtr,
    /// `[T, d + 2 kv]`: the q | k | v projections before bias and RoPE.
    qkv: DevPtr,
    q: DevPtr,
    k: DevPtr,
    v: DevPtr,
    attn: DevPtr,
    /// `[T, 2 n_ff]`: gate | up.
    gate_up: DevPtr,
    /// `[T, n_ff]`: silu(gate) * up.
    ffn: DevPtr,
    logits: DevPtr,
    /// `[T]`: each logits row's argmax (`forward_argmax`).
    argmax: DevPtr,
    ids: DevPtr,
    seq: DevPtr,
    pos: DevPtr,
    cos: DevPtr,
    sin: DevPtr,
    logn: DevPtr,
}

/// The forward pass on a GPU through `A`.
pub struct GpuBackend<A: GpuApi> {
    api: A,
    // Kept alive: the functions below belong to them.
    _modules: Vec<A::Module>,
    k: Kernels<A::Function>,
    bufs: Vec<DevBuf>,
    embd: DMat<A::Function>,
    output: DMat<A::Function>,
    output_norm: DevPtr,
    layers: Vec<DLayer<A::Function>>,
    kv: Vec<DKv>,
    /// Int8 cache: each position's RoPE cos | sin (`[seq][n_ctx][head_dim]`), for the key bias
    /// the cache is stored without (`key_bias_sub`); 0 otherwise.
    kv_rot: DevPtr,
    kv_layout: KvLayout,
    act: Act,
    max_batch: usize,
    // Host staging, sized for max_batch tokens.
    h_ids: Vec<i32>,
    h_seq: Vec<i32>,
    h_pos: Vec<i32>,
    h_cos: Vec<f32>,
    h_sin: Vec<f32>,
    h_logn: Vec<f32>,
    /// Recorded launch sequences by (tokens, first token with logits): every launch argument
    /// depends only on these (per-step values live in device buffers), so a decode step
    /// replays its recording. Capacity reserved up front: the decode loop allocates nothing.
    graphs: Vec<(GraphKey, A::Graph)>,
    use_graphs: bool,
}

type GraphKey = (usize, usize);

/// Batches of up to this many tokens are recorded (decode steps, small batches); a prefill's
/// launches are few per token anyway.
const GRAPH_MAX_TOKENS: usize = 16;
/// At most this many recordings per backend (each holds driver memory).
const MAX_GRAPHS: usize = 32;

fn as_bytes<T: Copy>(x: &[T]) -> &[u8] {
    // SAFETY: plain old data (i32 / f32) viewed as its bytes.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

fn as_bytes_mut_u32(x: &mut [u32]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid u32.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, std::mem::size_of_val(x)) }
}

fn as_bytes_mut(x: &mut [f32]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut u8, std::mem::size_of_val(x)) }
}

impl<A: GpuApi> GpuBackend<A> {
    pub fn new(model: &Model, p: &BackendParams) -> Result<Self> {
        check_params(model, p)?;
        let c = &model.config;
        let name = A::KIND.as_str();
        let kv_ty = match p.kv_cache {
            KvCacheType::F32 => KvCacheType::F16,
            t => t,
        };
        let kv_layout = KvLayout::new(kv_ty, p.n_seq, p.n_ctx, c.n_head_kv, c.head_dim)
            .map_err(|e| Error::Backend(format!("{name}: {e}")))?;
        if c.n_head_kv == 0
            || !c.n_head.is_multiple_of(c.n_head_kv)
            || c.n_embd != c.n_head * c.head_dim
        {
            return Err(Error::Backend(format!(
                "{name}: {} heads of {} for width {} with {} kv heads",
                c.n_head, c.head_dim, c.n_embd, c.n_head_kv
            )));
        }
        layout::matmul_launch(c.n_vocab, p.max_batch)?;
        let api = A::open(p.device)?;

        // Kernels: every file compiled for this device.
        let mut modules = Vec::new();
        let mut funcs: HashMap<String, A::Function> = HashMap::new();
        for (file, text) in layout::KERNEL_FILES {
            let m = api.compile(file, &layout::kernel_source(text))?;
            for kname in layout::kernel_names() {
                if let Ok(f) = api.function(&m, &kname) {
                    funcs.insert(kname, f);
                }
            }
            modules.push(m);
        }
        let get = |n: &str| -> Result<A::Function> {
            funcs.get(n).copied().ok_or_else(|| {
                Error::Backend(format!(
                    "{name}: kernel {n} missing from the compiled program"
                ))
            })
        };
        let k = Kernels {
            qkv_finish: get("qkv_finish")?,
            swiglu: get("swiglu")?,
            kv_store_q8: get("kv_store_q8")?,
            key_bias_sub: get("key_bias_sub")?,
            attention_f16: get("attention_f16")?,
            attention_q8: get("attention_q8")?,
            argmax_rows: get("argmax_rows")?,
        };

        let mut me = GpuBackend {
            api,
            _modules: Vec::new(),
            k,
            bufs: Vec::new(),
            embd: DMat {
                ptr: 0,
                rows: 0,
                cols: 0,
                row_bytes: 0,
                matmul: get("matmul_f32")?,
                get_rows: get("get_rows_f32")?,
            },
            output: DMat {
                ptr: 0,
                rows: 0,
                cols: 0,
                row_bytes: 0,
                matmul: get("matmul_f32")?,
                get_rows: get("get_rows_f32")?,
            },
            output_norm: 0,
            layers: Vec::with_capacity(c.n_layer),
            kv: Vec::with_capacity(c.n_layer),
            kv_rot: 0,
            kv_layout,
            act: Act {
                x: 0,
                qkv: 0,
                q: 0,
                k: 0,
                v: 0,
                attn: 0,
                gate_up: 0,
                ffn: 0,
                logits: 0,
                ids: 0,
                seq: 0,
                pos: 0,
                cos: 0,
                sin: 0,
                logn: 0,
                argmax: 0,
            },
            max_batch: p.max_batch,
            h_ids: vec![0; p.max_batch],
            h_seq: vec![0; p.max_batch],
            h_pos: vec![0; p.max_batch],
            h_cos: vec![0.0; p.max_batch * c.head_dim / 2],
            h_sin: vec![0.0; p.max_batch * c.head_dim / 2],
            h_logn: vec![0.0; p.max_batch],
            graphs: Vec::with_capacity(MAX_GRAPHS),
            // QWEN_GPU_GRAPHS=0 launches every kernel directly (to measure what recording gains).
            use_graphs: std::env::var_os("QWEN_GPU_GRAPHS").is_none_or(|v| v != "0"),
        };

        // Weights, uploaded once; a tensor used twice (tied embedding / LM head) once.
        let mut uploaded: HashMap<Range<usize>, DevPtr> = HashMap::new();
        let w = &model.weights;
        me.embd = me.upload_matrix(model, &w.token_embd, &funcs, &mut uploaded)?;
        me.output = me.upload_matrix(model, &w.output, &funcs, &mut uploaded)?;
        me.output_norm = me.upload_vector(model, &w.output_norm, &mut uploaded)?;
        for l in &w.layers {
            let (qkv, qkv_bias) = match &l.attn {
                Attention::Fused { qkv, qkv_bias } => (
                    Proj(vec![me.upload_matrix(model, qkv, &funcs, &mut uploaded)?]),
                    me.upload_vector(model, qkv_bias, &mut uploaded)?,
                ),
                Attention::Split {
                    q,
                    q_bias,
                    k,
                    k_bias,
                    v,
                    v_bias,
                } => {
                    let bias: Vec<f32> = [q_bias, k_bias, v_bias]
                        .iter()
                        .flat_map(|b| model.vector(b).iter().copied())
                        .collect();
                    (
                        me.upload_projections(model, &[q, k, v], &funcs, &mut uploaded)?,
                        me.upload_bytes(as_bytes(&bias))?,
                    )
                }
            };
            let kv_width = c.n_head_kv * c.head_dim;
            let gate_up =
                me.upload_projections(model, &[&l.ffn_gate, &l.ffn_up], &funcs, &mut uploaded)?;
            // The kernels write these rows into activations sized from the hyperparameters.
            if qkv.rows() != c.n_embd + 2 * kv_width || gate_up.rows() != 2 * c.n_ff {
                return Err(Error::Backend(format!(
                    "{name}: attention or MLP projections do not match the model's widths"
                )));
            }
            let layer = DLayer {
                attn_norm: me.upload_vector(model, &l.attn_norm, &mut uploaded)?,
                qkv,
                qkv_bias,
                attn_out: me.upload_matrix(model, &l.attn_out, &funcs, &mut uploaded)?,
                ffn_norm: me.upload_vector(model, &l.ffn_norm, &mut uploaded)?,
                gate_up,
                down: me.upload_matrix(model, &l.ffn_down, &funcs, &mut uploaded)?,
            };
            me.layers.push(layer);
        }

        // KV cache, zeroed.
        for _ in 0..c.n_layer {
            let kvl = me.kv_layout;
            let k = me.alloc_zeroed(kvl.layer_bytes())?;
            let v = me.alloc_zeroed(kvl.layer_bytes())?;
            let (ks, vs) = if kvl.ty == KvCacheType::Q8 {
                (
                    me.alloc_zeroed(kvl.layer_scale_bytes())?,
                    me.alloc_zeroed(kvl.layer_scale_bytes())?,
                )
            } else {
                (0, 0)
            };
            me.kv.push(DKv { k, v, ks, vs });
        }
        if me.kv_layout.rotation_bytes() > 0 {
            me.kv_rot = me.alloc_zeroed(me.kv_layout.rotation_bytes())?;
        }

        // Activations for max_batch tokens.
        let t = p.max_batch;
        let f = 4;
        let kvd = c.n_head_kv * c.head_dim;
        me.act = Act {
            x: me.alloc_zeroed(f * t * c.n_embd)?,
            qkv: me.alloc_zeroed(f * t * (c.n_embd + 2 * kvd))?,
            q: me.alloc_zeroed(f * t * c.n_embd)?,
            k: me.alloc_zeroed(f * t * kvd)?,
            v: me.alloc_zeroed(f * t * kvd)?,
            attn: me.alloc_zeroed(f * t * c.n_embd)?,
            gate_up: me.alloc_zeroed(f * t * 2 * c.n_ff)?,
            ffn: me.alloc_zeroed(f * t * c.n_ff)?,
            logits: me.alloc_zeroed(f * t * c.n_vocab)?,
            argmax: me.alloc_zeroed(4 * t)?,
            ids: me.alloc_zeroed(4 * t)?,
            seq: me.alloc_zeroed(4 * t)?,
            pos: me.alloc_zeroed(4 * t)?,
            cos: me.alloc_zeroed(f * t * c.head_dim / 2)?,
            sin: me.alloc_zeroed(f * t * c.head_dim / 2)?,
            logn: me.alloc_zeroed(f * t)?,
        };
        me._modules = modules;
        Ok(me)
    }

    fn alloc_zeroed(&mut self, bytes: usize) -> Result<DevPtr> {
        let bytes = bytes.max(4);
        let ptr = self.api.alloc(bytes)?;
        self.bufs.push(DevBuf { ptr, bytes });
        // Zeroed from the host through a bounded buffer: no device memset in the interface.
        let zeros = vec![0u8; bytes.min(1 << 20)];
        let mut off = 0;
        while off < bytes {
            let n = zeros.len().min(bytes - off);
            // SAFETY: off + n <= bytes, inside the allocation just made.
            unsafe { self.api.upload(ptr + off as u64, &zeros[..n])? };
            off += n;
        }
        Ok(ptr)
    }

    fn upload_bytes(&mut self, data: &[u8]) -> Result<DevPtr> {
        self.upload_parts(&[data])
    }

    /// One allocation holding `parts` one after another, uploaded straight from their slices.
    fn upload_parts(&mut self, parts: &[&[u8]]) -> Result<DevPtr> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let bytes = total.max(4);
        let ptr = self.api.alloc(bytes)?;
        self.bufs.push(DevBuf { ptr, bytes });
        let mut off = 0;
        for p in parts {
            // SAFETY: off + p.len() <= total <= bytes, inside the allocation just made.
            unsafe { self.api.upload(ptr + off as u64, p)? };
            off += p.len();
        }
        Ok(ptr)
    }

    fn upload_vector(
        &mut self,
        model: &Model,
        t: &Tensor,
        done: &mut HashMap<Range<usize>, DevPtr>,
    ) -> Result<DevPtr> {
        if let Some(&p) = done.get(&t.bytes) {
            return Ok(p);
        }
        let p = self.upload_bytes(&model.file().as_bytes()[t.bytes.clone()])?;
        done.insert(t.bytes.clone(), p);
        Ok(p)
    }

    /// The `matmul_*` and `get_rows_*` kernels that decode `t`'s format.
    fn weight_kernels(
        funcs: &HashMap<String, A::Function>,
        t: &Tensor,
    ) -> Result<(A::Function, A::Function)> {
        let suffix = layout::weight_kernel_suffix(t.ty).unwrap_or("?");
        let kern = |p: &str| {
            funcs
                .get(&format!("{p}_{suffix}"))
                .copied()
                .ok_or_else(|| Error::Backend(format!("{}: no {p} kernel for {}", A::KIND, t.ty)))
        };
        Ok((kern("matmul")?, kern("get_rows")?))
    }

    fn upload_matrix(
        &mut self,
        model: &Model,
        t: &Tensor,
        funcs: &HashMap<String, A::Function>,
        done: &mut HashMap<Range<usize>, DevPtr>,
    ) -> Result<DMat<A::Function>> {
        let row_bytes = layout::device_row_bytes(&t.name, t.ty, t.cols)?;
        if row_bytes * t.rows != t.bytes.len() {
            return Err(Error::tensor(&t.name, "byte size does not match its shape"));
        }
        let (matmul, get_rows) = Self::weight_kernels(funcs, t)?;
        let ptr = match done.get(&t.bytes) {
            Some(&p) => p,
            None => {
                let p = self.upload_bytes(&model.file().as_bytes()[t.bytes.clone()])?;
                done.insert(t.bytes.clone(), p);
                p
            }
        };
        Ok(DMat {
            ptr,
            rows: t.rows,
            cols: t.cols,
            row_bytes,
            matmul,
            get_rows,
        })
    }

    /// Matrices that read the same input, each run of them sharing a format and width
    /// concatenated into one device matrix.
    fn upload_projections(
        &mut self,
        model: &Model,
        ts: &[&Tensor],
        funcs: &HashMap<String, A::Function>,
        done: &mut HashMap<Range<usize>, DevPtr>,
    ) -> Result<Proj<A::Function>> {
        let mut mats = Vec::new();
        for run in ts.chunk_by(|a, b| a.ty == b.ty && a.cols == b.cols) {
            if let [t] = run {
                mats.push(self.upload_matrix(model, t, funcs, done)?);
                continue;
            }
            // Shapes checked as upload_matrix checks them; the rows go up in order, straight
            // from the mapped file.
            let first = run[0];
            let row_bytes = layout::device_row_bytes(&first.name, first.ty, first.cols)?;
            let mut parts = Vec::with_capacity(run.len());
            for t in run {
                if row_bytes * t.rows != t.bytes.len() {
                    return Err(Error::tensor(&t.name, "byte size does not match its shape"));
                }
                parts.push(&model.file().as_bytes()[t.bytes.clone()]);
            }
            let (matmul, get_rows) = Self::weight_kernels(funcs, first)?;
            mats.push(DMat {
                ptr: self.upload_parts(&parts)?,
                rows: run.iter().map(|t| t.rows).sum(),
                cols: first.cols,
                row_bytes,
                matmul,
                get_rows,
            });
        }
        Ok(Proj(mats))
    }

    /// `y[t * ldy + r] (+)= (m xn[t])[r]`: `accumulate` adds the product to `y` (a residual);
    /// `xn` is `x`, or RMSNorm(x) with `norm`'s weight vector and epsilon.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        m: &DMat<A::Function>,
        x: DevPtr,
        n_tok: usize,
        y: DevPtr,
        ldy: usize,
        accumulate: bool,
        norm: Option<(DevPtr, f32)>,
    ) -> Result<()> {
        let (nw, eps) = norm.unwrap_or((0, 0.0));
        let l = layout::matmul_launch(m.rows, n_tok)?;
        launch(
            &self.api,
            m.matmul,
            l,
            &[
                Arg::P(m.ptr),
                Arg::U(m.row_bytes as u64),
                Arg::I(m.rows as i32),
                Arg::I(m.cols as i32),
                Arg::P(x),
                Arg::P(y),
                Arg::I(ldy as i32),
                Arg::I(n_tok as i32),
                Arg::I(accumulate as i32),
                Arg::P(nw),
                Arg::F(eps),
            ],
        )
    }

    /// The projections of `p` of RMSNorm(x) (`norm`: weight vector, epsilon) into rows of `y`
    /// (`[n_tok, width]`, each matrix's rows after the previous one's).
    fn project(
        &self,
        p: &Proj<A::Function>,
        x: DevPtr,
        norm: (DevPtr, f32),
        n_tok: usize,
        y: DevPtr,
        width: usize,
    ) -> Result<()> {
        let mut col = 0;
        for m in &p.0 {
            self.matmul(m, x, n_tok, y + 4 * col as u64, width, false, Some(norm))?;
            col += m.rows;
        }
        Ok(())
    }

    /// Drops every recording. The caller has made the device current and synchronized it.
    fn destroy_graphs(&mut self) {
        for (_, g) in self.graphs.drain(..) {
            // SAFETY: recorded by this api; the device finished with it and nothing replays
            // it again (it leaves the list here).
            unsafe { self.api.destroy_graph(g) };
        }
    }

    /// Whether small batches run as recorded launch sequences (on by default; the environment
    /// variable `QWEN_GPU_GRAPHS=0` turns it off for a process). Off drops the recordings.
    pub fn set_graphs(&mut self, on: bool) -> Result<()> {
        self.use_graphs = on;
        if !on {
            self.api.bind_thread()?;
            self.api.synchronize()?;
            self.destroy_graphs();
        }
        Ok(())
    }

    /// The driver interface this backend runs on (tests count its launches).
    pub fn api(&self) -> &A {
        &self.api
    }

    /// Total device bytes this backend holds (weights, cache, activations).
    pub fn device_bytes(&self) -> usize {
        self.bufs.iter().map(|b| b.bytes).sum()
    }
}

impl<A: GpuApi> Drop for GpuBackend<A> {
    fn drop(&mut self) {
        // Dropped on whichever thread owns the session last.
        let _ = self.api.bind_thread();
        let _ = self.api.synchronize();
        self.destroy_graphs();
        for b in self.bufs.drain(..) {
            // SAFETY: each buffer was allocated by this api and is freed once, after the
            // device finished every launch that used it.
            unsafe { self.api.free(b.ptr) };
        }
    }
}

impl<A: GpuApi> Backend for GpuBackend<A> {
    fn kind(&self) -> BackendKind {
        A::KIND
    }

    fn device_name(&self) -> String {
        format!("{} {}", A::KIND, self.api.device_name())
    }

    fn n_ctx(&self) -> usize {
        self.kv_layout.n_ctx
    }

    fn n_seq(&self) -> usize {
        self.kv_layout.n_seq
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn kv_cache_type(&self) -> KvCacheType {
        self.kv_layout.ty
    }

    fn kv_bytes(&self) -> usize {
        self.kv_layout.total_bytes(self.kv.len())
    }

    fn forward(
        &mut self,
        model: &Model,
        inv_freq: &[f32],
        batch: &Batch,
        logits: &mut [f32],
    ) -> Result<()> {
        check_batch(model, self, inv_freq, batch, logits)?;
        self.stage_and_step(model, inv_freq, batch, Out::Logits(logits))
    }

    fn forward_argmax(
        &mut self,
        model: &Model,
        inv_freq: &[f32],
        batch: &Batch,
        out: &mut [u32],
    ) -> Result<bool> {
        check_batch_rows(model, self, inv_freq, batch, out.len())?;
        self.stage_and_step(model, inv_freq, batch, Out::Argmax(out))?;
        Ok(true)
    }
}

/// What a step hands back: the logits rows, or only their argmaxes.
enum Out<'a> {
    Logits(&'a mut [f32]),
    Argmax(&'a mut [u32]),
}

impl<A: GpuApi> GpuBackend<A> {
    /// A checked batch: its description and RoPE tables computed into the host staging, then
    /// [`step`](Self::step).
    fn stage_and_step(
        &mut self,
        model: &Model,
        inv_freq: &[f32],
        batch: &Batch,
        out: Out,
    ) -> Result<()> {
        self.api.bind_thread()?;
        let c = &model.config;
        let t_len = batch.tokens.len();
        let half = c.head_dim / 2;

        // Batch description and RoPE tables, on the host as the CPU computes them, then up.
        let mscale = c.rope_attn_factor();
        for t in 0..t_len {
            let (sq, p) = (batch.seq[t], batch.pos[t]);
            self.h_ids[t] = batch.tokens[t] as i32;
            self.h_seq[t] = sq as i32;
            self.h_pos[t] = p as i32;
            self.h_logn[t] = c.logn_scale(p);
            ops::rope_table(
                p,
                &inv_freq[sq * half..(sq + 1) * half],
                mscale,
                &mut self.h_cos[t * half..(t + 1) * half],
                &mut self.h_sin[t * half..(t + 1) * half],
            );
        }
        let stepped = self.step(model, t_len, batch.logits_from, out);
        if stepped.is_err() {
            // Uploads queued before the failure may still read the staging vectors.
            let _ = self.api.synchronize();
        }
        stepped
    }

    /// One step over the staged batch: inputs up, launches, the outputs of tokens `first..`
    /// down.
    fn step(&mut self, model: &Model, t_len: usize, first: usize, out: Out) -> Result<()> {
        let (half, n_vocab) = (model.config.head_dim / 2, model.config.n_vocab);
        let a = &self.act;
        // SAFETY: each staging slice has t_len (or t_len * half) elements, within the device
        // buffers sized for max_batch tokens. The staging vectors are next written by the next
        // forward, after this step's download or synchronize (or the caller's on an error).
        unsafe {
            self.api
                .upload_async(a.ids, as_bytes(&self.h_ids[..t_len]))?;
            self.api
                .upload_async(a.seq, as_bytes(&self.h_seq[..t_len]))?;
            self.api
                .upload_async(a.pos, as_bytes(&self.h_pos[..t_len]))?;
            self.api
                .upload_async(a.logn, as_bytes(&self.h_logn[..t_len]))?;
            self.api
                .upload_async(a.cos, as_bytes(&self.h_cos[..t_len * half]))?;
            self.api
                .upload_async(a.sin, as_bytes(&self.h_sin[..t_len * half]))?;
        }
        self.run_or_replay(model, t_len, first)?;
        let n_out = t_len - first;
        if n_out == 0 {
            return self.api.synchronize();
        }
        match out {
            Out::Logits(logits) => {
                let dst = &mut logits[..n_out * n_vocab];
                // SAFETY: n_out <= max_batch rows of n_vocab floats fit the logits buffer.
                unsafe { self.api.download(as_bytes_mut(dst), self.act.logits) }
            }
            Out::Argmax(ids) => {
                launch(
                    &self.api,
                    self.k.argmax_rows,
                    layout::rows_launch(n_out),
                    &[
                        Arg::P(self.act.logits),
                        Arg::I(n_vocab as i32),
                        Arg::P(self.act.argmax),
                    ],
                )?;
                let dst = &mut ids[..n_out];
                // SAFETY: n_out <= max_batch ids fit the argmax buffer; u32 and the kernel's
                // non-negative i32 share their bytes.
                unsafe { self.api.download(as_bytes_mut_u32(dst), self.act.argmax) }
            }
        }
    }

    /// The step's launches: replayed from a recording when there is one for this shape, else
    /// recorded first (small batches), else made directly.
    fn run_or_replay(&mut self, model: &Model, t_len: usize, first: usize) -> Result<()> {
        let key = (t_len, first);
        if !self.use_graphs || t_len > GRAPH_MAX_TOKENS {
            return self.run(model, t_len, first);
        }
        if let Some((_, g)) = self.graphs.iter().find(|(k, _)| *k == key) {
            return self.api.replay(g);
        }
        if self.graphs.len() == MAX_GRAPHS || !self.api.begin_capture()? {
            return self.run(model, t_len, first);
        }
        let recorded = self.run(model, t_len, first);
        let graph = self.api.end_capture();
        let graph = match (recorded, graph) {
            (Ok(()), Ok(g)) => g,
            (Err(e), Ok(g)) => {
                // SAFETY: just recorded, never replayed.
                unsafe { self.api.destroy_graph(g) };
                return Err(e);
            }
            (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(e),
        };
        // Recording ran nothing: this step runs by its first replay.
        self.graphs.push((key, graph));
        let (_, g) = &self.graphs[self.graphs.len() - 1];
        self.api.replay(g)
    }

    /// Every launch of one forward step over the batch already uploaded (`t_len` tokens, logits
    /// for tokens `first..`). Each argument depends only on these two numbers and the backend's
    /// buffers, which is what lets [`run_or_replay`](Self::run_or_replay) record it once.
    fn run(&self, model: &Model, t_len: usize, first: usize) -> Result<()> {
        let c = &model.config;
        let (d, hd, n_head, n_kv) = (c.n_embd, c.head_dim, c.n_head, c.n_head_kv);
        let kvd = n_kv * hd;
        let f = 4u64;
        let a = &self.act;

        // 1. x[t] = token_embd[id].
        let e = &self.embd;
        launch(
            &self.api,
            e.get_rows,
            layout::rows_launch(t_len),
            &[
                Arg::P(e.ptr),
                Arg::U(e.row_bytes as u64),
                Arg::I(e.cols as i32),
                Arg::P(a.ids),
                Arg::P(a.x),
            ],
        )?;

        let uses_logn = c.use_logn_attn;
        let seq_stride = self.kv_layout.seq_stride() as u64;
        let elem = if self.kv_layout.ty == KvCacheType::Q8 {
            1
        } else {
            2
        };
        let layer_elems = self.kv_layout.layer_elems();
        let q8_block = self.kv_layout.q8_block;
        debug_assert!(layer_elems * elem == self.kv_layout.layer_bytes());
        let qkv_width = d + 2 * kvd;
        for (li, layer) in self.layers.iter().enumerate() {
            // 2. q | k | v rows of RMSNorm(x); bias, RoPE on q (then logN) and k, split.
            let attn_norm = (layer.attn_norm, c.rms_eps);
            self.project(&layer.qkv, a.x, attn_norm, t_len, a.qkv, qkv_width)?;
            // With an f16 cache, k and v go straight into it.
            let kv = &self.kv[li];
            let (kc, vc) = match self.kv_layout.ty {
                KvCacheType::Q8 => (0, 0),
                _ => (kv.k, kv.v),
            };
            launch(
                &self.api,
                self.k.qkv_finish,
                layout::elementwise_launch(t_len * qkv_width / 2),
                &[
                    Arg::P(a.qkv),
                    Arg::P(layer.qkv_bias),
                    Arg::P(a.q),
                    Arg::P(a.k),
                    Arg::P(a.v),
                    Arg::P(a.cos),
                    Arg::P(a.sin),
                    Arg::P(if uses_logn { a.logn } else { 0 }),
                    Arg::P(kc),
                    Arg::P(vc),
                    Arg::P(a.seq),
                    Arg::P(a.pos),
                    Arg::I(n_head as i32),
                    Arg::I(n_kv as i32),
                    Arg::I(hd as i32),
                    Arg::U(seq_stride),
                    Arg::I(t_len as i32),
                ],
            )?;
            // 3. The int8 cache's store; attention.
            let scale = 1.0 / (hd as f32).sqrt();
            let att = layout::attention_launch(t_len, n_head)?;
            if self.kv_layout.ty == KvCacheType::Q8 {
                // Keys without the layer's key bias (as the CPU's int8 cache stores them).
                let key_bias = layer.qkv_bias + f * d as u64;
                launch(
                    &self.api,
                    self.k.key_bias_sub,
                    layout::elementwise_launch(t_len * kvd / 2),
                    &[
                        Arg::P(a.k),
                        Arg::P(key_bias),
                        Arg::P(a.cos),
                        Arg::P(a.sin),
                        Arg::P(self.kv_rot),
                        Arg::P(a.seq),
                        Arg::P(a.pos),
                        Arg::I(n_kv as i32),
                        Arg::I(hd as i32),
                        Arg::I(self.kv_layout.n_ctx as i32),
                        Arg::I(t_len as i32),
                    ],
                )?;
                launch(
                    &self.api,
                    self.k.kv_store_q8,
                    layout::elementwise_launch(t_len * kvd / q8_block),
                    &[
                        Arg::P(a.k),
                        Arg::P(a.v),
                        Arg::P(kv.k),
                        Arg::P(kv.v),
                        Arg::P(kv.ks),
                        Arg::P(kv.vs),
                        Arg::P(a.seq),
                        Arg::P(a.pos),
                        Arg::I(kvd as i32),
                        Arg::I(q8_block as i32),
                        Arg::U(seq_stride),
                        Arg::I(t_len as i32),
                    ],
                )?;
                launch(
                    &self.api,
                    self.k.attention_q8,
                    att,
                    &[
                        Arg::P(a.q),
                        Arg::P(a.attn),
                        Arg::P(kv.k),
                        Arg::P(kv.v),
                        Arg::P(kv.ks),
                        Arg::P(kv.vs),
                        Arg::I(q8_block as i32),
                        Arg::P(key_bias),
                        Arg::P(self.kv_rot),
                        Arg::P(a.seq),
                        Arg::P(a.pos),
                        Arg::I(n_head as i32),
                        Arg::I((n_head / n_kv) as i32),
                        Arg::I(hd as i32),
                        Arg::U(seq_stride),
                        Arg::F(scale),
                    ],
                )?;
            } else {
                launch(
                    &self.api,
                    self.k.attention_f16,
                    att,
                    &[
                        Arg::P(a.q),
                        Arg::P(a.attn),
                        Arg::P(kv.k),
                        Arg::P(kv.v),
                        Arg::P(a.seq),
                        Arg::P(a.pos),
                        Arg::I(n_head as i32),
                        Arg::I((n_head / n_kv) as i32),
                        Arg::I(hd as i32),
                        Arg::U(seq_stride),
                        Arg::F(scale),
                    ],
                )?;
            }
            // 4. x += attn @ Wo.
            self.matmul(&layer.attn_out, a.attn, t_len, a.x, d, true, None)?;
            // 5. MLP: x += down(silu(gate(xn)) * up(xn)), xn = RMSNorm(x).
            let ffn_norm = (layer.ffn_norm, c.rms_eps);
            self.project(&layer.gate_up, a.x, ffn_norm, t_len, a.gate_up, 2 * c.n_ff)?;
            launch(
                &self.api,
                self.k.swiglu,
                layout::elementwise_launch(t_len * c.n_ff),
                &[
                    Arg::P(a.ffn),
                    Arg::P(a.gate_up),
                    Arg::I(c.n_ff as i32),
                    Arg::I(t_len as i32),
                ],
            )?;
            self.matmul(&layer.down, a.ffn, t_len, a.x, d, true, None)?;
        }

        // 6. Final norm and LM head for tokens first..T.
        let n_out = t_len - first;
        if n_out > 0 {
            let x_first = a.x + f * (first * d) as u64;
            let norm = Some((self.output_norm, c.rms_eps));
            self.matmul(
                &self.output,
                x_first,
                n_out,
                a.logits,
                c.n_vocab,
                false,
                norm,
            )?;
        }
        Ok(())
    }
}
