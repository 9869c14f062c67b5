// The CPU kernels' SIMD: eight floats in a GCC/Clang vector, and one body compiled twice, for
// AVX2 + FMA and for the baseline ISA, picked once by what the CPU runs. The CPU is asked directly:
// target_clones("arch=haswell") dispatches on the CPU model, so other AVX2 CPUs got the baseline.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace prospect {

// Eight floats (or ints); element-wise + - * / and comparisons. aligned(4): loads need not be aligned.
typedef float Vec8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t Vec8i __attribute__((vector_size(32), aligned(4)));

// Kernel bodies carry this, so they are inlined into (and built for) each ISA's copy.
#define PROSPECT_SIMD_INLINE inline __attribute__((always_inline))

PROSPECT_SIMD_INLINE Vec8f load8(const float* p) {
    Vec8f v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

PROSPECT_SIMD_INLINE void store8(float* p, Vec8f v) { std::memcpy(p, &v, sizeof v); }

PROSPECT_SIMD_INLINE float sum8(Vec8f v) {
    float s = 0;
    for (int j = 0; j < 8; ++j) s += v[j];
    return s;
}

// A bf16 (its bits) is the top half of the float it stands for.
PROSPECT_SIMD_INLINE float bf16_to_float(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// exp(t) for t <= 0 .. 88: t = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor
// polynomial (relative error < 2e-7 there), 2^n built in the exponent bits.
PROSPECT_SIMD_INLINE Vec8f exp8(Vec8f t) {
    t = t < -87.0f ? -87.0f : t;
    t = t > 88.0f ? 88.0f : t;
    const Vec8f shifter = Vec8f{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
    const Vec8f f = t * 1.44269504f + shifter;
    const Vec8f n = f - shifter;
    const Vec8f r = t - n * 0.693145752f - n * 1.42860677e-6f;  // ln2 split in two for an exact product
    Vec8f p = r * (1.0f / 720) + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const Vec8i bits = ((std::bit_cast<Vec8i>(f) - 0x4B400000) + 127) << 23;
    return p * std::bit_cast<Vec8f>(bits);
}

inline bool cpu_has_avx2_fma() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// simd_dispatch<body>(): a pointer to `body` built for AVX2 + FMA if the CPU has them, else for the
// baseline ISA. `body` is a PROSPECT_SIMD_INLINE function; call the pointer, kept in a namespace-scope
// const, so the CPU is asked once per kernel.
template <auto Body>
struct SimdClones;

template <class R, class... Args, R (*Body)(Args...)>
struct SimdClones<Body> {
    __attribute__((target("avx2,fma"))) static R avx2(Args... args) { return Body(args...); }
    static R base(Args... args) { return Body(args...); }
};

template <auto Body>
auto simd_dispatch() {
    return cpu_has_avx2_fma() ? &SimdClones<Body>::avx2 : &SimdClones<Body>::base;
}

}  // namespace prospect
