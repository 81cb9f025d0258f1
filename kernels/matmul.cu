// Matrix products against weights in their ggml block formats, and embedding lookups.
// CPU reference: src/backend/cpu/matmul.rs (quantized integer dots) and quant::dequantize_row;
// here each weight sub-block is decoded to f32 in registers and dotted with f32 activations.
#include "common.cuh"

// Rows per block of the matrix product (one group of 32 threads each) and tokens per block: each
// decoded weight sub-block is used for MM_TOKENS activation rows.
#define MM_ROWS (QWEN_BLOCK / 32)
#define MM_TOKENS 4

// y[t * ldy + r] (+)= sum_c W[r, c] * xn[t, c] for t < n_tok, r < rows, where xn is x or, with
// a norm weight `nw`, RMSNorm(x) = x * nw / sqrt(mean(x^2) + eps): each block computes its
// tokens' RMS (a few KB of x beside its weight rows) instead of a separate launch writing
// normalized rows. `accumulate` adds to y (the residual stream takes a projection without a
// separate add), `ldy` lets several matrices write their parts of one row (q | k | v). W's rows
// are `row_bytes` apart, `cols` is a multiple of 32. Grid: (ceil(rows / MM_ROWS),
// ceil(n_tok / MM_TOKENS)).
template <int TY>
__device__ void matmul_body(const uint8_t* QRESTRICT w, unsigned long long row_bytes, int rows,
                            int cols, const float* QRESTRICT x, float* QRESTRICT y, int ldy, int n_tok,
                            int accumulate, const float* QRESTRICT nw, float eps) {
    // Per token, each thread's partial sums; after one barrier (not a reduction tree of
    // barriers per token) one thread per (row, token) adds its group's 32.
    __shared__ float part[MM_TOKENS][QWEN_BLOCK];
    __shared__ float inv_rms[MM_TOKENS];
    int g = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * MM_ROWS + g;
    int t0 = blockIdx.y * MM_TOKENS;
    int nt = n_tok - t0 < MM_TOKENS ? n_tok - t0 : MM_TOKENS;
    float acc[MM_TOKENS];
    if (nw) {
        for (int tt = 0; tt < MM_TOKENS; ++tt) {
            float ss = 0.0f;
            if (tt < nt) {
                const float* xr = x + (unsigned long long)(t0 + tt) * cols;
                for (int c = threadIdx.x; c < cols; c += QWEN_BLOCK) ss += xr[c] * xr[c];
            }
            part[tt][threadIdx.x] = ss;
        }
        __syncthreads();
        if (threadIdx.x < nt) {
            float ss = 0.0f;
            for (int l = 0; l < QWEN_BLOCK; ++l) ss += part[threadIdx.x][l];
            inv_rms[threadIdx.x] = 1.0f / sqrtf(ss / (float)cols + eps);
        }
        __syncthreads();
    }
    for (int tt = 0; tt < MM_TOKENS; ++tt) acc[tt] = 0.0f;
    if (r < rows) {
        const uint8_t* wr = w + (unsigned long long)r * row_bytes;
        float wv[32];
        for (int s = lane; s < cols / 32; s += 32) {
            qwen_deq32(TY, wr, s, wv);
            if (nw) {
                for (int l = 0; l < 32; ++l) wv[l] *= nw[32 * s + l];
            }
            for (int tt = 0; tt < MM_TOKENS; ++tt) {
                if (tt < nt) {
                    const float* xr = x + (unsigned long long)(t0 + tt) * cols + 32 * s;
                    float a = 0.0f;
                    for (int l = 0; l < 32; ++l) a += wv[l] * xr[l];
                    acc[tt] += a;
                }
            }
        }
    }
    for (int tt = 0; tt < MM_TOKENS; ++tt) part[tt][threadIdx.x] = nw && tt < nt ? acc[tt] * inv_rms[tt] : acc[tt];
    __syncthreads();
    if (lane < nt && r < rows) {
        const float* ps = &part[lane][32 * g];
        float v = 0.0f;
        for (int l = 0; l < 32; ++l) v += ps[l];
        float* out = y + (unsigned long long)(t0 + lane) * ldy + r;
        *out = accumulate ? *out + v : v;
    }
}

// out[t, :] = dequantized row ids[t] of the table. Grid: n_tok blocks.
template <int TY>
__device__ void get_rows_body(const uint8_t* QRESTRICT w, unsigned long long row_bytes, int cols,
                              const int* QRESTRICT ids, float* QRESTRICT out) {
    int t = blockIdx.x;
    const uint8_t* wr = w + (unsigned long long)ids[t] * row_bytes;
    float* o = out + (unsigned long long)t * cols;
    float wv[32];
    for (int s = threadIdx.x; s < cols / 32; s += blockDim.x) {
        qwen_deq32(TY, wr, s, wv);
        for (int l = 0; l < 32; ++l) o[32 * s + l] = wv[l];
    }
}

#define QWEN_WEIGHT_KERNELS(name, TY)                                                            \
    QKERNEL void matmul_##name(const uint8_t* w, unsigned long long row_bytes, int rows,        \
                               int cols, const float* x, float* y, int ldy, int n_tok,          \
                               int accumulate, const float* nw, float eps) {                    \
        matmul_body<TY>(w, row_bytes, rows, cols, x, y, ldy, n_tok, accumulate, nw, eps);        \
    }                                                                                            \
    QKERNEL void get_rows_##name(const uint8_t* w, unsigned long long row_bytes, int cols,      \
                                 const int* ids, float* out) {                                   \
        get_rows_body<TY>(w, row_bytes, cols, ids, out);                                         \
    }

QWEN_WEIGHT_KERNELS(f32, QT_F32)
QWEN_WEIGHT_KERNELS(f16, QT_F16)
QWEN_WEIGHT_KERNELS(bf16, QT_BF16)
QWEN_WEIGHT_KERNELS(q4_0, QT_Q4_0)
QWEN_WEIGHT_KERNELS(q4_1, QT_Q4_1)
QWEN_WEIGHT_KERNELS(q5_0, QT_Q5_0)
QWEN_WEIGHT_KERNELS(q5_1, QT_Q5_1)
QWEN_WEIGHT_KERNELS(q8_0, QT_Q8_0)
QWEN_WEIGHT_KERNELS(q2_k, QT_Q2_K)
QWEN_WEIGHT_KERNELS(q3_k, QT_Q3_K)
QWEN_WEIGHT_KERNELS(q4_k, QT_Q4_K)
QWEN_WEIGHT_KERNELS(q5_k, QT_Q5_K)
QWEN_WEIGHT_KERNELS(q6_k, QT_Q6_K)
