//! AVX-512F versions of the f32 kernels in `ops` that attention's blocked (prefill) path runs:
//! twice the lanes of the AVX2 ones, and 32 registers for a larger register tile. Safe
//! `#[target_feature]` functions: `ops` calls them only after checking the CPU. Each output lane
//! is the same chain of fused multiply-adds as in the AVX2 build, so the two give the same bits.

use std::arch::x86_64::*;

/// Whether this CPU runs the kernels of this module.
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx512f") && super::x86_avx2::detected()
}

/// The 16 f32 at `s[i..i + 16]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn load(s: &[f32], i: usize) -> __m512 {
    let s = &s[i..i + 16];
    // SAFETY: `s` holds exactly 16 readable f32; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(s.as_ptr()) }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn store(d: &mut [f32], i: usize, v: __m512) {
    let d = &mut d[i..i + 16];
    // SAFETY: `d` holds exactly 16 writable f32, borrowed exclusively; no alignment needed.
    unsafe { _mm512_storeu_ps(d.as_mut_ptr(), v) }
}

// `gemm_f32` (see `ops::gemm_f32`) for `n` a multiple of 16: tiles of 8 rows × 32 columns in
// registers (16 accumulators; per step two loads of `b`, eight broadcasts of `a`, sixteen fmas),
// then 8 × 16, then single rows.
super::x86_avx2::gemm_f32_kernel!(
    "avx512f",
    __m512,
    16,
    8,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps
);

/// `ops::exp_sub_sum`: its portable code compiled for AVX-512 (one register per 16 lanes; the
/// same operations in the same order, so the portable build's bits).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    super::ops::exp_sub_sum_lanes(x, m)
}

/// `ops::silu_mul`: its portable code compiled for this build's registers (the same operations
/// per element, so the portable build's bits).
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    super::ops::silu_mul_lanes(gate, up)
}

/// `ops::transpose` for `rows` and `cols` multiples of 16: 16×16 blocks through registers
/// (`quant::transpose16`) instead of 256 scalar stores each.
#[target_feature(enable = "avx512f")]
pub(super) fn transpose(
    (rows, cols): (usize, usize),
    src: &[f32],
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    debug_assert!(rows.is_multiple_of(16) && cols.is_multiple_of(16));
    for r0 in (0..rows).step_by(16) {
        for c0 in (0..cols).step_by(16) {
            let mut a = [_mm512_setzero_si512(); 16];
            for (i, x) in a.iter_mut().enumerate() {
                *x = _mm512_castps_si512(load(src, (r0 + i) * lds + c0));
            }
            for (c, x) in crate::quant::transpose16(a).into_iter().enumerate() {
                store(dst, (c0 + c) * ldd + r0, _mm512_castsi512_ps(x));
            }
        }
    }
}
