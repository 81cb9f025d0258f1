//! Picks the build of the dot-product kernels for the running CPU, once.
//!
//! The kernels are written once, as plain scalar loops marked `#[inline(always)]`, and compiled
//! twice: as-is (the portable reference), and on x86_64 a second time inside a
//! `#[target_feature(enable = "avx2,fma,f16c")]` function, where LLVM auto-vectorizes the integer
//! loops with 256-bit registers. Rust never reassociates float operations or contracts them into
//! FMAs on its own, so both builds return the same bits; the tests check that. Hand-written
//! intrinsics can replace entries here later without changing the callers.

use std::sync::OnceLock;

use super::{as_blocks, float, k_quants, q4, q5, q8, row_slices};
use crate::gguf::GgmlType;

type DotFn = fn(GgmlType, &[u8], &[u8]) -> f32;

/// One weight row against its activations, both already cut to exactly one row (so the number of
/// elements follows from the lengths). Inlined into each build below.
#[inline(always)]
fn dot_rows(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
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

/// The portable build: whatever the crate's target features allow (SSE2 on plain x86_64).
fn dot_portable(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    dot_rows(ty, w, act)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_avx2_unchecked(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
        dot_rows(ty, w, act)
    }

    pub(super) fn has_avx2() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// Only ever handed out by `select` (and the tests) after `has_avx2()` returned true.
    pub(super) fn dot_avx2(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
        debug_assert!(has_avx2());
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked before this function is chosen).
        unsafe { dot_avx2_unchecked(ty, w, act) }
    }
}

/// The best build for this CPU and its name.
fn select() -> (DotFn, &'static str) {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        return (x86::dot_avx2, "avx2");
    }
    (dot_portable, "portable")
}

static SELECTED: OnceLock<(DotFn, &'static str)> = OnceLock::new();

#[inline]
pub(super) fn vec_dot_rows(ty: GgmlType, w: &[u8], act: &[u8]) -> f32 {
    (SELECTED.get_or_init(select).0)(ty, w, act)
}

/// Which build [`super::vec_dot`] runs on this machine: `"avx2"` or `"portable"`.
pub fn vec_dot_path() -> &'static str {
    SELECTED.get_or_init(select).1
}

/// [`super::vec_dot`] without runtime dispatch: the portable build, the reference every faster
/// kernel is tested against.
pub fn vec_dot_scalar(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> f32 {
    match row_slices(ty, n, w, act) {
        Some((w, act)) => dot_portable(ty, w, act),
        None => 0.0,
    }
}

/// The AVX2 build of [`super::vec_dot`], when this CPU has it (for the tests that compare builds).
#[cfg(test)]
pub(super) fn vec_dot_avx2(ty: GgmlType, n: usize, w: &[u8], act: &[u8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2() {
        let (w, act) = row_slices(ty, n, w, act)?;
        return Some(x86::dot_avx2(ty, w, act));
    }
    let _ = (ty, n, w, act);
    None
}
