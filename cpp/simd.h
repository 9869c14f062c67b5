// The CPU kernels' SIMD: eight floats in a GCC/Clang vector, and one body compiled twice, for
// AVX2 + FMA and for the baseline ISA, picked once by what the CPU runs. Bodies written for any
// vector width also get sixteen floats on AVX-512. The CPU is asked directly:
// target_clones("arch=haswell") dispatches on the CPU model, so other AVX2 CPUs got the baseline.
#pragma once

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace prospect {

// Eight floats (or ints); element-wise + - * / and comparisons. aligned(4): loads need not be aligned.
typedef float Vec8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t Vec8i __attribute__((vector_size(32), aligned(4)));
typedef float Vec16f __attribute__((vector_size(64), aligned(4)));

// Kernel bodies carry this, so they are inlined into (and built for) each ISA's copy.
#define PROSPECT_SIMD_INLINE inline __attribute__((always_inline))

// A vector of any width from memory, to memory, and the sum of its lanes.
template <class V>
PROSPECT_SIMD_INLINE V loadv(const void* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <class V>
PROSPECT_SIMD_INLINE void storev(void* p, V v) {
    std::memcpy(p, &v, sizeof v);
}

template <class V>
PROSPECT_SIMD_INLINE float lanes_sum(V v) {
    float s = 0;
    for (size_t j = 0; j < sizeof(V) / sizeof(float); ++j) s += v[j];
    return s;
}

// The largest of a vector's lanes.
template <class V>
PROSPECT_SIMD_INLINE float lanes_max(V v) {
    float m = v[0];
    for (size_t j = 1; j < sizeof(V) / sizeof(float); ++j) m = v[j] > m ? v[j] : m;
    return m;
}

// max |x[i]| over n floats, in vectors of V (a scalar std::max loop does not vectorize: NaN rules).
template <class V>
PROSPECT_SIMD_INLINE float abs_max(const float* x, int64_t n) {
    using U = decltype(V{} < V{});
    constexpr int64_t W = sizeof(V) / sizeof(float);
    V top{};
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        const V a = std::bit_cast<V>(std::bit_cast<U>(loadv<V>(x + i)) & 0x7FFFFFFF);
        top = a > top ? a : top;
    }
    float m = lanes_max(top);
    for (; i < n; ++i) m = std::fabs(x[i]) > m ? std::fabs(x[i]) : m;
    return m;
}

PROSPECT_SIMD_INLINE Vec8f load8(const float* p) { return loadv<Vec8f>(p); }
PROSPECT_SIMD_INLINE void store8(float* p, Vec8f v) { storev(p, v); }
PROSPECT_SIMD_INLINE float sum8(Vec8f v) { return lanes_sum(v); }

// A bf16 (its bits) is the top half of the float it stands for.
PROSPECT_SIMD_INLINE float bf16_to_float(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// A float's bits (one, or a vector of them) with the nearest bf16 (ties to even) in their top halves.
template <class U>
PROSPECT_SIMD_INLINE U bf16_rounded(U bits) {
    return bits + 0x7FFF + ((bits >> 16) & 1);
}

// A float rounded to the nearest bf16 (ties to even), as its bits.
PROSPECT_SIMD_INLINE uint16_t float_to_bf16(float f) {
    return static_cast<uint16_t>(bf16_rounded(std::bit_cast<uint32_t>(f)) >> 16);
}

typedef uint16_t Half32 __attribute__((vector_size(64), aligned(2)));
typedef uint16_t Half16 __attribute__((vector_size(32), aligned(2)));

// The top 16 bits of each 32-bit lane of u (16 or 8 lanes) into p, in order: floats cut to bf16.
template <class U>
PROSPECT_SIMD_INLINE void store_high_halves(uint16_t* p, U u) {
    if constexpr (sizeof(U) == 64) {
        const Half32 h = std::bit_cast<Half32>(u);
        storev(p, __builtin_shufflevector(h, h, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31));
    } else {
        const Half16 h = std::bit_cast<Half16>(u);
        storev(p, __builtin_shufflevector(h, h, 1, 3, 5, 7, 9, 11, 13, 15));
    }
}

// exp(t) for t <= 0 .. 88, for a vector of any width: t = n ln2 + r with |r| <= ln2/2, exp(r) by its
// Taylor polynomial, 2^n built in the exponent bits. Degree 6: relative error < 2e-7. Degree 4: < 5e-5,
// for results rounded to bf16 (whose half ulp is 2e-3).
template <int Degree = 6, class V>
PROSPECT_SIMD_INLINE V exp_approx(V t) {
    static_assert(Degree == 4 || Degree == 6);
    using I = decltype(t < t);  // the ints of V's width
    t = t < -87.0f ? -87.0f : t;
    t = t > 88.0f ? 88.0f : t;
    const V shifter = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
    const V f = t * 1.44269504f + shifter;
    const V n = f - shifter;
    const V r = t - n * 0.693145752f - n * 1.42860677e-6f;  // ln2 split in two for an exact product
    V p = V{} + 1.0f / 24;
    if constexpr (Degree == 6) p = (r * (1.0f / 720) + 1.0f / 120) * r + p;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const I bits = ((std::bit_cast<I>(f) - 0x4B400000) + 127) << 23;
    return p * std::bit_cast<V>(bits);
}

inline bool cpu_has_avx2_fma() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

inline bool cpu_has_avx512() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

// Intel's cores read dense rows faster interleaved, AMD's one after another (matvec.cpp).
inline bool cpu_is_intel() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_is("intel");
#else
    return false;
#endif
}

// Whether this CPU multiplies bf16 in hardware: AVX512_BF16's vdpbf16ps (every CPU with AMX-BF16 has it).
inline bool cpu_has_bf16_dot() {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
    return false;
#endif
}

// simd_dispatch<body>(): a pointer to `body` built for AVX2 + FMA if the CPU has them, else for the
// baseline ISA. `body` is a PROSPECT_SIMD_INLINE function; call the pointer, kept in a namespace-scope
// const, so the CPU is asked once per kernel.
template <auto Body>
struct SimdClones;

template <class R, class... Args, R (*Body)(Args...)>
struct SimdClones<Body> {
    __attribute__((target("avx2,fma"))) static R avx2(Args... args) { return Body(args...); }
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"))) static R avx512(Args... args) {
        return Body(args...);
    }
    static R base(Args... args) { return Body(args...); }
};

template <auto Body>
auto simd_dispatch() {
    return cpu_has_avx2_fma() ? &SimdClones<Body>::avx2 : &SimdClones<Body>::base;
}

// simd_dispatch_wide<wide, body>(): `wide` (a body instantiated for Vec16f) built for AVX-512 where the
// CPU has it, else simd_dispatch<body>() (the same body for Vec8f).
template <auto Wide, auto Body>
auto simd_dispatch_wide() {
    return cpu_has_avx512() ? &SimdClones<Wide>::avx512 : simd_dispatch<Body>();
}

}  // namespace prospect
