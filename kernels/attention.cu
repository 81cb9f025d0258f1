// The KV cache on the device and causal attention over it. Layout as on the CPU
// (src/kv_cache.rs): per layer [sequence][position][kv head][head_dim]. Two storage types:
// f16, and int8 with one f32 scale per block of `qb` values (scale = max|x| / 127, round to
// nearest; qb is the CPU cache's block: 32, or the head size when that is not a multiple of 32).
#include "common.cuh"

// Largest head size the attention kernel's shared buffers hold.
#define ATT_MAX_HD 256

// Stores token t's k and v rows ([T, kv]) in the int8 cache at (seq[t], pos[t]) (the f16 cache
// is written by qkv_finish; `seq_stride` is n_ctx * kv): one thread per block of qb values (kv
// is a multiple of qb); kq/vq hold the int8 values, ks/vs one scale per block at index
// (element index) / qb.
__device__ void qwen_q8_block(const float* x, int qb, int8_t* q, float* scale) {
    float amax = 0.0f;
    for (int l = 0; l < qb; ++l) amax = fmaxf(amax, fabsf(x[l]));
    float d = amax / 127.0f;
    float id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int l = 0; l < qb; ++l) q[l] = (int8_t)rintf(x[l] * id);
    *scale = d;
}

QKERNEL void kv_store_q8(const float* k, const float* v, int8_t* kq, int8_t* vq, float* ks, float* vs,
                         const int* seq, const int* pos, int kv, int qb, unsigned long long seq_stride,
                         int n_tok) {
    int nb = kv / qb;
    int n = n_tok * nb;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / nb, b = i % nb;
        unsigned long long at = (unsigned long long)seq[t] * seq_stride + (unsigned long long)pos[t] * kv + qb * b;
        qwen_q8_block(k + (unsigned long long)t * kv + qb * b, qb, kq + at, ks + at / qb);
        qwen_q8_block(v + (unsigned long long)t * kv + qb * b, qb, vq + at, vs + at / qb);
    }
}

// Int8 cache only: keys are stored without the model's key bias b, as on the CPU
// (src/kv_cache.rs: a few bias channels dwarf the rest, so int8 rows of biased keys lose the
// token-dependent part). RoPE is linear, rope(k) = rope(k - b) + rope(b): this subtracts
// rope_t(b) from each token's rotated keys in place before kv_store_q8, and records the token's
// cos | sin in rot ([seq][position][hd]), from which attention adds q . rope_j(b) back.
// One thread per (token, kv head, pair j < hd / 2).
QKERNEL void key_bias_sub(float* k, const float* b, const float* cos_t, const float* sin_t, float* rot,
                          const int* seq, const int* pos, int n_kv, int hd, int n_ctx, int n_tok) {
    int half = hd / 2;
    int n = n_tok * n_kv * half;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int t = i / (n_kv * half), rem = i % (n_kv * half);
        int h = rem / half, j = rem % half;
        float c = cos_t[t * half + j], s = sin_t[t * half + j];
        float b0 = b[h * hd + j], b1 = b[h * hd + j + half];
        float* kr = k + ((unsigned long long)t * n_kv + h) * hd;
        kr[j] = kr[j] - (b0 * c - b1 * s);
        kr[j + half] = kr[j + half] - (b1 * c + b0 * s);
        if (h == 0) {
            float* r = rot + ((unsigned long long)seq[t] * n_ctx + pos[t]) * hd;
            r[j] = c;
            r[j + half] = s;
        }
    }
}

QDEV float qwen_kv_f16(const uint16_t* c, const float*, int, unsigned long long i) { return qwen_h2f(c[i]); }
QDEV float qwen_kv_q8(const int8_t* c, const float* s, int qb, unsigned long long i) {
    return (float)c[i] * s[i / (unsigned long long)qb];
}

// out[t, h] = softmax(q[t, h] . K / sqrt(hd)) V over positions 0..=pos[t] of sequence seq[t],
// key/value head h / group. One block per (token, head); keys in chunks of QWEN_BLOCK with a
// running maximum and sum (one pass over the cache). With a key bias `kb` (int8 cache, see
// key_bias_sub) each score adds q . rope_j(b) = qb . rot[j], where qb[i] = q0 b0 + q1 b1 and
// qb[half + i] = q1 b0 - q0 b1 over the pairs (i, i + half).
template <typename C, float (*LOAD)(const C*, const float*, int, unsigned long long)>
__device__ void attention_body(const float* QRESTRICT q, float* QRESTRICT out, const C* kc, const C* vc,
                               const float* ks, const float* vs, int qb, const float* kb, const float* rot,
                               const int* seq, const int* pos, int n_head, int group, int hd,
                               unsigned long long seq_stride, float scale) {
    __shared__ float qs[ATT_MAX_HD], acc[ATT_MAX_HD], qbias[ATT_MAX_HD], p[QWEN_BLOCK], red[QWEN_BLOCK];
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    int kv = (n_head / group) * hd, half = hd / 2;
    const float* qr = q + ((unsigned long long)t * n_head + h) * hd;
    for (int i = tid; i < hd; i += QWEN_BLOCK) {
        qs[i] = qr[i] * scale;
        acc[i] = 0.0f;
    }
    if (kb) {
        const float* bh = kb + (h / group) * hd;
        for (int i = tid; i < half; i += QWEN_BLOCK) {
            float q0 = qr[i] * scale, q1 = qr[i + half] * scale, b0 = bh[i], b1 = bh[i + half];
            qbias[i] = q0 * b0 + q1 * b1;
            qbias[half + i] = q1 * b0 - q0 * b1;
        }
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
            for (int i = 0; i < hd; ++i) sc += qs[i] * LOAD(kc, ks, qb, row + i);
            if (kb) {
                // rot is [seq][n_ctx][hd]; n_ctx = seq_stride / kv.
                const float* rr = rot + ((unsigned long long)seq[t] * (seq_stride / kv) + j) * hd;
                for (int i = 0; i < hd; ++i) sc += qbias[i] * rr[i];
            }
        }
        float m_new = fmaxf(m, qwen_block_max(sc, red));
        float corr = expf(m - m_new);
        float e = j < n ? expf(sc - m_new) : 0.0f;
        p[tid] = e;
        l = l * corr + qwen_block_sum(e, red);
        int kn = n - j0 < QWEN_BLOCK ? n - j0 : QWEN_BLOCK;
        for (int i = tid; i < hd; i += QWEN_BLOCK) {
            float a = acc[i] * corr;
            for (int jj = 0; jj < kn; ++jj) a += p[jj] * LOAD(vc, vs, qb, base + (unsigned long long)(j0 + jj) * kv + i);
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
    attention_body<uint16_t, qwen_kv_f16>(q, out, kc, vc, 0, 0, 1, 0, 0, seq, pos, n_head, group, hd, seq_stride,
                                          scale);
}

// kb: the layer's key bias ([kv heads][hd]) the cache was stored without (key_bias_sub), with
// rot the positions' cos | sin; a null kb for keys stored as they are.
QKERNEL void attention_q8(const float* q, float* out, const int8_t* kq, const int8_t* vq, const float* ks,
                          const float* vs, int qb, const float* kb, const float* rot, const int* seq,
                          const int* pos, int n_head, int group, int hd, unsigned long long seq_stride,
                          float scale) {
    attention_body<int8_t, qwen_kv_q8>(q, out, kq, vq, ks, vs, qb, kb, rot, seq, pos, n_head, group, hd,
                                       seq_stride, scale);
}
