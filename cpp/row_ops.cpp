#include "row_ops.h"

#include "simd.h"

#include <cmath>

namespace prospect {

namespace {

template <class V>
PROSPECT_SIMD_INLINE void silu_mul_body(const float* gate, const float* up, float* out, int64_t n) {
    constexpr int64_t W = sizeof(V) / sizeof(float);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        const V g = loadv<V>(gate + i);
        storev(out + i, g / (1.0f + exp_approx(-g)) * loadv<V>(up + i));
    }
    for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

const auto silu_mul_rows = simd_dispatch_wide<silu_mul_body<Vec16f>, silu_mul_body<Vec8f>>();

}  // namespace

void rms_norm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

void rope_heads(float* v, int64_t heads, int64_t d, const float* cos, const float* sin) {
    const int64_t h = d / 2;
    for (int64_t k = 0; k < heads; ++k, v += d) {
        for (int64_t i = 0; i < h; ++i) {
            const float a = v[i], b = v[i + h];
            v[i] = a * cos[i] - b * sin[i];
            v[i + h] = b * cos[i + h] + a * sin[i + h];
        }
    }
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) { silu_mul_rows(gate, up, out, n); }

void add_into(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace prospect
