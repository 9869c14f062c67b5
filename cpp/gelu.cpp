#include "gelu.h"

#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>

namespace prospect {

namespace {

PROSPECT_SIMD_INLINE float gelu1(float x) {
    const float u = 0.7978845608f * (x + 0.044715f * x * x * x);
    return x / (1.0f + std::exp(-2.0f * u));
}

template <class V>
PROSPECT_SIMD_INLINE void rows_body(float* x, const float* b, int64_t rows, int64_t cols) {
    constexpr int64_t W = sizeof(V) / sizeof(float);
    for (int64_t r = 0; r < rows; ++r, x += cols) {
        int64_t i = 0;
        for (; i + W <= cols; i += W) {
            V v = loadv<V>(x + i) + loadv<V>(b + i);
            const V u = 0.7978845608f * (v + 0.044715f * v * v * v);
            v = v / (1.0f + exp_approx(-2.0f * u));
            storev(x + i, v);
        }
        for (; i < cols; ++i) x[i] = gelu1(x[i] + b[i]);
    }
}

const auto gelu_rows = simd_dispatch_wide<rows_body<Vec16f>, rows_body<Vec8f>>();

}  // namespace

void bias_gelu_tanh(float* x, const float* bias, int64_t rows, int64_t cols) {
    const int64_t chunk = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(cols, 1));
    aten_for(rows, chunk, [&](int64_t r0, int64_t r1) { gelu_rows(x + r0 * cols, bias, r1 - r0, cols); });
}

void bias_gelu_tanh_rows(float* x, const float* bias, int64_t rows, int64_t cols) { gelu_rows(x, bias, rows, cols); }

}  // namespace prospect
