#include "causal_attention.h"

#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace prospect {

namespace {

constexpr int64_t kQueries = 4;  // queries a task: each key vector loaded serves four

template <class V>
PROSPECT_SIMD_INLINE V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <class V>
PROSPECT_SIMD_INLINE void store(float* p, V v) {
    std::memcpy(p, &v, sizeof v);
}

// Queries q[0..n) (n <= kQueries) of one head against keys 0..keys[i] of its KV head. Kt: the keys
// transposed, [head_dim, stride] with stride a whole number of vectors (zero past the last key); V rows
// [keys, head_dim]; s: scratch [kQueries, stride]; out rows head_dim floats, out_stride apart.
template <class Vec>
PROSPECT_SIMD_INLINE void attend_body(const float* const* q, const int64_t* keys, int64_t n, const float* Kt,
                                      int64_t stride, const float* Vr, int64_t D, float scale, float* s, float* out,
                                      int64_t out_stride) {
    constexpr int64_t W = sizeof(Vec) / sizeof(float);
    const int64_t most = keys[n - 1];
    // Scores: for each block of W keys, the head_dim products summed across Kt's rows, no horizontal sums.
    for (int64_t j = 0; j < most; j += W) {
        Vec acc[kQueries] = {};
        for (int64_t d = 0; d < D; ++d) {
            const Vec k = load<Vec>(Kt + d * stride + j);
            for (int64_t i = 0; i < kQueries; ++i) acc[i] += q[i][d] * k;
        }
        for (int64_t i = 0; i < n; ++i) store(s + i * stride + j, acc[i] * scale);
    }
    for (int64_t i = 0; i < n; ++i) {
        float* p = s + i * stride;
        const int64_t m = keys[i];
        float top = -INFINITY;
        for (int64_t j = 0; j < m; ++j) top = std::max(top, p[j]);
        float sum = 0;
        int64_t j = 0;
        for (; j + W <= m; j += W) {
            const Vec e = exp_approx(load<Vec>(p + j) - top);
            store(p + j, e);
            for (int64_t l = 0; l < W; ++l) sum += e[l];
        }
        for (; j < m; ++j) sum += (p[j] = std::exp(p[j] - top));
        float* o = out + i * out_stride;
        std::fill(o, o + D, 0.0f);
        for (j = 0; j < m; ++j) {
            const float w = p[j];
            const float* v = Vr + j * D;
            int64_t c = 0;
            for (; c + W <= D; c += W) store(o + c, load<Vec>(o + c) + w * load<Vec>(v + c));
            for (; c < D; ++c) o[c] += w * v[c];
        }
        const float inv = 1.0f / sum;
        for (int64_t c = 0; c < D; ++c) o[c] *= inv;
    }
}

const auto attend = simd_dispatch_wide<attend_body<Vec16f>, attend_body<Vec8f>>();

}  // namespace

void causal_attention(const CausalAttention& a, const float* q, int64_t q_stride, const float* K, const float* V,
                      float* out) {
    const int64_t D = a.head_dim, keys = a.first + a.tokens, rep = a.heads / a.kv_heads;
    const int64_t stride = (keys + 15) / 16 * 16;  // whole vectors of 16 (or 8) keys
    // The keys transposed, per KV head: a block of scores is then head_dim vector products.
    std::vector<float> kt(static_cast<size_t>(a.kv_heads * D * stride), 0.0f);
    for (int64_t g = 0; g < a.kv_heads; ++g) {
        const float* k = K + g * a.capacity * D;
        float* t = kt.data() + g * D * stride;
        for (int64_t j = 0; j < keys; ++j)
            for (int64_t d = 0; d < D; ++d) t[d * stride + j] = k[j * D + d];
    }
    const int64_t blocks = (a.tokens + kQueries - 1) / kQueries;
    pool_for(a.heads * blocks, 1, [&](int64_t t0, int64_t t1) {
        thread_local std::vector<float> scores;
        scores.resize(static_cast<size_t>(kQueries * stride));
        for (int64_t task = t0; task < t1; ++task) {
            const int64_t h = task / blocks, b0 = task % blocks * kQueries, g = h / rep;
            const int64_t n = std::min(kQueries, a.tokens - b0);
            const float* qs[kQueries];
            int64_t seen[kQueries];
            for (int64_t i = 0; i < kQueries; ++i) {
                const int64_t t = b0 + std::min(i, n - 1);  // a short block repeats its last query, unused
                qs[i] = q + t * q_stride + h * D;
                seen[i] = a.first + t + 1;
            }
            attend(qs, seen, n, kt.data() + g * D * stride, stride, V + g * a.capacity * D, D, a.scale, scores.data(),
                   out + b0 * a.heads * D + h * D, a.heads * D);
        }
    });
}

}  // namespace prospect
