#include "gelu.h"

#include "cpu_features.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

namespace prospect {

namespace {

typedef float v8 __attribute__((vector_size(32), aligned(4)));  // unaligned loads are fine
typedef int i8 __attribute__((vector_size(32)));

// exp(t) for t <= 0 .. 88: t = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor
// polynomial (relative error < 2e-7 there), 2^n built in the exponent bits.
inline __attribute__((always_inline)) v8 exp8(v8 t) {
    t = t < -87.0f ? -87.0f : t;
    t = t > 88.0f ? 88.0f : t;
    const v8 shifter = v8{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
    const v8 f = t * 1.44269504f + shifter;
    const v8 n = f - shifter;
    const v8 r = t - n * 0.693145752f - n * 1.42860677e-6f;  // ln2 split in two for an exact product
    v8 p = r * (1.0f / 720) + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const i8 bits = ((std::bit_cast<i8>(f) - 0x4B400000) + 127) << 23;
    return p * std::bit_cast<v8>(bits);
}

inline __attribute__((always_inline)) float gelu1(float x) {
    const float u = 0.7978845608f * (x + 0.044715f * x * x * x);
    return x / (1.0f + std::exp(-2.0f * u));
}

inline __attribute__((always_inline)) void rows_body(float* x, const float* b, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r, x += cols) {
        int64_t i = 0;
        for (; i + 8 <= cols; i += 8) {
            v8 v, bb;
            std::memcpy(&v, x + i, sizeof v);
            std::memcpy(&bb, b + i, sizeof bb);
            v += bb;
            const v8 u = 0.7978845608f * (v + 0.044715f * v * v * v);
            v = v / (1.0f + exp8(-2.0f * u));
            std::memcpy(x + i, &v, sizeof v);
        }
        for (; i < cols; ++i) x[i] = gelu1(x[i] + b[i]);
    }
}

__attribute__((target("avx2,fma"))) void rows_avx2(float* x, const float* b, int64_t rows, int64_t cols) {
    rows_body(x, b, rows, cols);
}

void rows_base(float* x, const float* b, int64_t rows, int64_t cols) { rows_body(x, b, rows, cols); }

using rows_fn = void (*)(float*, const float*, int64_t, int64_t);

const rows_fn gelu_rows = cpu_has_avx2_fma() ? rows_avx2 : rows_base;

}  // namespace

void bias_gelu_tanh(float* x, const float* bias, int64_t rows, int64_t cols) {
    const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(cols, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { gelu_rows(x + r0 * cols, bias, r1 - r0, cols); });
}

}  // namespace prospect
