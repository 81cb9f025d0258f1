//! Backend selection and the GPU backends' parity with the CPU.
//!
//! What runs everywhere: backend selection errors (a backend not built in, a driver library
//! missing), the CPU backend against `Session` (same tokens), the dequantization code of
//! `kernels/common.cuh` compiled for the host with the system C++ compiler against the crate's
//! scalar reference (every weight format), and — with feature `cuda` and libnvrtc loadable
//! (`LD_LIBRARY_PATH`) — every kernel file compiled by NVRTC for sm_80 and sm_90 with every
//! launched kernel present in the PTX; with feature `rocm` and a clang that has the amdgcn
//! target, every kernel file's HIP path compiled for three AMD GPU generations.
//!
//! What needs a GPU: the end-to-end parity tests (tiny models: logits against the CPU; the
//! real models' headers rebuilt with random weights: logits against the CPU; the real 0.5B
//! model: the first 16 greedy tokens equal). Without a device they print
//! `SKIPPED: <backend>: <why>` and return.

mod common;

use common::parity::{logits_of, one_sequence, rel_err};

use qwen::backend::{self, Backend, BackendKind, BackendParams};
use qwen::gguf::GgmlType;
use qwen::kv_cache::KvCacheType;
use qwen::model::Model;
use qwen::session::{Session, SessionOptions, SessionParams};
use std::path::PathBuf;
use std::sync::Arc;

fn params(kv: KvCacheType) -> BackendParams {
    BackendParams {
        n_ctx: 64,
        n_seq: 1,
        max_batch: 8,
        n_threads: 2,
        kv_cache: kv,
        device: 0,
    }
}

type Available = Result<Box<dyn Backend>, String>;

/// The GPU backends this build has, each with the backend or the reason it is unavailable.
fn gpu_backends(model: &Model, kv: KvCacheType) -> Vec<(BackendKind, Available)> {
    [BackendKind::Cuda, BackendKind::Rocm]
        .into_iter()
        .map(|k| {
            (
                k,
                backend::create(k, model, &params(kv)).map_err(|e| e.to_string()),
            )
        })
        .collect()
}

#[test]
fn unavailable_backends_are_clear_errors() {
    let Some(path) = common::tiny_gguf("qwen2-tiny", "f32") else {
        return;
    };
    let model = Model::load(&path).unwrap();
    for (kind, r) in gpu_backends(&model, KvCacheType::F16) {
        match r {
            Ok(b) => eprintln!("{kind}: available ({})", b.device_name()),
            Err(msg) => {
                eprintln!("{kind}: {msg}");
                assert!(msg.starts_with(&format!("backend {kind}: ")), "{msg}");
                if !kind.compiled() {
                    assert!(
                        msg.contains(&format!("built without feature {kind}")),
                        "{msg}"
                    );
                } else {
                    // Built in: a missing library or device is named.
                    assert!(
                        msg.contains("not found")
                            || msg.contains("no device")
                            || msg.contains("cu")
                            || msg.contains("hip"),
                        "{msg}"
                    );
                }
            }
        }
    }
    assert!(BackendKind::parse("tpu").is_err());
    assert_eq!(BackendKind::parse("CUDA").unwrap(), BackendKind::Cuda);
    assert_eq!(BackendKind::parse("hip").unwrap(), BackendKind::Rocm);
}

/// The CPU backend runs the same forward pass as `Session`: identical greedy tokens.
#[test]
fn cpu_backend_matches_session() {
    for name in ["qwen1-tiny", "qwen2-tiny"] {
        let Some(path) = common::tiny_gguf(name, "q8_0") else {
            return;
        };
        let model = Arc::new(Model::load(&path).unwrap());
        let prompt: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % 1000).collect();
        let mut cpu = backend::create(BackendKind::Cpu, &model, &params(KvCacheType::F32)).unwrap();
        assert_eq!(cpu.kind(), BackendKind::Cpu);
        let got = backend::greedy(&model, cpu.as_mut(), &prompt, 12, |_| true).unwrap();
        let sp = SessionParams {
            n_ctx: 64,
            n_threads: 2,
            max_batch: 8,
        };
        let mut s = Session::new(model.clone(), &sp).unwrap();
        let mut want = Vec::new();
        let mut logits = s.eval(&prompt).unwrap().to_vec();
        for _ in 0..12 {
            let t = qwen::sampler::argmax(&logits);
            want.push(t);
            logits = s.eval(&[t]).unwrap().to_vec();
        }
        assert_eq!(got, want, "{name}");
        // Bad batches are errors, not panics.
        let mut logits = vec![0.0; model.config.n_vocab];
        let bad = qwen::model::forward::Batch {
            tokens: &[1],
            seq: &[3],
            pos: &[0],
            logits_from: 0,
        };
        let inv = vec![0.0; model.config.head_dim / 2];
        assert!(cpu.forward(&model, &inv, &bad, &mut logits).is_err());
    }
}

/// Runs `kernels/common.cuh`'s `qwen_deq32` on the host (compiled with the system C++ compiler)
/// over quantized random rows of every weight format and compares with `dequantize_row`.
#[test]
fn kernel_dequantization_matches_the_cpu_reference() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let dir = common::out_dir().join(format!("deq32-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels/common.cuh");
    let harness = dir.join("harness.cpp");
    // stdin: type id, n elements, then the row's bytes; stdout: n little-endian f32s.
    std::fs::write(
        &harness,
        format!(
            r#"#include "{}"
#include <stdio.h>
#include <stdlib.h>
int main() {{
    int ty, n;
    if (fread(&ty, 4, 1, stdin) != 1 || fread(&n, 4, 1, stdin) != 1) return 2;
    static uint8_t row[1 << 20];
    size_t len = fread(row, 1, sizeof row, stdin);
    (void)len;
    float y[32];
    for (int s = 0; s < n / 32; ++s) {{
        if (!qwen_deq32(ty, row, s, y)) return 3;
        fwrite(y, 4, 32, stdout);
    }}
    return 0;
}}
"#,
            header.display()
        ),
    )
    .unwrap();
    let exe = dir.join("harness");
    let built = std::process::Command::new(&cxx)
        .args(["-O1", "-ffp-contract=off", "-o"])
        .arg(&exe)
        .arg(&harness)
        .output();
    let built = match built {
        Ok(o) => o,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("{cxx}: {e}");
            }
            eprintln!("SKIPPED: no C++ compiler `{cxx}` ({e}); set CXX");
            return;
        }
    };
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let n = 512;
    let x = common::pseudo_random(n, 7, 3.0);
    let mut checked = 0;
    for ty in GgmlType::ALL {
        if backend::layout::weight_kernel_suffix(ty).is_none() {
            continue;
        }
        let mut q = vec![0u8; ty.row_bytes(n).unwrap()];
        qwen::quant::quantize_row(ty, &x, &mut q).unwrap();
        let mut want = vec![0.0f32; n];
        qwen::quant::dequantize_row(ty, &q, &mut want).unwrap();
        let mut input = Vec::new();
        input.extend((ty as u32).to_le_bytes());
        input.extend((n as u32).to_le_bytes());
        input.extend(&q);
        let mut child = std::process::Command::new(&exe)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{ty}: harness failed");
        let got: Vec<f32> = out
            .stdout
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got.len(), n, "{ty}");
        for i in 0..n {
            // The same float expressions in the same order: bit-identical.
            assert_eq!(
                got[i].to_bits(),
                want[i].to_bits(),
                "{ty} element {i}: {} vs {}",
                got[i],
                want[i]
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 13, "every weight format");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every kernel file compiles with NVRTC (no device needed, only libnvrtc), and every kernel
/// the backend launches is in the PTX.
#[cfg(feature = "cuda")]
#[test]
fn kernels_compile_with_nvrtc() {
    use qwen::backend::gpu::cuda;
    use qwen::backend::layout;
    if !cuda::nvrtc_present() {
        if std::env::var_os("QWEN_REQUIRE_NVRTC").is_some() {
            panic!("libnvrtc not found and QWEN_REQUIRE_NVRTC is set");
        }
        eprintln!(
            "SKIPPED: cuda: libnvrtc.so not found (e.g. `pip download nvidia-cuda-nvrtc-cu12`, \
             unzip, and put nvidia/cuda_nvrtc/lib on LD_LIBRARY_PATH)"
        );
        return;
    }
    for arch in ["compute_80", "compute_90"] {
        let mut entries = Vec::new();
        for (file, text) in layout::KERNEL_FILES {
            let ptx = cuda::compile_ptx(file, &layout::kernel_source(text), arch)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.contains(".version"), "{file}: not PTX");
            entries.extend(
                ptx.lines()
                    .filter_map(|l| l.split(".entry ").nth(1))
                    .map(|s| s.trim_end_matches(['(', ' ']).to_string()),
            );
        }
        for name in layout::kernel_names() {
            assert!(
                entries.contains(&name),
                "{arch}: kernel {name} not in the PTX ({entries:?})"
            );
        }
        eprintln!("{arch}: {} kernels compiled", entries.len());
    }
    // A compile error comes back as an error with the compiler's log.
    let e = cuda::compile_ptx(
        "bad.cu",
        "extern \"C\" __global__ void f() { undefined_thing(); }",
        "compute_80",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("undefined_thing"), "{e}");
}

/// Max |a - b| / (1 + max |b|) over two logit rows.
/// The few device builtins of the HIP runtime header that hiprtc puts before a program
/// (`hiprtc_runtime.h`: work-item coordinates, `__syncthreads`, bit casts), written on clang's
/// amdgcn builtins. Everything else the kernels use (the `__global__`/`__shared__` attributes,
/// the math functions) comes from clang's own HIP wrapper headers, the ones hiprtc uses.
#[cfg(feature = "rocm")]
const HIPRTC_BUILTINS: &str = r#"
struct __qwen_dim3 { unsigned x, y, z; };
#define threadIdx (__qwen_dim3{__builtin_amdgcn_workitem_id_x(), __builtin_amdgcn_workitem_id_y(), __builtin_amdgcn_workitem_id_z()})
#define blockIdx (__qwen_dim3{__builtin_amdgcn_workgroup_id_x(), __builtin_amdgcn_workgroup_id_y(), __builtin_amdgcn_workgroup_id_z()})
#define blockDim (__qwen_dim3{__builtin_amdgcn_workgroup_size_x(), __builtin_amdgcn_workgroup_size_y(), __builtin_amdgcn_workgroup_size_z()})
#define gridDim (__qwen_dim3{__builtin_amdgcn_grid_size_x() / __builtin_amdgcn_workgroup_size_x(), __builtin_amdgcn_grid_size_y() / __builtin_amdgcn_workgroup_size_y(), __builtin_amdgcn_grid_size_z() / __builtin_amdgcn_workgroup_size_z()})
#define __forceinline__ inline __attribute__((always_inline))
__device__ inline void __syncthreads() {
    __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
    __builtin_amdgcn_s_barrier();
    __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
}
__device__ inline float __int_as_float(int x) { return __builtin_bit_cast(float, x); }
__device__ inline float __uint_as_float(unsigned x) { return __builtin_bit_cast(float, x); }
__device__ inline unsigned __float_as_uint(float x) { return __builtin_bit_cast(unsigned, x); }
"#;

/// The HIP path of every kernel file compiles for AMD GPUs: clang's HIP front end in hiprtc's
/// mode (`__HIPCC_RTC__`, clang's HIP wrapper headers, [`HIPRTC_BUILTINS`] for the runtime
/// header), device code only, for gfx906 (Vega 20, the ISA of Hygon's DCUs), gfx90a (MI200,
/// 64-wide waves) and gfx1030 (RDNA 2, 32-wide), and every launched kernel is a symbol of the
/// code object. No ROCm needed: the device libraries are not linked (`-nogpulib`). Skips
/// visibly without a clang that has the amdgcn target, unless `QWEN_REQUIRE_HIP_CLANG` is set.
#[cfg(feature = "rocm")]
#[test]
fn kernels_compile_for_amd_gpus_with_clang_hip() {
    use qwen::backend::layout;
    let clang = std::env::var("QWEN_HIP_CLANG").unwrap_or_else(|_| "clang".into());
    let targets = std::process::Command::new(&clang)
        .arg("-print-targets")
        .output();
    let has_amdgcn =
        matches!(&targets, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("amdgcn"));
    if !has_amdgcn {
        if std::env::var_os("QWEN_REQUIRE_HIP_CLANG").is_some() {
            panic!("`{clang}` with the amdgcn target not found and QWEN_REQUIRE_HIP_CLANG is set");
        }
        eprintln!("SKIPPED: rocm: no `{clang}` with the amdgcn target (set QWEN_HIP_CLANG)");
        return;
    }
    let dir = common::out_dir().join(format!("hip-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let builtins = dir.join("hiprtc_builtins.h");
    std::fs::write(&builtins, HIPRTC_BUILTINS).unwrap();
    for arch in ["gfx906", "gfx90a", "gfx1030"] {
        let mut symbols = String::new();
        for (file, text) in layout::KERNEL_FILES {
            let src = dir.join(file).with_extension("hip");
            std::fs::write(&src, layout::kernel_source(text)).unwrap();
            let asm = dir.join(format!("{file}.{arch}.s"));
            let out = std::process::Command::new(&clang)
                .args(["-x", "hip", "--cuda-device-only", "-nogpulib", "-nogpuinc"])
                .arg(format!("--offload-arch={arch}"))
                .args(["-D__HIPCC_RTC__", "-O3", "-S", "-Werror"])
                // The header is inlined into each program, `#pragma once` and all.
                .arg("-Wno-pragma-once-outside-header")
                .args(["-include", "__clang_hip_runtime_wrapper.h", "-include"])
                .arg(&builtins)
                .arg("-o")
                .arg(&asm)
                .arg(&src)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{arch} {file}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            symbols.push_str(&std::fs::read_to_string(&asm).unwrap());
        }
        for name in layout::kernel_names() {
            assert!(
                symbols.contains(&format!(".globl\t{name}\n")),
                "{arch}: kernel {name} not in the code object"
            );
        }
        eprintln!("{arch}: {} kernels compiled", layout::kernel_names().len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every GPU backend present against the CPU on the tiny models (both architectures, several
/// weight formats, f16 and int8 caches): the logits of every prompt token and of forced decode
/// steps. The CPU runs the same weights decoded to f32: the kernels dot f32 activations with
/// decoded weights, while the CPU's integer dots quantize activations (as ggml does), which
/// moves the tiny models' logits by up to 4% (tests/gpu_emulated.rs runs this on the host).
#[test]
fn gpu_forward_matches_cpu_on_tiny_models() {
    let mut ran = false;
    for (name, ty) in [
        ("qwen1-tiny", "f32"),
        ("qwen2-tiny", "q8_0"),
        ("qwen2-tiny", "q4_k"),
    ] {
        let (Some(path), Some(decoded)) = (
            common::tiny_gguf(name, ty),
            common::tiny_gguf_dequantized(name, ty),
        ) else {
            continue;
        };
        let (model, decoded) = (Model::load(&path).unwrap(), Model::load(&decoded).unwrap());
        ran |= gpus_match_cpu(&format!("{name} {ty}"), &model, &decoded, 2);
    }
    if !ran {
        eprintln!("SKIPPED: no GPU backend available: GPU parity not checked");
    }
}

/// Every GPU backend present on `model` against the CPU on `decoded` (the same weights in
/// f32, `cpu_threads` threads): the logits of a 19-token stream, two prompt batches then forced
/// decode steps, with f16 and int8 caches, within 2e-3. Whether any GPU backend ran.
fn gpus_match_cpu(what: &str, model: &Model, decoded: &Model, cpu_threads: usize) -> bool {
    let items = one_sequence(&(0..19).map(|i| (i * 53 + 7) % 1000).collect::<Vec<u32>>());
    let mut ran = false;
    for kv in [KvCacheType::F16, KvCacheType::Q8] {
        for (kind, gpu) in gpu_backends(model, kv) {
            let mut gpu = match gpu {
                Ok(g) => g,
                Err(why) => {
                    eprintln!("SKIPPED: {kind} ({what}): {why}");
                    continue;
                }
            };
            ran = true;
            let p = BackendParams {
                n_threads: cpu_threads,
                ..params(kv)
            };
            let mut cpu = backend::create(BackendKind::Cpu, decoded, &p).unwrap();
            let want = logits_of(decoded, cpu.as_mut(), &items, 13).unwrap();
            let got = logits_of(model, gpu.as_mut(), &items, 13).unwrap();
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                let e = rel_err(g, w);
                assert!(
                    e < 2e-3,
                    "{kind} {what} {kv:?} item {i}: relative error {e}"
                );
            }
            eprintln!("{kind} {what} {kv:?}: {} items match", items.len());
        }
    }
    ran
}

/// The real models' architectures, where their files cannot go (a device machine takes 64 MiB
/// per call): each header in `$QWEN_GPU_HEADERS` (`scripts/zeroed-model.sh header`;
/// scripts/gpu-device.sh sends the 0.5B's and the 1.5B's) rebuilt with pseudo-random weights in
/// the real formats and shapes, every GPU backend's logits against the CPU's on the same
/// weights in f32: prompt batches and forced decode steps, both cache types.
#[test]
fn gpu_matches_cpu_on_real_shapes_with_random_weights() {
    let Some(dir) = std::env::var_os("QWEN_GPU_HEADERS") else {
        eprintln!(
            "SKIPPED: QWEN_GPU_HEADERS not set (a directory of model headers: scripts/gpu-device.sh)"
        );
        return;
    };
    let mut headers: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("QWEN_GPU_HEADERS {dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hdr"))
        .collect();
    headers.sort();
    assert!(!headers.is_empty(), "no *.hdr files in {dir:?}");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut ran = false;
    for hdr in &headers {
        let (path, reference) = common::random_weights::model_and_reference(hdr);
        let (model, decoded) = (
            Model::load(&path).unwrap(),
            Model::load(&reference).unwrap(),
        );
        ran |= gpus_match_cpu(&hdr.display().to_string(), &model, &decoded, threads);
    }
    if !ran {
        eprintln!("SKIPPED: no GPU backend available: real shapes not checked");
    }
}

/// The real 0.5B model: the first 16 greedy tokens on each GPU backend equal the CPU's.
#[test]
fn gpu_greedy_matches_cpu_on_the_real_model() {
    let Some(path) = common::real_model(common::REAL_0_5B) else {
        return;
    };
    let model = Model::load(&path).unwrap();
    let p = BackendParams {
        n_ctx: 256,
        max_batch: 64,
        ..Default::default()
    };
    let mut gpus = Vec::new();
    for kind in [BackendKind::Cuda, BackendKind::Rocm] {
        match backend::create(kind, &model, &p) {
            Ok(b) => gpus.push(b),
            Err(e) => eprintln!("SKIPPED: {kind}: {e}"),
        }
    }
    if gpus.is_empty() {
        return;
    }
    let tok = model.tokenizer().unwrap();
    let prompt = tok.encode(
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        qwen::tokenizer::EncodeMode::Text,
    );
    let mut cpu = backend::create(BackendKind::Cpu, &model, &p).unwrap();
    let want = backend::greedy(&model, cpu.as_mut(), &prompt, 16, |_| true).unwrap();
    for mut g in gpus {
        let got = backend::greedy(&model, g.as_mut(), &prompt, 16, |_| true).unwrap();
        assert_eq!(
            got,
            want,
            "{}: {:?} vs cpu {:?}",
            g.device_name(),
            tok.decode(&got),
            tok.decode(&want)
        );
    }
}

fn session_on(model: &Arc<Model>, backend: BackendKind, n_seq: usize) -> qwen::Result<Session> {
    Session::with_options(
        Arc::clone(model),
        &SessionParams {
            n_ctx: 64,
            n_threads: 2,
            max_batch: 8,
        },
        &SessionOptions {
            kv_cache: KvCacheType::F16,
            n_seq,
            backend,
            device: 0,
        },
    )
}

/// The real 0.5B model, greedy through `Session::eval_greedy`: on a GPU the argmax is taken on
/// the device (4 bytes back per step), and the 16 tokens equal the CPU's.
#[test]
fn gpu_greedy_steps_with_the_argmax_on_the_device_match_the_cpu() {
    let Some(path) = common::real_model(common::REAL_0_5B) else {
        return;
    };
    let model = Arc::new(Model::load(&path).unwrap());
    let tok = model.tokenizer().unwrap();
    let prompt = tok.encode(
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        qwen::tokenizer::EncodeMode::Text,
    );
    let run = |backend| -> qwen::Result<Vec<u32>> {
        let mut s = session_on(&model, backend, 1)?;
        let (last, head) = prompt.split_last().unwrap();
        s.eval(head)?;
        let mut out = vec![s.eval_greedy(*last)?];
        while out.len() < 16 {
            out.push(s.eval_greedy(out[out.len() - 1])?);
        }
        Ok(out)
    };
    let want = run(BackendKind::Cpu).unwrap();
    let mut ran = false;
    for kind in [BackendKind::Cuda, BackendKind::Rocm] {
        match run(kind) {
            Ok(got) => {
                ran = true;
                assert_eq!(
                    got,
                    want,
                    "{kind}: {:?} vs cpu {:?}",
                    tok.decode(&got),
                    tok.decode(&want)
                );
            }
            Err(e) => eprintln!("SKIPPED: {kind}: {e}"),
        }
    }
    if !ran {
        eprintln!("SKIPPED: no GPU backend available: device argmax not checked");
    }
}

/// A session asked for a backend this build or machine lacks fails as `backend::create` does,
/// naming why; the CPU session reports its backend.
#[test]
fn sessions_name_their_backend_or_why_it_is_missing() {
    let Some(path) = common::tiny_gguf("qwen2-tiny", "q8_0") else {
        return;
    };
    let model = Arc::new(Model::load(&path).unwrap());
    let cpu = session_on(&model, BackendKind::Cpu, 1).unwrap();
    assert_eq!(cpu.backend_kind(), BackendKind::Cpu);
    assert!(
        cpu.device_name().starts_with("cpu ("),
        "{}",
        cpu.device_name()
    );
    for (kind, direct) in gpu_backends(&model, KvCacheType::F16) {
        let Err(why) = direct else {
            continue;
        };
        match session_on(&model, kind, 1) {
            Ok(_) => panic!("{kind}: a session was created where the backend is missing"),
            Err(e) => assert_eq!(e.to_string(), why),
        }
    }
}

/// Sessions on each GPU backend present behave as CPU sessions: prefill in chunks, greedy
/// decoding, several sequences decoded in one batch (logits within tolerance); their state
/// cannot be saved (the cache is on the device), which is an error and not a panic.
#[test]
fn gpu_sessions_match_cpu_sessions() {
    let (Some(path), Some(decoded)) = (
        common::tiny_gguf("qwen2-tiny", "q4_k"),
        common::tiny_gguf_dequantized("qwen2-tiny", "q4_k"),
    ) else {
        return;
    };
    let model = Arc::new(Model::load(&path).unwrap());
    // The CPU on the same weights in f32 (see gpu_forward_matches_cpu_on_tiny_models).
    let decoded = Arc::new(Model::load(&decoded).unwrap());
    let mut ran = false;
    for kind in [BackendKind::Cuda, BackendKind::Rocm] {
        let mut gpu = match session_on(&model, kind, 2) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("SKIPPED: {kind} session: {e}");
                continue;
            }
        };
        ran = true;
        assert_eq!(gpu.backend_kind(), kind);
        let mut cpu = session_on(&decoded, BackendKind::Cpu, 2).unwrap();
        // 19 tokens: three chunks of max_batch 8.
        let prompts: [Vec<u32>; 2] = [
            (0..19).map(|i| (i * 41 + 3) % 1000).collect(),
            (0..5).map(|i| (i * 13 + 9) % 1000).collect(),
        ];
        for (seq, p) in prompts.iter().enumerate() {
            let c = cpu.eval_seq(seq, p).unwrap().to_vec();
            let g = gpu.eval_seq(seq, p).unwrap().to_vec();
            assert!(rel_err(&g, &c) < 2e-3, "{kind} prefill of sequence {seq}");
        }
        let mut next = [1u32, 2];
        for step in 0..4 {
            let c = cpu.decode_batch(&[0, 1], &next).unwrap().to_vec();
            let g = gpu.decode_batch(&[0, 1], &next).unwrap().to_vec();
            let v = c.len() / 2;
            for s in 0..2 {
                let (cr, gr) = (&c[s * v..(s + 1) * v], &g[s * v..(s + 1) * v]);
                assert!(rel_err(gr, cr) < 2e-3, "{kind} step {step} sequence {s}");
                next[s] = qwen::sampler::argmax(cr);
            }
        }
        let err = gpu.save_state_with(Vec::new(), None, &[]).unwrap_err();
        assert!(err.to_string().contains("on the device"), "{err}");
    }
    if !ran {
        eprintln!("SKIPPED: no GPU backend available: GPU sessions not checked");
    }
}
