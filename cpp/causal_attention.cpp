#include "causal_attention.h"

#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace prospect {

namespace {

constexpr int64_t kQueries = 4;  // queries a task: each key vector loaded serves four
constexpr int64_t kTile = 16;    // keys a tile of the transposed keys: a whole number of vectors

// out_i = sum_j p_i[j] V_j for the kQueries rows of p (stride apart, zero past each query's keys), over
// keys 0..most: NV vectors of each output row in registers (a row kept in memory would chain every key's
// add through a store and a load), the columns past NV vectors one by one. Rows i < n are stored, times
// inv[i].
template <class Vec, int NV>
PROSPECT_SIMD_INLINE void weighted_sum(const float* p, int64_t stride, int64_t most, const float* Vr, int64_t D,
                                       const float* inv, int64_t n, float* out, int64_t out_stride) {
    constexpr int64_t W = sizeof(Vec) / sizeof(float);
    Vec acc[kQueries][NV > 0 ? NV : 1] = {};
    if constexpr (NV > 0) {
        for (int64_t j = 0; j < most; ++j) {
            Vec v[NV];
            for (int c = 0; c < NV; ++c) v[c] = loadv<Vec>(Vr + j * D + c * W);
            for (int64_t i = 0; i < kQueries; ++i) {
                const float w = p[i * stride + j];
                for (int c = 0; c < NV; ++c) acc[i][c] += w * v[c];
            }
        }
    }
    for (int64_t i = 0; i < n; ++i) {
        float* o = out + i * out_stride;
        for (int c = 0; c < NV; ++c) storev(o + c * W, acc[i][c] * inv[i]);
        for (int64_t c = NV * W; c < D; ++c) {
            float sum = 0;
            for (int64_t j = 0; j < most; ++j) sum += p[i * stride + j] * Vr[j * D + c];
            o[c] = sum * inv[i];
        }
    }
}

// Queries q[0..n) (n <= kQueries; q has kQueries pointers) of one head against keys 0..keys[i] of its KV
// head. Kt: the keys transposed in tiles of 16, [stride / 16][head_dim][16] with stride a whole number of
// tiles (zero past the last key): a block of scores reads one contiguous tile. (Rows of the whole
// transposed matrix lay pages apart, and 4,000 keys took 4x the time of 2,000.) V rows [keys, head_dim];
// s: scratch [kQueries, stride]; out rows head_dim floats, out_stride apart.
template <class Vec>
PROSPECT_SIMD_INLINE void attend_body(const float* const* q, const int64_t* keys, int64_t n, const float* Kt,
                                      int64_t stride, const float* Vr, int64_t D, float scale, float* s, float* out,
                                      int64_t out_stride) {
    constexpr int64_t W = sizeof(Vec) / sizeof(float);
    const int64_t most = keys[kQueries - 1];
    // Scores: for each block of W keys, the head_dim products summed across Kt's rows, no horizontal sums.
    for (int64_t j = 0; j < most; j += W) {
        Vec acc[kQueries] = {};
        for (int64_t d = 0; d < D; ++d) {
            const Vec k = loadv<Vec>(Kt + (j / kTile * D + d) * kTile + j % kTile);
            for (int64_t i = 0; i < kQueries; ++i) acc[i] += q[i][d] * k;
        }
        for (int64_t i = 0; i < kQueries; ++i) storev(s + i * stride + j, acc[i] * scale);
    }
    float inv[kQueries];
    for (int64_t i = 0; i < kQueries; ++i) {
        float* p = s + i * stride;
        const int64_t m = keys[i];
        // In vectors: a scalar std::max loop does not vectorize (NaN rules), and a sum across lanes per
        // vector would cost more than its exponentials.
        Vec tops = Vec{} - INFINITY;
        int64_t j = 0;
        for (; j + W <= m; j += W) {
            const Vec v = loadv<Vec>(p + j);
            tops = v > tops ? v : tops;
        }
        float top = lanes_max(tops);
        for (; j < m; ++j) top = std::max(top, p[j]);
        Vec sums{};
        for (j = 0; j + W <= m; j += W) {
            const Vec e = exp_approx(loadv<Vec>(p + j) - top);
            storev(p + j, e);
            sums += e;
        }
        float sum = lanes_sum(sums);
        for (; j < m; ++j) sum += (p[j] = std::exp(p[j] - top));
        std::fill(p + m, p + most, 0.0f);  // keys this query does not see weigh nothing
        inv[i] = 1.0f / sum;
    }
    const int64_t vectors = D / W;
    if (vectors >= 8) {
        weighted_sum<Vec, 8>(s, stride, most, Vr, D, inv, n, out, out_stride);
    } else if (vectors >= 4) {
        weighted_sum<Vec, 4>(s, stride, most, Vr, D, inv, n, out, out_stride);
    } else if (vectors >= 2) {
        weighted_sum<Vec, 2>(s, stride, most, Vr, D, inv, n, out, out_stride);
    } else if (vectors >= 1) {
        weighted_sum<Vec, 1>(s, stride, most, Vr, D, inv, n, out, out_stride);
    } else {
        weighted_sum<Vec, 0>(s, stride, most, Vr, D, inv, n, out, out_stride);
    }
}

const auto attend = simd_dispatch_wide<attend_body<Vec16f>, attend_body<Vec8f>>();

}  // namespace

void causal_attention(const CausalAttention& a, const float* q, int64_t q_stride, const float* K, const float* V,
                      float* out) {
    const int64_t D = a.head_dim, keys = a.first + a.tokens, rep = a.heads / a.kv_heads;
    const int64_t stride = (keys + kTile - 1) / kTile * kTile;  // whole tiles
    // The keys transposed in tiles, per KV head: a block of scores is then head_dim vector products. Tiles
    // on the pool (their 16 rows stay in L1 while they are spread out), zero past the last key.
    thread_local std::vector<float> transposed;  // every layer of every prefill: keep the buffer
    transposed.resize(static_cast<size_t>(a.kv_heads * D * stride));
    float* kt = transposed.data();
    const int64_t tiles = stride / kTile;
    pool_for(a.kv_heads * tiles, 8, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t g = b / tiles, j0 = b % tiles * kTile, j1 = std::min(j0 + kTile, keys);
            const float* k = K + g * a.capacity * D;
            float* t = kt + (g * tiles + b % tiles) * D * kTile;
            for (int64_t d = 0; d < D; ++d, t += kTile) {
                for (int64_t j = j0; j < j1; ++j) t[j - j0] = k[j * D + d];
                std::fill(t + (j1 - j0), t + kTile, 0.0f);
            }
        }
    });
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
            attend(qs, seen, n, kt + g * D * stride, stride, V + g * a.capacity * D, D, a.scale, scores.data(),
                   out + b0 * a.heads * D + h * D, a.heads * D);
        }
    });
}

}  // namespace prospect
