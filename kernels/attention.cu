// The KV cache on the device and causal attention over it. Layout as on the CPU
// (src/kv_cache.rs): per layer [sequence][position][kv head][head_dim]. Two storage types:
// f16, and int8 with one f32 scale per 32 values (scale = max|x| / 127, round to nearest).
// Unlike the CPU's Q8 cache, keys are stored with their bias (no key-bias split).
#include "common.cuh"

// Largest head size the attention kernel's shared buffers hold.
#define ATT_MAX_HD 256

// Stores token t's k and v rows ([T, kv]) at (seq[t], pos[t]); `seq_stride` is n_ctx * kv.
// One thread per element.
QKERNEL void kv_store_f16(const float* k, const float* v, uint16_t* kc, uint16_t* vc, const int* seq,
                          const int* pos, int kv, unsigned long long seq_stride, int n_tok) {
    int n = n_tok * kv;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / kv, c = i % kv;
        unsigned long long at = (unsigned long long)seq[t] * seq_stride + (unsigned long long)pos[t] * kv + c;
        kc[at] = qwen_f2h(k[i]);
        vc[at] = qwen_f2h(v[i]);
    }
}

// The same for the int8 cache: one thread per block of 32 values (kv is a multiple of 32);
// kq/vq hold the int8 values, ks/vs one scale per block at index (element index) / 32.
__device__ void qwen_q8_block(const float* x, int8_t* q, float* scale) {
    float amax = 0.0f;
    for (int l = 0; l < 32; ++l) amax = fmaxf(amax, fabsf(x[l]));
    float d = amax / 127.0f;
    float id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int l = 0; l < 32; ++l) q[l] = (int8_t)rintf(x[l] * id);
    *scale = d;
}

QKERNEL void kv_store_q8(const float* k, const float* v, int8_t* kq, int8_t* vq, float* ks, float* vs,
                         const int* seq, const int* pos, int kv, unsigned long long seq_stride, int n_tok) {
    int nb = kv / 32;
    int n = n_tok * nb;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / nb, b = i % nb;
        unsigned long long at = (unsigned long long)seq[t] * seq_stride + (unsigned long long)pos[t] * kv + 32 * b;
        qwen_q8_block(k + (unsigned long long)t * kv + 32 * b, kq + at, ks + at / 32);
        qwen_q8_block(v + (unsigned long long)t * kv + 32 * b, vq + at, vs + at / 32);
    }
}

QDEV float qwen_kv_f16(const uint16_t* c, const float*, unsigned long long i) { return qwen_h2f(c[i]); }
QDEV float qwen_kv_q8(const int8_t* c, const float* s, unsigned long long i) { return (float)c[i] * s[i / 32]; }

// out[t, h] = softmax(q[t, h] . K / sqrt(hd)) V over positions 0..=pos[t] of sequence seq[t],
// key/value head h / group. One block per (token, head); keys in chunks of QWEN_BLOCK with a
// running maximum and sum (one pass over the cache).
template <typename C, float (*LOAD)(const C*, const float*, unsigned long long)>
__device__ void attention_body(const float* QRESTRICT q, float* QRESTRICT out, const C* kc, const C* vc,
                               const float* ks, const float* vs, const int* seq, const int* pos, int n_head,
                               int group, int hd, unsigned long long seq_stride, float scale) {
    __shared__ float qs[ATT_MAX_HD], acc[ATT_MAX_HD], p[QWEN_BLOCK], red[QWEN_BLOCK];
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    int kv = (n_head / group) * hd;
    const float* qr = q + ((unsigned long long)t * n_head + h) * hd;
    for (int i = tid; i < hd; i += QWEN_BLOCK) {
        qs[i] = qr[i] * scale;
        acc[i] = 0.0f;
    }
    __syncthreads();
    unsigned long long base = (unsigned long long)seq[t] * seq_stride + (unsigned long long)(h / group) * hd;
    int n = pos[t] + 1;
    float m = QWEN_NEG_INF, l = 0.0f;
    for (int j0 = 0; j0 < n; j0 += QWEN_BLOCK) {
        int j = j0 + tid;
        float sc = QWEN_NEG_INF;
        if (j < n) {
            unsigned long long row = base + (unsigned long long)j * kv;
            sc = 0.0f;
            for (int i = 0; i < hd; ++i) sc += qs[i] * LOAD(kc, ks, row + i);
        }
        float m_new = fmaxf(m, qwen_block_max(sc, red));
        float corr = expf(m - m_new);
        float e = j < n ? expf(sc - m_new) : 0.0f;
        p[tid] = e;
        l = l * corr + qwen_block_sum(e, red);
        int kn = n - j0 < QWEN_BLOCK ? n - j0 : QWEN_BLOCK;
        for (int i = tid; i < hd; i += QWEN_BLOCK) {
            float a = acc[i] * corr;
            for (int jj = 0; jj < kn; ++jj) a += p[jj] * LOAD(vc, vs, base + (unsigned long long)(j0 + jj) * kv + i);
            acc[i] = a;
        }
        m = m_new;
        __syncthreads();
    }
    float* o = out + ((unsigned long long)t * n_head + h) * hd;
    for (int i = tid; i < hd; i += QWEN_BLOCK) o[i] = acc[i] / l;
}

QKERNEL void attention_f16(const float* q, float* out, const uint16_t* kc, const uint16_t* vc, const int* seq,
                           const int* pos, int n_head, int group, int hd, unsigned long long seq_stride,
                           float scale) {
    attention_body<uint16_t, qwen_kv_f16>(q, out, kc, vc, 0, 0, seq, pos, n_head, group, hd, seq_stride, scale);
}

QKERNEL void attention_q8(const float* q, float* out, const int8_t* kq, const int8_t* vq, const float* ks,
                          const float* vs, const int* seq, const int* pos, int n_head, int group, int hd,
                          unsigned long long seq_stride, float scale) {
    attention_body<int8_t, qwen_kv_q8>(q, out, kq, vq, ks, vs, seq, pos, n_head, group, hd, seq_stride, scale);
}
