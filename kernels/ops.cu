// Element-wise operations of the forward pass (RMSNorm is part of the matrix kernel, matmul.cu).
// CPU reference: src/backend/cpu/ops.rs.
#include "common.cuh"

// The attention projections' row per token ([T, d + 2 kv]: q heads, then k heads, then v heads,
// each of hd columns) plus its bias, split into q ([T, d]), k and v ([T, kv]), with rotate-half
// RoPE on the q and k heads from the token's cos/sin table ([T, hd/2], computed on the host
// exactly as the CPU does: NTK / YaRN included) and q times scale[t] (Qwen-1's logN factor;
// pass a null pointer for none). With an f16 cache (kc, vc not null) k and v go straight into it
// at (seq[t], pos[t]) (layout in attention.cu; `seq_stride` is n_ctx * kv) instead of to k and v.
// One item per (token, head, j < hd/2): columns j and j + hd/2.
QKERNEL void qkv_finish(const float* qkv, const float* bias, float* q, float* k, float* v, const float* cos_t,
                        const float* sin_t, const float* scale, uint16_t* kc, uint16_t* vc, const int* seq,
                        const int* pos, int n_head, int n_kv, int hd, unsigned long long seq_stride, int n_tok) {
    int half = hd / 2, heads = n_head + 2 * n_kv, width = heads * hd, kv = n_kv * hd;
    int n = n_tok * heads * half;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / (heads * half), rem = i % (heads * half);
        int h = rem / half, j = rem % half;
        int c0 = h * hd + j;
        const float* row = qkv + (unsigned long long)t * width;
        float x0 = row[c0] + bias[c0], x1 = row[c0 + half] + bias[c0 + half];
        if (h < n_head + n_kv) {
            float c = cos_t[t * half + j], s = sin_t[t * half + j];
            float r0 = x0 * c - x1 * s, r1 = x1 * c + x0 * s;
            x0 = r0;
            x1 = r1;
        }
        if (h < n_head) {
            float f = scale ? scale[t] : 1.0f;
            float* dst = q + ((unsigned long long)t * n_head + h) * hd;
            dst[j] = x0 * f;
            dst[j + half] = x1 * f;
            continue;
        }
        // A k head (h < n_head + n_kv) or a v head: its column in the kv row.
        bool is_k = h < n_head + n_kv;
        int col = (is_k ? h - n_head : h - n_head - n_kv) * hd + j;
        if (kc) {
            unsigned long long at = (unsigned long long)seq[t] * seq_stride + (unsigned long long)pos[t] * kv + col;
            uint16_t* cache = is_k ? kc : vc;
            cache[at] = qwen_f2h(x0);
            cache[at + half] = qwen_f2h(x1);
        } else {
            float* dst = (is_k ? k : v) + (unsigned long long)t * kv + col;
            dst[0] = x0;
            dst[half] = x1;
        }
    }
}

// SwiGLU: out[t, i] = silu(gu[t, i]) * gu[t, n_ff + i], from the gate and up projections'
// row per token ([T, 2 n_ff]: gate | up).
QKERNEL void swiglu(float* out, const float* gu, int n_ff, int n_tok) {
    int n = n_tok * n_ff;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / n_ff, c = i % n_ff;
        const float* row = gu + (unsigned long long)t * 2 * n_ff;
        float g = row[c];
        out[i] = g / (1.0f + expf(-g)) * row[n_ff + c];
    }
}

// Greedy sampling where the logits are: out[t] = the index of the largest of row t's n logits
// (`x` is [T, n]), the first on ties, NaN never chosen, 0 when nothing beats -inf (as the host's
// sampler::argmax). One block of QWEN_BLOCK threads per row. A decode step then sends back 4
// bytes per token instead of the vocabulary's logits.
QKERNEL void argmax_rows(const float* x, int n, int* out) {
    __shared__ float sv[QWEN_BLOCK];
    __shared__ int si[QWEN_BLOCK];
    const float* row = x + (unsigned long long)blockIdx.x * n;
    float best = QWEN_NEG_INF;
    int at = 0x7fffffff;
    // Each thread sees increasing indices: a strictly larger value replaces, so its candidate
    // is its first maximum.
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = row[i];
        if (v > best) {
            best = v;
            at = i;
        }
    }
    sv[threadIdx.x] = best;
    si[threadIdx.x] = at;
    __syncthreads();
    for (int o = QWEN_BLOCK / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            float v = sv[threadIdx.x + o];
            int j = si[threadIdx.x + o];
            if (v > sv[threadIdx.x] || (v == sv[threadIdx.x] && j < si[threadIdx.x])) {
                sv[threadIdx.x] = v;
                si[threadIdx.x] = j;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = si[0] == 0x7fffffff ? 0 : si[0];
}
