// Element-wise and per-row operations of the forward pass. CPU reference: src/backend/cpu/ops.rs.
#include "common.cuh"

// out[t] = x[t] * w / sqrt(mean(x[t]^2) + eps). Grid: n_tok blocks of QWEN_BLOCK threads.
QKERNEL void rms_norm(float* out, const float* x, const float* w, float eps, int d) {
    __shared__ float sh[QWEN_BLOCK];
    const float* xr = x + (unsigned long long)blockIdx.x * d;
    float* o = out + (unsigned long long)blockIdx.x * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += QWEN_BLOCK) ss += xr[i] * xr[i];
    ss = qwen_block_sum(ss, sh) / (float)d;
    float scale = 1.0f / sqrtf(ss + eps);
    for (int i = threadIdx.x; i < d; i += QWEN_BLOCK) o[i] = xr[i] * scale * w[i];
}

// x[i] += y[i] for i < n.
QKERNEL void add_assign(float* x, const float* y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] += y[i];
}

// x[t, i] += b[i] for n_tok rows of `width`.
QKERNEL void add_bias(float* x, const float* b, int width, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) x[i] += b[i % width];
}

// Qwen-1's fused projection: row t of qkv ([T, d + 2 kv]) plus bias, split into q, k and v.
QKERNEL void split_qkv(const float* qkv, const float* bias, float* q, float* k, float* v, int d, int kv,
                       int n_tok) {
    int width = d + 2 * kv;
    int n = n_tok * width;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / width, c = i % width;
        float val = qkv[i] + bias[c];
        if (c < d) q[t * d + c] = val;
        else if (c < d + kv) k[t * kv + c - d] = val;
        else v[t * kv + c - d - kv] = val;
    }
}

// Rotate-half RoPE on every head of every token's row (width n_heads * hd), with the token's
// cos/sin table ([T, hd/2], computed on the host exactly as the CPU does: NTK / YaRN included),
// then the row times scale[t] (Qwen-1's logN factor; 1 otherwise; pass a null pointer for none).
QKERNEL void rope_neox(float* x, const float* cos_t, const float* sin_t, const float* scale, int n_heads,
                       int hd, int n_tok) {
    int half = hd / 2;
    int n = n_tok * n_heads * half;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / (n_heads * half), rem = i % (n_heads * half);
        int h = rem / half, j = rem % half;
        float* head = x + ((unsigned long long)t * n_heads + h) * hd;
        float c = cos_t[t * half + j], s = sin_t[t * half + j];
        float x0 = head[j], x1 = head[j + half];
        float f = scale ? scale[t] : 1.0f;
        head[j] = (x0 * c - x1 * s) * f;
        head[j + half] = (x1 * c + x0 * s) * f;
    }
}

// SwiGLU: gate[i] = silu(gate[i]) * up[i].
QKERNEL void silu_mul(float* gate, const float* up, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
