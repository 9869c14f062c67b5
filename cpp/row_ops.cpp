#include "row_ops.h"

#include "simd.h"

#include <cmath>
#include <type_traits>

namespace prospect {

namespace {

// Floats (one, or a vector) rounded to the nearest bf16, still floats.
template <class V>
PROSPECT_SIMD_INLINE V to_bf16(V v) {
    using U = std::conditional_t<std::is_same_v<V, float>, uint32_t, decltype(V{} < V{})>;
    return std::bit_cast<V>(bf16_rounded(std::bit_cast<U>(v)) & static_cast<int32_t>(0xFFFF0000u));
}

template <class V, bool Bf16>
PROSPECT_SIMD_INLINE void silu_mul_body(const float* gate, const float* up, float* out, int64_t n) {
    constexpr int64_t W = sizeof(V) / sizeof(float);
    const auto round = [](auto v) { return Bf16 ? to_bf16(v) : v; };
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        const V g = loadv<V>(gate + i);
        storev(out + i, round(round(g / (1.0f + exp_approx(-g))) * loadv<V>(up + i)));
    }
    for (; i < n; ++i) out[i] = round(round(gate[i] / (1.0f + std::exp(-gate[i]))) * up[i]);
}

const auto silu_mul_rows = simd_dispatch_wide<silu_mul_body<Vec16f, false>, silu_mul_body<Vec8f, false>>();
const auto silu_mul_rows_bf16 = simd_dispatch_wide<silu_mul_body<Vec16f, true>, silu_mul_body<Vec8f, true>>();

template <class V>
PROSPECT_SIMD_INLINE void round_body(float* x, int64_t n) {
    constexpr int64_t W = sizeof(V) / sizeof(float);
    int64_t i = 0;
    for (; i + W <= n; i += W) storev(x + i, to_bf16(loadv<V>(x + i)));
    for (; i < n; ++i) x[i] = to_bf16(x[i]);
}

const auto round_rows = simd_dispatch_wide<round_body<Vec16f>, round_body<Vec8f>>();

// 1 / sqrt(mean(x^2) + eps), the sum in double.
float inv_rms(const float* x, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    return 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
}

}  // namespace

void rms_norm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
    const float r = inv_rms(x, n, eps);
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

void round_to_bf16(float* x, int64_t n) { round_rows(x, n); }

void store_bf16(const float* x, uint16_t* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(x[i]);
}

void rms_norm_row_bf16(const float* x, const uint16_t* w, float* out, int64_t n, float eps) {
    const float r = inv_rms(x, n, eps);
    for (int64_t i = 0; i < n; ++i) out[i] = to_bf16(bf16_to_float(w[i]) * to_bf16(x[i] * r));
}

void rope_heads_bf16(float* v, int64_t heads, int64_t d, const float* cos, const float* sin) {
    const int64_t h = d / 2;
    for (int64_t k = 0; k < heads; ++k, v += d) {
        for (int64_t i = 0; i < h; ++i) {
            const float a = v[i], b = v[i + h];
            v[i] = to_bf16(to_bf16(a * cos[i]) - to_bf16(b * sin[i]));
            v[i + h] = to_bf16(to_bf16(b * cos[i + h]) + to_bf16(a * sin[i + h]));
        }
    }
}

void silu_mul_bf16(const float* gate, const float* up, float* out, int64_t n) { silu_mul_rows_bf16(gate, up, out, n); }

void add_into(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace prospect
