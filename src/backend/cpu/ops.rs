//! Elementwise and reduction ops of the forward pass on f32 rows (portable reference versions).

use crate::quant::f16_to_f32;

/// RMSNorm as Qwen computes it: `x * rsqrt(mean(x²) + eps) * w`, in f32.
pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    // The squares summed in f64, as ggml does (the reference llama.cpp output is tested against
    // leans on it: an f32 sum in another order flipped a near-tie in greedy decoding), in eight
    // lanes so the sum vectorizes; the f64 rounding of the order is far below f32's.
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v * v) as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| (v * v) as f64).sum();
    let ss = ((acc.iter().sum::<f64>() + tail) / x.len() as f64) as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = xi * scale * wi;
    }
}

/// RoPE's cos and sin at position `pos` for each inverse frequency, times `mscale` (YaRN's
/// attention factor; exactly 1 leaves them untouched).
pub fn rope_table(pos: usize, inv_freq: &[f32], mscale: f32, cos: &mut [f32], sin: &mut [f32]) {
    let p = pos as f32;
    for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
        let angle = p * f;
        *c = angle.cos() * mscale;
        *s = angle.sin() * mscale;
    }
}

/// NeoX / "rotate-half" RoPE on one head: pairs are (i, i + D/2).
pub fn rope_neox(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (a, b) = head.split_at_mut(half);
    for i in 0..half {
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0 * cos[i] - x1 * sin[i];
        b[i] = x1 * cos[i] + x0 * sin[i];
    }
}

/// In-place numerically stable softmax: `e^(x − max) / Σ`, with [`exp_nonpositive`] (the
/// blocked attention's exponential, so decode and prefill weigh alike).
pub fn softmax(x: &mut [f32]) {
    let sum = exp_sub_sum(x, max_f32(x));
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Lanes of the reductions below: they keep 16 partial results and combine them in one fixed
/// order, which the compiler can vectorize (a single running sum is a chain it must keep in
/// order) and which gives every build the same bits.
const LANES: usize = 16;

/// The largest element of `x` (−∞ for an empty slice; NaNs are skipped, as by `f32::max`).
pub fn max_f32(x: &[f32]) -> f32 {
    // `if v > m` rather than `f32::max`: the same result here (`m` is never NaN, a NaN `v` is
    // never greater), and it compiles to a vector max where `f32::max`'s NaN rule made LLVM
    // emit one scalar compare-and-select per element.
    let greater = |m: f32, v: f32| if v > m { v } else { m };
    let mut m = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = greater(*m, v);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&m)
        .copied()
        .fold(f32::NEG_INFINITY, greater)
}

/// `x[i] = e^(x[i] − m)` for every `i` (`m` at least every element: the exponents are ≤ 0),
/// returning their sum: a softmax's numerators and denominator in one pass.
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX512.get_or_init(super::x86_avx512::detected) {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
        return unsafe { super::x86_avx512::exp_sub_sum(x, m) };
    }
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX2.get_or_init(super::x86_avx2::detected) {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { super::x86_avx2::exp_sub_sum(x, m) };
    }
    exp_sub_sum_lanes(x, m)
}

/// [`exp_sub_sum`] in portable code, inlined into the AVX2 and AVX-512 copies (the same operations
/// in the same order, 8 or 16 lanes to a register there).
#[inline(always)]
pub(super) fn exp_sub_sum_lanes(x: &mut [f32], m: f32) -> f32 {
    let mut sums = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (s, v) in sums.iter_mut().zip(c) {
            *v = exp_nonpositive(*v - m);
            *s += *v;
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - m);
        tail += *v;
    }
    // Halve the lanes until one is left: the order a 512-bit, 256-bit or 128-bit register
    // reduction takes.
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            sums[i] += sums[i + n];
        }
    }
    sums[0] + tail
}

/// SwiGLU: `gate = silu(gate) * up`, with `silu(x) = x·σ(x)` and σ from `e = e^−|x|`
/// ([`exp_nonpositive`], branch-free so the loop vectorizes): `1 / (1 + e)` for `x >= 0`,
/// `e / (1 + e)` below. On x86-64 the same code compiled for AVX-512 or AVX2 where the CPU has
/// them (the same operations per element, so the same bits): built for the baseline's 4-lane
/// SSE it was 7% of a 1.5B prefill.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX512.get_or_init(super::x86_avx512::detected) {
        // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
        return unsafe { super::x86_avx512::silu_mul(gate, up) };
    }
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX2.get_or_init(super::x86_avx2::detected) {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { super::x86_avx2::silu_mul(gate, up) };
    }
    silu_mul_lanes(gate, up)
}

/// [`silu_mul`] in portable code, inlined into the AVX2 and AVX-512 copies.
#[inline(always)]
pub(super) fn silu_mul_lanes(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let e = exp_nonpositive(-x.abs());
        let r = 1.0 / (1.0 + e);
        let sigma = if x >= 0.0 { r } else { e * r };
        *g = x * sigma * u;
    }
}

pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise the reduction.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += a * x`
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// `c[i][j] = Σ_p a[i][p]·b[p][j]` (or `c[i][j] +=` that sum when `accumulate`) for
/// `i < m`, `j < n`, `p < k`: row-major matrices with leading dimensions (elements between
/// rows) `lda`, `ldb`, `ldc`. Runs an AVX-512 kernel where the CPU has one and `n` is a
/// multiple of 16, else an AVX2+FMA one where `n` is a multiple of 8 (the same bits: one
/// rounding per multiply-add in both, two in the portable loop).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() >= (m - 1) * lda + k
            && (k == 0 || b.len() >= (k - 1) * ldb + n)
            && c.len() >= (m - 1) * ldc + n,
        "gemm_f32: matrices too small for {m}x{n}x{k}"
    );
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(16) && *HAS_AVX512.get_or_init(super::x86_avx512::detected) {
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { super::x86_avx512::gemm_f32((m, n, k), a, lda, b, ldb, c, ldc, accumulate) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if n.is_multiple_of(8) && *HAS_AVX2.get_or_init(super::x86_avx2::detected) {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { super::x86_avx2::gemm_f32((m, n, k), a, lda, b, ldb, c, ldc, accumulate) };
        return;
    }
    for i in 0..m {
        let crow = &mut c[i * ldc..i * ldc + n];
        if !accumulate {
            crow.fill(0.0);
        }
        for p in 0..k {
            axpy(crow, a[i * lda + p], &b[p * ldb..p * ldb + n]);
        }
    }
}

/// `dst[c·ldd + r] = src[r·lds + c]` for `r < rows`, `c < cols`: attention's chunk of keys
/// turned into the [hd, keys] operand of its score product. Where the CPU has AVX-512, the
/// whole 16×16 blocks go through registers.
pub fn transpose(
    (rows, cols): (usize, usize),
    src: &[f32],
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
) {
    let (mut rows16, mut cols16) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if *HAS_AVX512.get_or_init(super::x86_avx512::detected) {
        (rows16, cols16) = (rows / 16 * 16, cols / 16 * 16);
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { super::x86_avx512::transpose((rows16, cols16), src, lds, dst, ldd) };
    }
    for r in 0..rows {
        // Rows the blocks covered still have their columns past the last block.
        let from = if r < rows16 { cols16 } else { 0 };
        for c in from..cols {
            dst[c * ldd + r] = src[r * lds + c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
static HAS_AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
#[cfg(target_arch = "x86_64")]
static HAS_AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
#[cfg(target_arch = "x86_64")]
static HAS_F16C: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Checks that `rows` holds `n` rows of `width` elements `stride` apart.
fn check_rows(len: usize, n: usize, width: usize, stride: usize) {
    assert!(
        n == 0
            || (n - 1)
                .checked_mul(stride)
                .and_then(|a| a.checked_add(width))
                <= Some(len),
        "attention rows: {n} rows of {width} at stride {stride} need more than {len} elements"
    );
}

/// Decode attention's scores: `out[j] = q · k[j·stride..][..q.len()]` for every `j`, the query
/// of one head against that head's cached keys (f32).
pub fn dot_rows_f32(q: &[f32], k: &[f32], stride: usize, out: &mut [f32]) {
    check_rows(k.len(), out.len(), q.len(), stride);
    #[cfg(target_arch = "x86_64")]
    if q.len().is_multiple_of(8) && *HAS_AVX2.get_or_init(super::x86_avx2::detected) {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { super::x86_avx2::dot_rows_f32(q, k, stride, out) };
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot_f32(q, &k[j * stride..j * stride + q.len()]);
    }
}

/// [`dot_rows_f32`] over keys stored as f16 bits.
pub fn dot_rows_f16(q: &[f32], k: &[[u8; 2]], stride: usize, out: &mut [f32]) {
    check_rows(k.len(), out.len(), q.len(), stride);
    #[cfg(target_arch = "x86_64")]
    if q.len().is_multiple_of(8) && *HAS_F16C.get_or_init(super::x86_avx2::detected_f16c) {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        unsafe { super::x86_avx2::dot_rows_f16(q, k, stride, out) };
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        let row = &k[j * stride..j * stride + q.len()];
        *o = dot_f32_with(q, |i| f16_to_f32(row[i]));
    }
}

/// Decode attention's output: `out += Σ_j p[j]·v[j·stride..][..out.len()]`, one head's cached
/// values weighted by its attention probabilities (f32).
pub fn axpy_rows_f32(out: &mut [f32], p: &[f32], v: &[f32], stride: usize) {
    check_rows(v.len(), p.len(), out.len(), stride);
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8) && *HAS_AVX2.get_or_init(super::x86_avx2::detected) {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { super::x86_avx2::axpy_rows_f32(out, p, v, stride) };
        return;
    }
    let hd = out.len();
    for (j, &pj) in p.iter().enumerate() {
        axpy(out, pj, &v[j * stride..j * stride + hd]);
    }
}

/// [`axpy_rows_f32`] over values stored as f16 bits.
pub fn axpy_rows_f16(out: &mut [f32], p: &[f32], v: &[[u8; 2]], stride: usize) {
    check_rows(v.len(), p.len(), out.len(), stride);
    #[cfg(target_arch = "x86_64")]
    if out.len().is_multiple_of(8) && *HAS_F16C.get_or_init(super::x86_avx2::detected_f16c) {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        unsafe { super::x86_avx2::axpy_rows_f16(out, p, v, stride) };
        return;
    }
    let hd = out.len();
    for (j, &pj) in p.iter().enumerate() {
        for (o, &h) in out.iter_mut().zip(&v[j * stride..j * stride + hd]) {
            *o += pj * f16_to_f32(h);
        }
    }
}

/// `dst[i]` = the f16 bits `src[i]` as f32 (exact), for `i < dst.len()`: the blocked
/// attention's decoding of F16 cache rows.
pub fn f16_to_f32_row(src: &[[u8; 2]], dst: &mut [f32]) {
    let src = &src[..dst.len()];
    #[cfg(target_arch = "x86_64")]
    if dst.len().is_multiple_of(8) && *HAS_F16C.get_or_init(super::x86_avx2::detected_f16c) {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        unsafe { super::x86_avx2::f16_to_f32_row(src, dst) };
        return;
    }
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = f16_to_f32(h);
    }
}

/// The layout of an int8 KV cache's rows for [`dot_rows_q8`] and [`axpy_rows_q8`]: elements
/// `stride` apart per position, scales `scale_stride` apart, one scale per `block` elements.
#[derive(Clone, Copy, Debug)]
pub struct Q8Rows {
    pub stride: usize,
    pub scale_stride: usize,
    pub block: usize,
}

impl Q8Rows {
    /// Checks that the rows and their scales hold `n` rows of `width`, whole blocks.
    fn check(&self, (len, scales): (usize, usize), n: usize, width: usize) {
        assert!(
            self.block > 0 && width.is_multiple_of(self.block),
            "attention rows: {width} values are not whole blocks of {}",
            self.block
        );
        check_rows(len, n, width, self.stride);
        check_rows(scales, n, width / self.block, self.scale_stride);
    }

    /// Whether the AVX2 kernels take this layout (blocks of whole vectors).
    #[cfg(target_arch = "x86_64")]
    fn simd(&self) -> Option<super::x86_avx2::Q8Rows> {
        let avx2 = *HAS_AVX2.get_or_init(super::x86_avx2::detected);
        (avx2 && self.block.is_multiple_of(8)).then_some(super::x86_avx2::Q8Rows {
            stride: self.stride,
            scale_stride: self.scale_stride,
            block: self.block,
        })
    }
}

/// [`dot_rows_f32`] over int8 keys: row `j`'s block `b` is `ks[j·scale_stride + b]` times its
/// int8 values.
pub fn dot_rows_q8(q: &[f32], k: &[i8], ks: &[f32], at: Q8Rows, out: &mut [f32]) {
    at.check((k.len(), ks.len()), out.len(), q.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = at.simd() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd`).
        unsafe { super::x86_avx2::dot_rows_q8(q, k, ks, simd, out) };
        return;
    }
    let qb = at.block;
    for (j, o) in out.iter_mut().enumerate() {
        let mut sum = 0.0;
        for (b, qs) in q.chunks_exact(qb).enumerate() {
            let row = &k[j * at.stride + b * qb..j * at.stride + (b + 1) * qb];
            sum += ks[j * at.scale_stride + b] * dot_f32_with(qs, |i| row[i] as f32);
        }
        *o = sum;
    }
}

/// [`axpy_rows_f32`] over int8 values with a scale per block (see [`dot_rows_q8`]).
pub fn axpy_rows_q8(out: &mut [f32], p: &[f32], v: &[i8], vs: &[f32], at: Q8Rows) {
    at.check((v.len(), vs.len()), p.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = at.simd() {
        // SAFETY: the CPU has AVX2 and FMA (checked by `simd`).
        unsafe { super::x86_avx2::axpy_rows_q8(out, p, v, vs, simd) };
        return;
    }
    let qb = at.block;
    for (j, &pj) in p.iter().enumerate() {
        for (b, o) in out.chunks_exact_mut(qb).enumerate() {
            let a = pj * vs[j * at.scale_stride + b];
            let row = &v[j * at.stride + b * qb..j * at.stride + (b + 1) * qb];
            for (o, &x) in o.iter_mut().zip(row) {
                *o += a * x as f32;
            }
        }
    }
}

/// `Σ q[i]·x(i)` with eight accumulators, so that the reduction vectorizes.
#[inline(always)]
pub(crate) fn dot_f32_with(q: &[f32], x: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = q.len() / 8;
    for c in 0..chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += q[c * 8 + j] * x(c * 8 + j);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (i, &qi) in q.iter().enumerate().skip(chunks * 8) {
        s += qi * x(i);
    }
    s
}

/// `e^x` for `x <= 0` (softmax's shifted scores; larger inputs are clamped to 0), within 2 ulp
/// of the exact value down to −87.3, the smallest normal result, which smaller inputs (−∞
/// included) return: Cody–Waite reduction
/// `x = n·ln 2 + r`, a degree-6 polynomial for `e^r` on |r| <= ln 2 / 2, and `2^n` put into the
/// exponent bits. Branch-free, so loops over it vectorize.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Below ln(2^-126) the result would be subnormal: clamp (softmax weights that small add
    // nothing a sum of weights >= 1 can hold).
    let x = x.clamp(-87.33, 0.0);
    // n = round(x·log2 e), by the 1.5·2^23 trick (exact for |x·log2 e| < 2^22).
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * LOG2E + SHIFT;
    let n = shifted - SHIFT;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r ≈ 1 + r + r²·P(r), P from Cephes' expf.
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = (p * r * r + r) + 1.0;
    // 2^n with n in −126..=0: the biased exponent n + 127 >= 1. n as an integer from the
    // shifted sum's bits (1.5·2^23 + n lies in 1.5·2^23's binade, where the ulp is 1: its bits
    // are 1.5·2^23's plus n), not `n as i32`, whose saturating conversion does not vectorize.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    e * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::f32_to_f16;

    /// Values in [-1, 1) from a xorshift sequence.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every head size class (SIMD multiples of 8 and 64 with and without a rest, and a size
    /// only the portable loop takes), every count of rows around the eight-row step, rows of
    /// an interleaved cache (stride > head size): the decode-attention kernels against an f64
    /// sum of the same products.
    #[test]
    fn attention_rows_match_an_f64_reference() {
        for hd in [6, 8, 24, 64, 72, 128, 136] {
            for n in [0, 1, 7, 8, 9, 17, 40] {
                let stride = 2 * hd + 8;
                let q = values(hd, 7 + hd as u32);
                let p = values(n, 11 + n as u32);
                let k32 = values(n.max(1) * stride, 3);
                let k16: Vec<[u8; 2]> = k32.iter().map(|&x| f32_to_f16(x)).collect();
                let k16f: Vec<f32> = k16.iter().map(|&h| f16_to_f32(h)).collect();
                for (rows, f16) in [(&k32, false), (&k16f, true)] {
                    let mut scores = vec![0.0; n];
                    let mut out = values(hd, 5);
                    let out0 = out.clone();
                    if f16 {
                        dot_rows_f16(&q, &k16, stride, &mut scores);
                        axpy_rows_f16(&mut out, &p, &k16, stride);
                    } else {
                        dot_rows_f32(&q, &k32, stride, &mut scores);
                        axpy_rows_f32(&mut out, &p, &k32, stride);
                    }
                    for (j, &s) in scores.iter().enumerate() {
                        let row = &rows[j * stride..j * stride + hd];
                        let want: f64 = q.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum();
                        assert!(
                            (s as f64 - want).abs() < 1e-5 * hd as f64,
                            "hd {hd} n {n} f16 {f16} row {j}"
                        );
                    }
                    for (c, &o) in out.iter().enumerate() {
                        let want = out0[c] as f64
                            + (0..n)
                                .map(|j| p[j] as f64 * rows[j * stride + c] as f64)
                                .sum::<f64>();
                        assert!(
                            (o as f64 - want).abs() < 1e-5 * (n + 1) as f64,
                            "hd {hd} n {n} f16 {f16} col {c}"
                        );
                    }
                }
            }
        }
    }

    /// The int8 kernels against an f64 sum of scale times value, blocks of 8, 16 and 32 and a
    /// block of the whole row.
    #[test]
    fn int8_attention_rows_match_an_f64_reference() {
        for (hd, qb) in [(8, 8), (64, 32), (72, 72), (80, 16), (6, 6)] {
            for n in [0, 3, 8, 13] {
                let lay = Q8Rows {
                    stride: hd * 3,
                    scale_stride: 3 * hd / qb + 1,
                    block: qb,
                };
                let q = values(hd, 9);
                let p = values(n, 4);
                let rows: Vec<i8> = values(n.max(1) * lay.stride, 6)
                    .iter()
                    .map(|&x| (x * 127.0) as i8)
                    .collect();
                let scales = values(n.max(1) * lay.scale_stride, 8);
                let elem = |j: usize, c: usize| {
                    scales[j * lay.scale_stride + c / qb] as f64 * rows[j * lay.stride + c] as f64
                };
                let mut scores = vec![0.0; n];
                dot_rows_q8(&q, &rows, &scales, lay, &mut scores);
                for (j, &s) in scores.iter().enumerate() {
                    let want: f64 = (0..hd).map(|c| q[c] as f64 * elem(j, c)).sum();
                    assert!(
                        (s as f64 - want).abs() < 1e-3,
                        "hd {hd} n {n} row {j}: {s} vs {want}"
                    );
                }
                let mut out = values(hd, 2);
                let out0 = out.clone();
                axpy_rows_q8(&mut out, &p, &rows, &scales, lay);
                for (c, &o) in out.iter().enumerate() {
                    let want =
                        out0[c] as f64 + (0..n).map(|j| p[j] as f64 * elem(j, c)).sum::<f64>();
                    assert!(
                        (o as f64 - want).abs() < 1e-3,
                        "hd {hd} n {n} col {c}: {o} vs {want}"
                    );
                }
            }
        }
    }

    /// Every f16 bit pattern but the NaNs converts exactly as the scalar conversion does.
    #[test]
    fn f16_rows_convert_exactly() {
        let src: Vec<[u8; 2]> = (0..=u16::MAX).map(u16::to_le_bytes).collect();
        let mut dst = vec![0.0; src.len()];
        f16_to_f32_row(&src, &mut dst);
        for (&h, &d) in src.iter().zip(&dst) {
            let want = f16_to_f32(h);
            assert!(
                want.to_bits() == d.to_bits() || (want.is_nan() && d.is_nan()),
                "{h:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "attention rows")]
    fn attention_rows_too_short_are_refused() {
        let mut out = [0.0; 3];
        dot_rows_f32(&[0.0; 8], &[0.0; 20], 8, &mut out);
    }

    #[test]
    fn rms_norm_unit_rows() {
        let mut out = [0.0; 4];
        rms_norm(&mut out, &[2.0, 2.0, 2.0, 2.0], &[1.0, 2.0, 1.0, 1.0], 0.0);
        assert_eq!(out, [1.0, 2.0, 1.0, 1.0]);
    }

    #[test]
    fn rope_rotates_pairs_half_apart() {
        let mut h = [1.0, 0.0, 0.0, 1.0];
        // angle pi/2 for pair 0, angle 0 for pair 1
        rope_neox(&mut h, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(h, [0.0, 0.0, 1.0, 1.0]);
    }

    /// Every build of [`gemm_f32`] this CPU runs: the portable loop, AVX2 (4×16 tiles) and
    /// AVX-512 (8×32 tiles) where present.
    #[allow(clippy::type_complexity)]
    fn gemm_builds() -> Vec<(&'static str, GemmF32)> {
        #[allow(unused_mut)]
        let mut builds: Vec<(&'static str, GemmF32)> = vec![("dispatched", gemm_f32)];
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::x86_avx2::detected() {
                // SAFETY (of the call inside): AVX2 and FMA were detected just above.
                builds.push(("avx2", |d, a, lda, b, ldb, c, ldc, acc| unsafe {
                    super::super::x86_avx2::gemm_f32(d, a, lda, b, ldb, c, ldc, acc)
                }));
            }
            if super::super::x86_avx512::detected() {
                // SAFETY (of the call inside): AVX-512F was detected just above.
                builds.push(("avx512", |d, a, lda, b, ldb, c, ldc, acc| unsafe {
                    super::super::x86_avx512::gemm_f32(d, a, lda, b, ldb, c, ldc, acc)
                }));
            }
        }
        builds
    }

    type GemmF32 = fn((usize, usize, usize), &[f32], usize, &[f32], usize, &mut [f32], usize, bool);

    #[test]
    fn exp_nonpositive_of_zero_is_exactly_one() {
        // The blocked attention skips the call when the exponent is ±0 (a row's maximum did
        // not move) and uses 1.0: the same bits only because of this.
        assert_eq!(exp_nonpositive(0.0).to_bits(), 1.0f32.to_bits());
        assert_eq!(exp_nonpositive(-0.0).to_bits(), 1.0f32.to_bits());
    }

    #[test]
    fn transpose_matches_the_naive_one() {
        for (rows, cols) in [
            (1, 16),
            (16, 16),
            (64, 64),
            (37, 64),
            (64, 128),
            (33, 72),
            (5, 3),
        ] {
            let lds = cols + 3;
            let ldd = rows + 5;
            let src: Vec<f32> = (0..rows * lds).map(|i| i as f32 * 0.5 - 7.0).collect();
            let mut dst = vec![f32::NAN; cols * ldd];
            transpose((rows, cols), &src, lds, &mut dst, ldd);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * ldd + r],
                        src[r * lds + c],
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
            // Nothing outside the transposed rectangle is written.
            for c in 0..cols {
                assert!(dst[c * ldd + rows..(c + 1) * ldd]
                    .iter()
                    .all(|x| x.is_nan()));
            }
        }
    }

    #[test]
    fn gemm_f32_matches_the_naive_product() {
        // Shapes around the 4×16 (AVX2) and 8×32 (AVX-512) register tiles, with leading
        // dimensions wider than the rows. Each build gets the shapes it takes (n a multiple of
        // its vector width; the dispatcher any).
        for (m, n, k) in [
            (1, 8, 1),
            (3, 8, 5),
            (4, 16, 7),
            (5, 24, 64),
            (9, 40, 3),
            (6, 5, 4),
            (8, 32, 9),
            (17, 48, 5),
            (112, 64, 64),
            (7, 16, 2),
        ] {
            for (name, gemm) in gemm_builds() {
                let width = match name {
                    "avx2" => 8,
                    "avx512" => 16,
                    _ => 1,
                };
                if n % width == 0 {
                    check_gemm(name, gemm, (m, n, k));
                }
            }
        }
    }

    fn check_gemm(name: &str, gemm: GemmF32, (m, n, k): (usize, usize, usize)) {
        let (lda, ldb, ldc) = (k + 3, n + 5, n + 1);
        let a: Vec<f32> = (0..m * lda)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..k * ldb)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        for accumulate in [false, true] {
            let mut c: Vec<f32> = (0..m * ldc).map(|i| i as f32).collect();
            let before = c.clone();
            gemm((m, n, k), &a, lda, &b, ldb, &mut c, ldc, accumulate);
            for i in 0..m {
                for j in 0..ldc {
                    let want = if j >= n {
                        before[i * ldc + j]
                    } else {
                        // Every product and partial sum is a multiple of 2^-5 below 2^14:
                        // exact in f32 whatever the order or fusion.
                        let s: f32 = (0..k).map(|p| a[i * lda + p] * b[p * ldb + j]).sum();
                        s + if accumulate { before[i * ldc + j] } else { 0.0 }
                    };
                    assert_eq!(
                        c[i * ldc + j],
                        want,
                        "{name} {m}x{n}x{k} ({i}, {j}) acc={accumulate}"
                    );
                }
            }
        }
    }

    #[test]
    fn exp_nonpositive_is_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = 0.0f32;
        while x > -87.0 {
            let (got, want) = (exp_nonpositive(x), (x as f64).exp() as f32);
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulp);
            x -= 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-200.0) < 1.2e-38);
        assert!(exp_nonpositive(f32::NEG_INFINITY) < 1.2e-38);
    }

    #[test]
    fn silu_matches_the_definition() {
        let xs: Vec<f32> = (-4000..4000).map(|i| i as f32 / 97.0).collect();
        let mut g = xs.clone();
        silu_mul(&mut g, &vec![1.5; xs.len()]);
        for (&x, &got) in xs.iter().zip(&g) {
            let want = (x as f64 / (1.0 + (-x as f64).exp()) * 1.5) as f32;
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-30),
                "{x}: {got} vs {want}"
            );
        }
    }

    /// The dispatched build (AVX-512 or AVX2 where present) gives the portable code's bits, on
    /// every length class and the edge values (signed zeros, saturating exponents, infinities).
    #[test]
    fn silu_builds_agree_bit_for_bit() {
        let mut xs: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.0371).collect();
        xs.extend([
            0.0,
            -0.0,
            88.5,
            -88.5,
            104.0,
            -104.0,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
        ]);
        let up: Vec<f32> = (0..xs.len()).map(|i| 0.25 + (i % 7) as f32 * 0.5).collect();
        for n in [0, 1, 7, 8, 15, 16, 17, 33, xs.len()] {
            let (mut got, mut want) = (xs[..n].to_vec(), xs[..n].to_vec());
            silu_mul(&mut got, &up[..n]);
            silu_mul_lanes(&mut want, &up[..n]);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "n={n} x={}: {g} vs {w}", xs[i]);
            }
        }
    }

    /// Every length class (whole lanes, tails, empty): the exponentials are the scalar
    /// function's bits, the sum within a few ulp of an f64 sum, and the portable and the
    /// dispatched (AVX2 where present) builds agree bit for bit.
    #[test]
    fn exp_sub_sum_matches_the_scalar_exponential() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 64, 100, 2051] {
            let x: Vec<f32> = values(n, 0x5EED + n as u32)
                .iter()
                .map(|v| v * 30.0)
                .collect();
            let m = max_f32(&x);
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(m.to_bits(), want_max.to_bits(), "n={n}");
            let (mut got, mut portable) = (x.clone(), x.clone());
            let sum = exp_sub_sum(&mut got, m);
            assert_eq!(sum.to_bits(), exp_sub_sum_lanes(&mut portable, m).to_bits());
            assert_eq!(got, portable, "n={n}");
            for (&g, &v) in got.iter().zip(&x) {
                assert_eq!(g.to_bits(), exp_nonpositive(v - m).to_bits(), "n={n}");
            }
            let exact: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
            let tol = 4.0 * f32::EPSILON as f64 * exact.max(1.0) * (n as f64).log2().max(1.0);
            assert!((sum as f64 - exact).abs() <= tol, "n={n}: {sum} vs {exact}");
        }
    }

    #[test]
    fn max_skips_nans_and_is_minus_infinity_when_empty() {
        assert_eq!(max_f32(&[]), f32::NEG_INFINITY);
        let mut x = vec![f32::NAN; 19];
        x[11] = -3.0;
        x[18] = -5.0;
        assert_eq!(max_f32(&x), -3.0);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, 1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > 0.999);
    }
}
