// Shared by every kernel file: the macros where CUDA (NVRTC) and HIP (hiprtc) differ, fixed-width
// integer types (runtime compilers have no <stdint.h>), exact f16 <-> f32 conversion, block
// reductions, and the dequantization of one 32-element sub-block of each ggml block format.
//
// The backend inlines this file where a kernel file says `#include "common.cuh"`. Compiled as
// plain C++ (neither __CUDACC__ nor __HIPCC__ defined), the dequantization functions run on the
// host: tests/gpu_backends.rs checks them there against the crate's scalar reference. With
// QWEN_SIMT_HOST (tests/gpu_emulator/simt_host.h supplies the CUDA built-ins) the whole GPU path
// runs on the host: tests/gpu_emulated.rs.
#pragma once

#if defined(__HIPCC__) || defined(__HIPCC_RTC__) || defined(__HIP_PLATFORM_AMD__)
#define QWEN_HIP 1
#define QWEN_GPU 1
#elif defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define QWEN_CUDA 1
#define QWEN_GPU 1
#elif defined(QWEN_SIMT_HOST)
#define QWEN_GPU 1
#endif

#if defined(QWEN_GPU)
#define QDEV __device__ __forceinline__
#define QKERNEL extern "C" __global__
#define QRESTRICT __restrict__
#else
#define QDEV static inline
#define QRESTRICT
#endif

#if defined(QWEN_GPU) && !defined(QWEN_SIMT_HOST)
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef short int16_t;
typedef unsigned int uint32_t;
typedef int int32_t;
typedef unsigned long long uint64_t;
#elif !defined(QWEN_GPU)
#include <stdint.h>
#include <string.h>
#include <math.h>
#endif

#if defined(QWEN_GPU)
#define QWEN_NEG_INF __int_as_float(0xff800000)
#endif

// Threads of every block-reduced kernel. A multiple of both warp sizes (32 on NVIDIA and RDNA,
// 64 on CDNA); the reductions go through shared memory, so they never depend on the warp size.
#define QWEN_BLOCK 128

// ---------------------------------------------------------------------------------------------
// f16 (IEEE binary16) <-> f32, by bits: exact, and the same code on both vendors.

QDEV float qwen_bits_to_f32(uint32_t u) {
#if defined(QWEN_GPU)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

QDEV uint32_t qwen_f32_to_bits(float f) {
#if defined(QWEN_GPU)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

QDEV float qwen_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1Fu) {  // inf / nan
        return qwen_bits_to_f32(sign | 0x7F800000u | (man << 13));
    }
    if (exp == 0) {
        // zero or subnormal: man * 2^-24, exact in f32.
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return qwen_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round to nearest even, like the CPU's f32_to_f16 (and ggml's GGML_FP32_TO_FP16).
QDEV uint16_t qwen_f2h(float f) {
    uint32_t x = qwen_f32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) {  // inf / nan
        return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0u));
    }
    if (ax >= 0x477FF000u) {  // rounds to >= 65536: overflow to inf
        return (uint16_t)(sign | 0x7C00u);
    }
    if (ax < 0x38800000u) {  // below the smallest normal f16 (2^-14): subnormal or zero
        if (ax < 0x33000000u) {  // below half the smallest subnormal: zero
            return (uint16_t)sign;
        }
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - e;  // 14..24
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) {
            r += 1;
        }
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u;  // rebias the exponent (127 - 15 = 112, << 23)
    uint32_t lsb = (r >> 13) & 1u;
    r += 0xFFFu + lsb;
    return (uint16_t)(sign | (r >> 13));
}

QDEV float qwen_ld_f16(const uint8_t* p) {
    return qwen_h2f((uint16_t)(p[0] | (p[1] << 8)));
}

QDEV uint32_t qwen_ld_u32(const uint8_t* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// ---------------------------------------------------------------------------------------------
// Block formats: ggml's layouts bit for bit (see src/quant/). Each matrix row is a run of blocks;
// every format decodes in sub-blocks of 32 consecutive elements, so one function per type gives
// elements 32*s .. 32*s+31 of a row from the row's bytes.

// Type ids as in GGUF (src/gguf/types.rs).
#define QT_F32 0
#define QT_F16 1
#define QT_Q4_0 2
#define QT_Q4_1 3
#define QT_Q5_0 6
#define QT_Q5_1 7
#define QT_Q8_0 8
#define QT_Q2_K 10
#define QT_Q3_K 11
#define QT_Q4_K 12
#define QT_Q5_K 13
#define QT_Q6_K 14
#define QT_BF16 30

QDEV void deq32_f32(const uint8_t* row, int s, float* y) {
    const uint8_t* p = row + 128 * s;
    for (int l = 0; l < 32; ++l) y[l] = qwen_bits_to_f32(qwen_ld_u32(p + 4 * l));
}

QDEV void deq32_f16(const uint8_t* row, int s, float* y) {
    const uint8_t* p = row + 64 * s;
    for (int l = 0; l < 32; ++l) y[l] = qwen_ld_f16(p + 2 * l);
}

QDEV void deq32_bf16(const uint8_t* row, int s, float* y) {
    const uint8_t* p = row + 64 * s;
    for (int l = 0; l < 32; ++l) y[l] = qwen_bits_to_f32((uint32_t)(p[2 * l] | (p[2 * l + 1] << 8)) << 16);
}

// Q4_0: d (f16), qs[16]; element l is (qs[l] & 15) - 8, element l + 16 is (qs[l] >> 4) - 8.
QDEV void deq32_q4_0(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 18 * s;
    float d = qwen_ld_f16(b);
    for (int l = 0; l < 16; ++l) {
        y[l] = (float)((b[2 + l] & 0xF) - 8) * d;
        y[l + 16] = (float)((b[2 + l] >> 4) - 8) * d;
    }
}

// Q4_1: d, m (f16), qs[16]; x = q * d + m.
QDEV void deq32_q4_1(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 20 * s;
    float d = qwen_ld_f16(b), m = qwen_ld_f16(b + 2);
    for (int l = 0; l < 16; ++l) {
        y[l] = (float)(b[4 + l] & 0xF) * d + m;
        y[l + 16] = (float)(b[4 + l] >> 4) * d + m;
    }
}

// Q5_0: d, qh (u32: bit l is the fifth bit of element l), qs[16]; x = (q - 16) * d.
QDEV void deq32_q5_0(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 22 * s;
    float d = qwen_ld_f16(b);
    uint32_t qh = qwen_ld_u32(b + 2);
    for (int l = 0; l < 16; ++l) {
        int h0 = ((qh >> l) & 1) << 4, h1 = ((qh >> (l + 16)) & 1) << 4;
        y[l] = (float)(((b[6 + l] & 0xF) | h0) - 16) * d;
        y[l + 16] = (float)(((b[6 + l] >> 4) | h1) - 16) * d;
    }
}

// Q5_1: d, m, qh, qs[16]; x = q * d + m.
QDEV void deq32_q5_1(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 24 * s;
    float d = qwen_ld_f16(b), m = qwen_ld_f16(b + 2);
    uint32_t qh = qwen_ld_u32(b + 4);
    for (int l = 0; l < 16; ++l) {
        int h0 = ((qh >> l) & 1) << 4, h1 = ((qh >> (l + 16)) & 1) << 4;
        y[l] = (float)((b[8 + l] & 0xF) | h0) * d + m;
        y[l + 16] = (float)((b[8 + l] >> 4) | h1) * d + m;
    }
}

// Q8_0: d, qs[32] (i8).
QDEV void deq32_q8_0(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 34 * s;
    float d = qwen_ld_f16(b);
    for (int l = 0; l < 32; ++l) y[l] = (float)(int8_t)b[2 + l] * d;
}

// K-quants: 256-element super-blocks; sub-block s of a row is sub-block s % 8 of block s / 8.

// Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min, per 16 elements), qs[64], d, dmin.
// Element 128h + 32j + l is (qs[32h + l] >> 2j) & 3.
QDEV void deq32_q2_k(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 84 * (s >> 3);
    int sb = s & 7, h = sb >> 2, j = sb & 3;
    float d = qwen_ld_f16(b + 80), dmin = qwen_ld_f16(b + 82);
    for (int l = 0; l < 32; ++l) {
        uint8_t sc = b[2 * sb + (l >> 4)];
        int q = (b[16 + 32 * h + l] >> (2 * j)) & 3;
        y[l] = d * (float)(sc & 0xF) * (float)q - dmin * (float)(sc >> 4);
    }
}

// Q3_K (110 bytes): hmask[32], qs[64], scales[12], d. High bit of element 32k + l is bit k of
// hmask[l] (clear: the value is q - 4); 16 6-bit scales (minus 32), one per 16 elements.
QDEV void deq32_q3_k(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 110 * (s >> 3);
    int sb = s & 7, h = sb >> 2, j = sb & 3;
    float d = qwen_ld_f16(b + 108);
    const uint8_t* sc = b + 96;
    for (int half = 0; half < 2; ++half) {
        int js = 2 * sb + half;
        int low = js < 8 ? (sc[js] & 0xF) : (sc[js - 8] >> 4);
        int high = (sc[8 + (js & 3)] >> (2 * (js >> 2))) & 3;
        float dl = d * (float)((low | (high << 4)) - 32);
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
            int q = (b[32 + 32 * h + l] >> (2 * j)) & 3;
            int hi = (b[l] >> sb) & 1 ? 0 : 4;
            y[l] = dl * (float)(q - hi);
        }
    }
}

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (ggml's get_scale_min_k4).
QDEV void qwen_scale_min_k4(int j, const uint8_t* q, int* sc, int* mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K (144 bytes): d, dmin, scales[12], qs[128]; element 64h + l is qs[32h + l] & 15, element
// 64h + 32 + l is qs[32h + l] >> 4; x = d * sc * q - dmin * m.
QDEV void deq32_q4_k(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 144 * (s >> 3);
    int sb = s & 7, sc, mn;
    qwen_scale_min_k4(sb, b + 4, &sc, &mn);
    float d1 = qwen_ld_f16(b) * (float)sc, m1 = qwen_ld_f16(b + 2) * (float)mn;
    const uint8_t* qs = b + 16 + 32 * (sb >> 1);
    int shift = 4 * (sb & 1);
    for (int l = 0; l < 32; ++l) y[l] = d1 * (float)((qs[l] >> shift) & 0xF) - m1;
}

// Q5_K (176 bytes): d, dmin, scales[12], qh[32], qs[128]; the fifth bit of element 32k + l is
// bit k of qh[l].
QDEV void deq32_q5_k(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 176 * (s >> 3);
    int sb = s & 7, sc, mn;
    qwen_scale_min_k4(sb, b + 4, &sc, &mn);
    float d1 = qwen_ld_f16(b) * (float)sc, m1 = qwen_ld_f16(b + 2) * (float)mn;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48 + 32 * (sb >> 1);
    int shift = 4 * (sb & 1);
    for (int l = 0; l < 32; ++l) {
        int q = ((qs[l] >> shift) & 0xF) | (((qh[l] >> sb) & 1) << 4);
        y[l] = d1 * (float)q - m1;
    }
}

// Q6_K (210 bytes): ql[128], qh[64], scales[16] (i8, per 16 elements), d. In half h (128
// elements), element 32r + l takes the nibble (r >> 1) of ql[64h + 32(r & 1) + l] and bits
// 2r..2r+1 of qh[32h + l]; x = d * scale * (q - 32).
QDEV void deq32_q6_k(const uint8_t* row, int s, float* y) {
    const uint8_t* b = row + 210 * (s >> 3);
    int sb = s & 7, h = sb >> 2, r = sb & 3;
    float d = qwen_ld_f16(b + 208);
    const uint8_t* ql = b + 64 * h + 32 * (r & 1);
    const uint8_t* qh = b + 128 + 32 * h;
    for (int l = 0; l < 32; ++l) {
        int q = ((ql[l] >> (4 * (r >> 1))) & 0xF) | (((qh[l] >> (2 * r)) & 3) << 4);
        float ds = d * (float)(int8_t)b[192 + 2 * sb + (l >> 4)];
        y[l] = ds * (float)(q - 32);
    }
}

// Sub-block s of a row of type `ty`; returns 0 for a type without a decoder.
QDEV int qwen_deq32(int ty, const uint8_t* row, int s, float* y) {
    switch (ty) {
        case QT_F32: deq32_f32(row, s, y); return 1;
        case QT_F16: deq32_f16(row, s, y); return 1;
        case QT_BF16: deq32_bf16(row, s, y); return 1;
        case QT_Q4_0: deq32_q4_0(row, s, y); return 1;
        case QT_Q4_1: deq32_q4_1(row, s, y); return 1;
        case QT_Q5_0: deq32_q5_0(row, s, y); return 1;
        case QT_Q5_1: deq32_q5_1(row, s, y); return 1;
        case QT_Q8_0: deq32_q8_0(row, s, y); return 1;
        case QT_Q2_K: deq32_q2_k(row, s, y); return 1;
        case QT_Q3_K: deq32_q3_k(row, s, y); return 1;
        case QT_Q4_K: deq32_q4_k(row, s, y); return 1;
        case QT_Q5_K: deq32_q5_k(row, s, y); return 1;
        case QT_Q6_K: deq32_q6_k(row, s, y); return 1;
        default: return 0;
    }
}

#if defined(QWEN_GPU)
// ---------------------------------------------------------------------------------------------
// Block reductions over QWEN_BLOCK threads through shared memory (`sh` holds QWEN_BLOCK floats).
// Every thread of the block must call them; all get the result.

__device__ float qwen_block_sum(float v, float* sh) {
    int t = threadIdx.x;
    __syncthreads();
    sh[t] = v;
    __syncthreads();
    for (int o = QWEN_BLOCK / 2; o > 0; o >>= 1) {
        if (t < o) sh[t] += sh[t + o];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ float qwen_block_max(float v, float* sh) {
    int t = threadIdx.x;
    __syncthreads();
    sh[t] = v;
    __syncthreads();
    for (int o = QWEN_BLOCK / 2; o > 0; o >>= 1) {
        if (t < o) sh[t] = fmaxf(sh[t], sh[t + o]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}
#endif
