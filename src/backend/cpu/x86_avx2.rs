//! AVX2 + FMA versions of the f32 kernels in `ops` that attention's matrix products run on.
//! Safe `#[target_feature]` functions: `ops` calls them only after checking the CPU.

use std::arch::x86_64::*;

/// Whether this CPU runs the kernels of this module.
pub(super) fn detected() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The 8 f32 at `s[i..i + 8]`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn load(s: &[f32], i: usize) -> __m256 {
    let s = &s[i..i + 8];
    // SAFETY: `s` holds exactly 8 readable f32; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn store(d: &mut [f32], i: usize, v: __m256) {
    let d = &mut d[i..i + 8];
    // SAFETY: `d` holds exactly 8 writable f32, borrowed exclusively; no alignment needed.
    unsafe { _mm256_storeu_ps(d.as_mut_ptr(), v) }
}

/// `gemm_f32` and its register `tile` for one vector width (see `ops::gemm_f32`):
/// `c[i][j] (+)= Σ_p a[i][p]·b[p][j]` for `n` a multiple of `$w`, in tiles of `$r` rows × two
/// vectors of columns, then `$r` × one vector, then single rows. Each output lane is one fma
/// chain over `p`, so every width gives the same bits. Used here (AVX2: 4 × 16) and by
/// `x86_avx512` (8 × 32); `load`/`store` are the module's `$w`-lane helpers.
macro_rules! gemm_f32_kernel {
    ($features:literal, $vec:ty, $w:literal, $r:literal, $zero:ident, $set1:ident, $fma:ident) => {
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) fn gemm_f32(
            (m, n, k): (usize, usize, usize),
            a: &[f32],
            lda: usize,
            b: &[f32],
            ldb: usize,
            c: &mut [f32],
            ldc: usize,
            accumulate: bool,
        ) {
            debug_assert!(n.is_multiple_of($w));
            let mut i = 0;
            while i < m {
                let rows = (m - i).min($r);
                let mut j = 0;
                while j < n {
                    let cols = if n - j >= 2 * $w { 2 * $w } else { $w };
                    match (rows == $r, cols == 2 * $w) {
                        (true, true) => tile::<$r, 2>(i, j, k, a, lda, b, ldb, c, ldc, accumulate),
                        (true, false) => tile::<$r, 1>(i, j, k, a, lda, b, ldb, c, ldc, accumulate),
                        (false, true) => {
                            for r in i..i + rows {
                                tile::<1, 2>(r, j, k, a, lda, b, ldb, c, ldc, accumulate)
                            }
                        }
                        (false, false) => {
                            for r in i..i + rows {
                                tile::<1, 1>(r, j, k, a, lda, b, ldb, c, ldc, accumulate)
                            }
                        }
                    }
                    j += cols;
                }
                i += rows;
            }
        }

        /// Rows `i..i + R` × columns `j..j + W·V` of `c`.
        #[target_feature(enable = $features)]
        #[inline]
        #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
        fn tile<const R: usize, const V: usize>(
            i: usize,
            j: usize,
            k: usize,
            a: &[f32],
            lda: usize,
            b: &[f32],
            ldb: usize,
            c: &mut [f32],
            ldc: usize,
            accumulate: bool,
        ) {
            let mut acc: [[$vec; V]; R] = [[$zero(); V]; R];
            if accumulate {
                for (r, row) in acc.iter_mut().enumerate() {
                    for (v, x) in row.iter_mut().enumerate() {
                        *x = load(c, (i + r) * ldc + j + $w * v);
                    }
                }
            }
            let arows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * lda..(i + r) * lda + k]);
            for p in 0..k {
                // A plain loop, not `array::from_fn`: that generic function is compiled without
                // this kernel's target features, so it was not inlined here and cost a call
                // (and the vectors a round trip through memory) per step, 2.7% of a prefill at
                // depth 4096.
                let mut bv = [$zero(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = load(b, p * ldb + j + $w * v);
                }
                for r in 0..R {
                    let x = $set1(arows[r][p]);
                    for v in 0..V {
                        acc[r][v] = $fma(x, bv[v], acc[r][v]);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, &x) in row.iter().enumerate() {
                    store(c, (i + r) * ldc + j + $w * v, x);
                }
            }
        }
    };
}
pub(super) use gemm_f32_kernel;

gemm_f32_kernel!(
    "avx2,fma",
    __m256,
    8,
    4,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps
);

// ---------------------------------------------------------------------------------------------
// Decode attention over the KV cache: a query against many key rows, and the weighted sum of
// many value rows. Rows are `stride` elements apart (the cache interleaves the kv heads), of
// f32 or of f16 bits; the head size is a multiple of 8.

/// Whether this CPU also converts f16 (the rows of an f16 cache).
pub(super) fn detected_f16c() -> bool {
    detected() && is_x86_feature_detected!("f16c")
}

/// The 8 f16 at `s[i..i + 8]` as f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_f16(s: &[[u8; 2]], i: usize) -> __m256 {
    let s = &s[i..i + 8];
    // SAFETY: `s` holds exactly 8 readable f16 (16 bytes); no alignment needed.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
}

/// Lane `r` = the sum of the 8 lanes of `a[r]`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn sum8x8(a: &[__m256; 8]) -> __m256 {
    // After two rounds of pairwise sums, each 128-bit half holds four rows' partial sums.
    let u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    let u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(u0, u1),
        _mm256_permute2f128_ps::<0x31>(u0, u1),
    )
}

/// The sum of the 8 lanes of `a`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn sum8(a: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The decode-attention pair for one row element type: `$dot` (`out[j] = q · row j`, eight rows
/// at a time so that one transposing sum serves all eight) and `$axpy` (`out += Σ_j p[j]·row j`,
/// the output held in registers 64 values at a time while the rows stream past).
macro_rules! attention_rows {
    ($dot:ident, $axpy:ident, $elem:ty, $load:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        pub(super) fn $dot(q: &[f32], k: &[$elem], stride: usize, out: &mut [f32]) {
            let hd = q.len();
            debug_assert!(hd.is_multiple_of(8));
            let mut j = 0;
            while j + 8 <= out.len() {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..hd).step_by(8) {
                    let qv = load(q, c);
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(qv, $load(k, (j + r) * stride + c), *a);
                    }
                }
                store(out, j, sum8x8(&acc));
                j += 8;
            }
            for (j, o) in out.iter_mut().enumerate().skip(j) {
                let mut a = _mm256_setzero_ps();
                for c in (0..hd).step_by(8) {
                    a = _mm256_fmadd_ps(load(q, c), $load(k, j * stride + c), a);
                }
                *o = sum8(a);
            }
        }

        #[target_feature(enable = $features)]
        pub(super) fn $axpy(out: &mut [f32], p: &[f32], v: &[$elem], stride: usize) {
            let hd = out.len();
            debug_assert!(hd.is_multiple_of(8));
            let mut c0 = 0;
            while c0 + 64 <= hd {
                let mut acc: [__m256; 8] = std::array::from_fn(|i| load(out, c0 + 8 * i));
                for (j, &pj) in p.iter().enumerate() {
                    let pv = _mm256_set1_ps(pj);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(pv, $load(v, j * stride + c0 + 8 * i), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    store(out, c0 + 8 * i, *a);
                }
                c0 += 64;
            }
            // A head size that is not a multiple of 64: the rest one vector at a time.
            for c in (c0..hd).step_by(8) {
                let mut a = load(out, c);
                for (j, &pj) in p.iter().enumerate() {
                    a = _mm256_fmadd_ps(_mm256_set1_ps(pj), $load(v, j * stride + c), a);
                }
                store(out, c, a);
            }
        }
    };
}

attention_rows!(dot_rows_f32, axpy_rows_f32, f32, load, "avx2,fma");
attention_rows!(
    dot_rows_f16,
    axpy_rows_f16,
    [u8; 2],
    load_f16,
    "avx2,fma,f16c"
);

/// The 8 i8 at `s[i..i + 8]` as f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn load_i8(s: &[i8], i: usize) -> __m256 {
    let s = &s[i..i + 8];
    // SAFETY: `s` holds exactly 8 readable bytes; no alignment needed.
    let b = unsafe { _mm_loadl_epi64(s.as_ptr().cast()) };
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
}

/// Where an int8 cache's rows are: elements `stride` apart per position, their scales
/// `scale_stride` apart, one scale per `block` elements (a multiple of 8 dividing the row).
#[derive(Clone, Copy)]
pub(super) struct Q8Rows {
    pub stride: usize,
    pub scale_stride: usize,
    pub block: usize,
}

/// [`dot_rows_f32`] over int8 rows with a scale per block: each block's sum times its scale.
#[target_feature(enable = "avx2,fma")]
pub(super) fn dot_rows_q8(q: &[f32], k: &[i8], ks: &[f32], at: Q8Rows, out: &mut [f32]) {
    let (hd, qb) = (q.len(), at.block);
    debug_assert!(qb.is_multiple_of(8) && hd.is_multiple_of(qb));
    let mut j = 0;
    while j + 8 <= out.len() {
        let mut acc = [_mm256_setzero_ps(); 8];
        for b in 0..hd / qb {
            let mut part = [_mm256_setzero_ps(); 8];
            for c in (b * qb..(b + 1) * qb).step_by(8) {
                let qv = load(q, c);
                for (r, s) in part.iter_mut().enumerate() {
                    *s = _mm256_fmadd_ps(qv, load_i8(k, (j + r) * at.stride + c), *s);
                }
            }
            for (r, (a, s)) in acc.iter_mut().zip(part).enumerate() {
                let scale = _mm256_set1_ps(ks[(j + r) * at.scale_stride + b]);
                *a = _mm256_fmadd_ps(scale, s, *a);
            }
        }
        store(out, j, sum8x8(&acc));
        j += 8;
    }
    for (j, o) in out.iter_mut().enumerate().skip(j) {
        let mut a = _mm256_setzero_ps();
        for b in 0..hd / qb {
            let mut s = _mm256_setzero_ps();
            for c in (b * qb..(b + 1) * qb).step_by(8) {
                s = _mm256_fmadd_ps(load(q, c), load_i8(k, j * at.stride + c), s);
            }
            a = _mm256_fmadd_ps(_mm256_set1_ps(ks[j * at.scale_stride + b]), s, a);
        }
        *o = sum8(a);
    }
}

/// [`axpy_rows_f32`] over int8 rows with a scale per block.
#[target_feature(enable = "avx2,fma")]
pub(super) fn axpy_rows_q8(out: &mut [f32], p: &[f32], v: &[i8], vs: &[f32], at: Q8Rows) {
    let (hd, qb) = (out.len(), at.block);
    debug_assert!(qb.is_multiple_of(8) && hd.is_multiple_of(qb));
    let weight =
        |j: usize, c: usize, pj: f32| _mm256_set1_ps(pj * vs[j * at.scale_stride + c / qb]);
    let mut c0 = 0;
    while c0 + 64 <= hd {
        let mut acc: [__m256; 8] = std::array::from_fn(|i| load(out, c0 + 8 * i));
        for (j, &pj) in p.iter().enumerate() {
            for (i, a) in acc.iter_mut().enumerate() {
                let c = c0 + 8 * i;
                *a = _mm256_fmadd_ps(weight(j, c, pj), load_i8(v, j * at.stride + c), *a);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            store(out, c0 + 8 * i, *a);
        }
        c0 += 64;
    }
    for c in (c0..hd).step_by(8) {
        let mut a = load(out, c);
        for (j, &pj) in p.iter().enumerate() {
            a = _mm256_fmadd_ps(weight(j, c, pj), load_i8(v, j * at.stride + c), a);
        }
        store(out, c, a);
    }
}

/// `dst[i]` = f16 `src[i]` as f32, for lengths that are a multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_to_f32_row(src: &[[u8; 2]], dst: &mut [f32]) {
    debug_assert!(dst.len().is_multiple_of(8));
    for i in (0..dst.len()).step_by(8) {
        store(dst, i, load_f16(src, i));
    }
}

/// `ops::exp_sub_sum`: its portable code compiled for AVX2 + FMA (8 lanes a register; Rust
/// never fuses a multiply and an add by itself, so the bits are the portable build's).
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    super::ops::exp_sub_sum_lanes(x, m)
}

/// `ops::silu_mul`: its portable code compiled for this build's registers (the same operations
/// per element, so the portable build's bits).
#[target_feature(enable = "avx2,fma")]
pub(super) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    super::ops::silu_mul_lanes(gate, up)
}
