#include "gelu.h"

#include "simd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>

namespace prospect {

namespace {

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

PROSPECT_SIMD_INLINE float gelu1(float x) {
    const float u = 0.7978845608f * (x + 0.044715f * x * x * x);
    return x / (1.0f + std::exp(-2.0f * u));
}

PROSPECT_SIMD_INLINE void rows_body(float* x, const float* b, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r, x += cols) {
        int64_t i = 0;
        for (; i + 8 <= cols; i += 8) {
            Vec8f v = load8(x + i) + load8(b + i);
            const Vec8f u = 0.7978845608f * (v + 0.044715f * v * v * v);
            v = v / (1.0f + exp8(-2.0f * u));
            store8(x + i, v);
        }
        for (; i < cols; ++i) x[i] = gelu1(x[i] + b[i]);
    }
}

const auto gelu_rows = simd_dispatch<rows_body>();

}  // namespace

void bias_gelu_tanh(float* x, const float* bias, int64_t rows, int64_t cols) {
    const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(cols, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) { gelu_rows(x + r0 * cols, bias, r1 - r0, cols); });
}

}  // namespace prospect
