#include "gelu.h"

#include "simd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

namespace prospect {

namespace {

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
