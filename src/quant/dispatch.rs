//! Picks the kernels for the running CPU, once.
//!
//! A [`Kernels`] table holds one build of the hot paths: the dot products of every weight type
//! with its activation format, and the quantizers of those activations (Q8_0, Q8_1, Q8_K). The
//! portable scalar build is the reference; `x86_avx2`, `x86_avx512` and `aarch64_neon` hold
//! hand-vectorized builds. [`select`] takes the best table this CPU runs, detected at run time, the first time
//! any of them is needed.
//!
//! Results: integer parts are exact in every build and the quantizers produce identical bytes;
//! the float dot products (F32/F16/BF16) return identical bits; the quantized dot products may
//! sum their per-block terms in another order (see the SIMD modules and `simd_tests`).

use std::sync::OnceLock;

use super::q8::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use super::{as_blocks, as_blocks_mut, float, k_quants, q4, q5, q8, GemmOut};
use crate::gguf::GgmlType;

/// A build's matrix kernel: `(type, weight row bytes, weight rows, quantized activation row
/// bytes, activation rows, activation row stride, activation row count, sink)`; returns false,
/// having done nothing, for a type it has no kernel for.
type GemmFn = unsafe fn(GgmlType, usize, &[u8], usize, &[u8], usize, usize, &mut GemmOut) -> bool;

/// One build of the kernels.
///
/// The function pointers are `unsafe` because a SIMD build may only run on a CPU with its
/// instruction set. The invariant that makes calling them sound: a `Kernels` value other than
/// [`SCALAR`] is only ever handed out (by [`select`] and [`all`]) after the CPU was checked for
/// everything its functions need.
pub(super) struct Kernels {
    pub name: &'static str,
    dot: unsafe fn(GgmlType, &[u8], &[u8]) -> f32,
    dot_rows: unsafe fn(GgmlType, usize, &[u8], &[u8], &mut [f32]),
    gemm: GemmFn,
    q8_0: unsafe fn(&[f32], &mut [BlockQ8_0]),
    q8_1: unsafe fn(&[f32], &mut [BlockQ8_1]),
    q8_k: unsafe fn(&[f32], &mut [BlockQ8K]),
}

impl Kernels {
    /// One weight row against its activations, both already cut to exactly one row (so the
    /// number of elements follows from the lengths).
    #[inline]
    pub fn vec_dot(&self, ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
        // SAFETY: this table was handed out only for a CPU that runs it (see the type's docs).
        unsafe { (self.dot)(ty, w, act) }
    }

    /// `out[r]` = [`Self::vec_dot`] of row `r` of `w` (rows of `rb` bytes back to back; `w` holds
    /// at least `out.len()` of them) with `act`, bit for bit, sharing the activation work between
    /// rows where the build can.
    #[inline]
    pub fn vec_dot_rows(&self, ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
        // SAFETY: this table was handed out only for a CPU that runs it (see the type's docs).
        unsafe { (self.dot_rows)(ty, rb, w, act, out) }
    }

    /// The weight rows of `w` (`rb` bytes each) against `n_tok` activation rows of `arb` bytes
    /// in `act` (the first `qrb` of them the quantized row, then the side data of
    /// `gemm_act_row_bytes`), the results handed to `out` (see `GemmOut`) with, for every row,
    /// the bits [`Self::vec_dot`] gives; false (nothing done) when this build has no
    /// matrix kernel for `ty` (or prefers the row kernels for this many activation rows).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn gemm(
        &self,
        ty: GgmlType,
        rb: usize,
        w: &[u8],
        qrb: usize,
        act: &[u8],
        arb: usize,
        n_tok: usize,
        out: &mut GemmOut,
    ) -> bool {
        // SAFETY: this table was handed out only for a CPU that runs it (see the type's docs).
        unsafe { (self.gemm)(ty, rb, w, qrb, act, arb, n_tok, out) }
    }

    /// Quantizes `src` into `dst` (sizes already checked) when `ty` is one of the activation
    /// formats this table accelerates; returns false (and does nothing) for any other type.
    #[inline]
    pub fn quantize_activation(&self, ty: GgmlType, src: &[f32], dst: &mut [u8]) -> bool {
        // SAFETY (all three calls): this table was handed out only for a CPU that runs it.
        match ty {
            GgmlType::Q8_0 => unsafe { (self.q8_0)(src, as_blocks_mut(dst)) },
            GgmlType::Q8_1 => unsafe { (self.q8_1)(src, as_blocks_mut(dst)) },
            GgmlType::Q8_K => unsafe { (self.q8_k)(src, as_blocks_mut(dst)) },
            _ => return false,
        }
        true
    }
}

/// The portable reference: the plain loops of the sibling modules.
pub(super) static SCALAR: Kernels = Kernels {
    name: "scalar",
    dot: dot_scalar,
    dot_rows: dot_rows_scalar,
    gemm: no_gemm,
    q8_0: q8::quantize_q8_0,
    q8_1: q8::quantize_q8_1,
    q8_k: q8::quantize_q8_k,
};

#[allow(clippy::too_many_arguments)]
fn no_gemm(
    _: GgmlType,
    _: usize,
    _: &[u8],
    _: usize,
    _: &[u8],
    _: usize,
    _: usize,
    _: &mut GemmOut,
) -> bool {
    false
}

fn dot_rows_scalar(ty: GgmlType, rb: usize, w: &[u8], act: &[u8], out: &mut [f32]) {
    for (o, r) in out.iter_mut().zip(w.chunks_exact(rb.max(1))) {
        *o = dot_scalar(ty, r, act);
    }
}

fn dot_scalar(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    use GgmlType::*;
    match ty {
        F32 => float::vec_dot_f32(w, act),
        F16 => float::vec_dot_f16(w, act),
        BF16 => float::vec_dot_bf16(w, act),
        Q4_0 => q4::vec_dot_q4_0(as_blocks(w), as_blocks(act)),
        Q4_1 => q4::vec_dot_q4_1(as_blocks(w), as_blocks(act)),
        Q5_0 => q5::vec_dot_q5_0(as_blocks(w), as_blocks(act)),
        Q5_1 => q5::vec_dot_q5_1(as_blocks(w), as_blocks(act)),
        Q8_0 => q8::vec_dot_q8_0(as_blocks(w), as_blocks(act)),
        Q8_1 => q8::vec_dot_q8_1(as_blocks(w), as_blocks(act)),
        Q8_K => q8::vec_dot_q8_k(as_blocks(w), as_blocks(act)),
        Q2_K => k_quants::vec_dot_q2_k(as_blocks(w), as_blocks(act)),
        Q3_K => k_quants::vec_dot_q3_k(as_blocks(w), as_blocks(act)),
        Q4_K => k_quants::vec_dot_q4_k(as_blocks(w), as_blocks(act)),
        Q5_K => k_quants::vec_dot_q5_k(as_blocks(w), as_blocks(act)),
        Q6_K => k_quants::vec_dot_q6_k(as_blocks(w), as_blocks(act)),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::x86_avx2 as k;
    use super::super::x86_avx512 as k512;
    use super::Kernels;

    /// Private to this module: reachable only through [`avx512`], which checks the CPU first.
    static AVX512: Kernels = Kernels {
        name: "avx512",
        dot: k512::vec_dot,
        dot_rows: k512::vec_dot_rows,
        gemm: k512::gemm::<false>,
        q8_0: k512::quantize_q8_0,
        q8_1: k512::quantize_q8_1,
        q8_k: k512::quantize_q8_k,
    };

    /// The AVX-512 (F, BW, VL, VNNI) build, if this CPU has those and AVX2+FMA+F16C (which the
    /// build uses for the types it does not specialise).
    pub(super) fn avx512() -> Option<&'static Kernels> {
        k512::detected().then_some(&AVX512)
    }

    /// Private to this module: reachable only through [`avx512_amx`], which checks the CPU
    /// and the OS first. The AVX-512 build with AMX tiles in its matrix products (same bits).
    static AVX512_AMX: Kernels = Kernels {
        name: "avx512-amx",
        dot: k512::vec_dot,
        dot_rows: k512::vec_dot_rows,
        gemm: k512::gemm::<true>,
        q8_0: k512::quantize_q8_0,
        q8_1: k512::quantize_q8_1,
        q8_k: k512::quantize_q8_k,
    };

    /// The AVX-512 build with AMX-INT8 matrix tiles, if this CPU has them and the OS lets this
    /// process use them.
    pub(super) fn avx512_amx() -> Option<&'static Kernels> {
        k512::amx::detected().then_some(&AVX512_AMX)
    }

    /// Private to this module: reachable only through [`avx2`], which checks the CPU first.
    static AVX2: Kernels = Kernels {
        name: "avx2",
        dot: k::vec_dot,
        dot_rows: k::vec_dot_rows,
        gemm: k::gemm,
        q8_0: k::quantize_q8_0,
        q8_1: k::quantize_q8_1,
        q8_k: k::quantize_q8_k,
    };

    /// Private to this module: reachable only through [`avx2_128`], which checks the CPU first.
    static AVX2_128: Kernels = Kernels {
        name: "avx2-128",
        dot: k::vec_dot_128,
        dot_rows: k::vec_dot_rows_128,
        gemm: k::gemm_128,
        q8_0: k::quantize_q8_0,
        q8_1: k::quantize_q8_1,
        q8_k: k::quantize_q8_k,
    };

    /// The AVX2+FMA+F16C build, if this CPU has all three.
    pub(super) fn avx2() -> Option<&'static Kernels> {
        k::detected().then_some(&AVX2)
    }

    /// The AVX2 build with 128-bit kernels for the 32-element nibble formats, if this CPU has
    /// AVX2+FMA+F16C (it runs on any such CPU; `select` prefers it where 256-bit operations are
    /// split in two).
    pub(super) fn avx2_128() -> Option<&'static Kernels> {
        k::detected().then_some(&AVX2_128)
    }

    /// The fastest x86 build for this CPU: AVX-512 (with AMX tiles where present), else the better of the two
    /// AVX2 builds.
    pub(super) fn best() -> Option<&'static Kernels> {
        if let Some(k) = avx512_amx().or_else(avx512) {
            return Some(k);
        }
        if k::splits_256() {
            avx2_128()
        } else {
            avx2()
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::super::aarch64_neon as k;
    use super::Kernels;

    /// Private to this module: reachable only through [`neon`], which checks the CPU first.
    static NEON: Kernels = Kernels {
        name: "neon",
        dot: k::vec_dot,
        dot_rows: k::vec_dot_rows,
        gemm: k::gemm,
        q8_0: k::quantize_q8_0,
        q8_1: k::quantize_q8_1,
        q8_k: k::quantize_q8_k,
    };

    /// Private to this module: reachable only through [`neon_dotprod`], which checks the CPU.
    static NEON_DOTPROD: Kernels = Kernels {
        name: "neon+dotprod",
        dot: k::vec_dot_dotprod,
        dot_rows: k::vec_dot_rows_dotprod,
        gemm: k::gemm_dotprod,
        q8_0: k::quantize_q8_0,
        q8_1: k::quantize_q8_1,
        q8_k: k::quantize_q8_k,
    };

    pub(super) fn neon() -> Option<&'static Kernels> {
        k::detected().then_some(&NEON)
    }

    pub(super) fn neon_dotprod() -> Option<&'static Kernels> {
        k::detected_dotprod().then_some(&NEON_DOTPROD)
    }
}

/// Every build this CPU runs, the scalar reference first.
#[cfg(test)]
pub(super) fn all() -> Vec<&'static Kernels> {
    builds()
}

/// Every build this CPU runs, the scalar reference first.
fn builds() -> Vec<&'static Kernels> {
    let mut v = vec![&SCALAR];
    #[cfg(target_arch = "x86_64")]
    {
        v.extend(x86::avx2());
        v.extend(x86::avx2_128());
        v.extend(x86::avx512());
        v.extend(x86::avx512_amx());
    }
    #[cfg(target_arch = "aarch64")]
    {
        v.extend(arm::neon());
        v.extend(arm::neon_dotprod());
    }
    v
}

/// The build named by the environment variable `QWEN_KERNELS` (`scalar`, `avx2`, `avx2-128`,
/// `avx512`, `avx512-amx`, `neon`, `neon+dotprod`) if this CPU runs it, else the fastest one. The override is for
/// comparing builds on a whole model (debugging, benchmarks); an unknown or unsupported name is
/// reported on stderr and ignored.
fn select() -> &'static Kernels {
    if let Ok(name) = std::env::var("QWEN_KERNELS") {
        match builds().into_iter().find(|k| k.name == name) {
            Some(k) => return k,
            None => eprintln!("QWEN_KERNELS={name}: not a build this CPU runs; using the default"),
        }
    }
    fastest()
}

/// The fastest build this CPU runs.
fn fastest() -> &'static Kernels {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = x86::best() {
        return k;
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(k) = arm::neon_dotprod().or_else(arm::neon) {
        return k;
    }
    &SCALAR
}

static SELECTED: OnceLock<&'static Kernels> = OnceLock::new();

/// The kernels [`super::vec_dot`] and [`super::quantize_row`] run on this machine.
#[inline]
pub(super) fn selected() -> &'static Kernels {
    SELECTED.get_or_init(select)
}

/// Which build of the kernels [`super::vec_dot`] runs on this machine: `"avx512-amx"` (the
/// AVX-512 build with AMX tiles in the Q4_K, Q6_K and Q5_0 matrix products, the same bits),
/// `"avx512"` (AVX-512 F/BW/VL/VNNI kernels for the K-quants, Q5_0 and Q8_0, AVX2 for the
/// rest), `"avx2"`, `"avx2-128"`
/// (AVX2 with 128-bit kernels for Q4_0/Q4_1/Q5_0/Q5_1, on cores that split 256-bit operations),
/// `"neon"`, `"neon+dotprod"` or `"scalar"`.
pub fn vec_dot_path() -> &'static str {
    selected().name
}
