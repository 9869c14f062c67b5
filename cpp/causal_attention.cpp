#include "causal_attention.h"

#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// A row of scores -> exp(p - max) over keys 0..m, 0 from m to `most` (keys the query does not see);
// returns 1 / the sum. Degree: exp_approx's.
template <class Vec, int Degree = 6>
PROSPECT_SIMD_INLINE float softmax_row(float* p, int64_t m, int64_t most) {
    constexpr int64_t W = sizeof(Vec) / sizeof(float);
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
        const Vec e = exp_approx<Degree>(loadv<Vec>(p + j) - top);
        storev(p + j, e);
        sums += e;
    }
    float sum = lanes_sum(sums);
    for (; j < m; ++j) sum += (p[j] = std::exp(p[j] - top));
    std::fill(p + m, p + most, 0.0f);
    return 1.0f / sum;
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
    for (int64_t i = 0; i < kQueries; ++i) inv[i] = softmax_row<Vec>(s + i * stride, keys[i], most);
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

// ---- bf16 products (AVX512_BF16's vdpbf16ps: 16 lanes, each the sum of two bf16 products) ----------
// Keys in tiles of 16 as pairs of dimensions: [tiles][head_dim / 2][16 keys][2]; one vector is a tile's
// 16 keys at one pair, against a query's pair broadcast. Values in pairs of keys: [keys / 2][head_dim][2];
// one vector is 16 dimensions of two keys, against a query's two weights broadcast. Both laid out once
// per prefill layer (the keys are transposed for fp32 as well); queries and weights rounded per task.
#if defined(__x86_64__)
#define PROSPECT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

// n floats (a multiple of 16) rounded to bf16 (to nearest even) into out.
PROSPECT_SIMD_INLINE void round_row(const float* x, uint16_t* out, int64_t n) {
    using U = decltype(Vec16f{} < Vec16f{});
    for (int64_t i = 0; i < n; i += 16) {
        const U b = std::bit_cast<U>(loadv<Vec16f>(x + i));
        store_high_halves(out + i, bf16_rounded(b));
    }
}

// Keys j0..j1 (j1 - j0 <= 16, one tile; zero past j1) of one KV head's rows [.., D] (D: 32 or 64) into
// tile `kp` [D / 2][16][2], and their values into pairs [8][D][2] at `vp`.
PROSPECT_BF16_TARGET void lay_out_tile(const float* K, const float* V, int64_t j0, int64_t j1, int64_t D, uint32_t* kp,
                                       uint16_t* vp) {
    uint16_t row[2][64];
    for (int64_t j = j0; j < j0 + kTile; j += 2) {
        for (int e = 0; e < 2; ++e) {
            if (j + e < j1) {
                round_row(K + (j + e) * D, row[e], D);
            } else {
                std::fill(row[e], row[e] + D, uint16_t{0});
            }
            uint32_t pair[32];
            std::memcpy(pair, row[e], D * sizeof(uint16_t));
            for (int64_t m = 0; m < D / 2; ++m) kp[m * kTile + (j + e - j0)] = pair[m];
            if (j + e < j1) {
                round_row(V + (j + e) * D, row[e], D);
            } else {
                std::fill(row[e], row[e] + D, uint16_t{0});
            }
        }
        uint16_t* out = vp + (j - j0) / 2 * D * 2;
        for (int64_t c = 0; c < D; c += 32) {
            const Half32 a = loadv<Half32>(row[0] + c), b = loadv<Half32>(row[1] + c);
            storev(out + 2 * c, __builtin_shufflevector(a, b, 0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39, 8,
                                                        40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47));
            if (c + 16 < D) {
                storev(out + 2 * c + 32,
                       __builtin_shufflevector(a, b, 16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55, 24,
                                               56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63));
            }
        }
    }
}

PROSPECT_BF16_TARGET inline __m512 dot_pairs(__m512 acc, __m512i a, uint32_t pair) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)_mm512_set1_epi32(static_cast<int>(pair)));
}

// Scores of kQueries queries (qp: their pairs, scaled) against NT tiles of keys from key j into s.
// Two tiles at a time make eight sums in flight: each vdpbf16ps waits for the last one into its sum.
template <int64_t Pairs, int NT>
PROSPECT_BF16_TARGET inline void score_tiles(const uint32_t (*qp)[Pairs], const uint32_t* Kp, int64_t j, float* s,
                                             int64_t stride) {
    __m512 acc[NT][kQueries];
    for (auto& row : acc) {
        for (auto& a : row) a = _mm512_setzero_ps();
    }
    const uint32_t* tile = Kp + j / kTile * Pairs * kTile;
    for (int64_t m = 0; m < Pairs; ++m) {
        __m512i k[NT];
        for (int t = 0; t < NT; ++t) k[t] = _mm512_loadu_si512(tile + (t * Pairs + m) * kTile);
        for (int64_t i = 0; i < kQueries; ++i) {
            for (int t = 0; t < NT; ++t) acc[t][i] = dot_pairs(acc[t][i], k[t], qp[i][m]);
        }
    }
    for (int t = 0; t < NT; ++t) {
        for (int64_t i = 0; i < kQueries; ++i) _mm512_storeu_ps(s + i * stride + j + t * kTile, acc[t][i]);
    }
}

// As attend_body, from the layouts above; NV: head_dim / 16. pb: scratch [kQueries, stride] bf16.
template <int NV>
PROSPECT_BF16_TARGET void attend_bf16(const float* const* q, const int64_t* keys, int64_t n, const uint32_t* Kp,
                                      int64_t stride, const uint16_t* Vp, float scale, float* s, uint16_t* pb,
                                      float* out, int64_t out_stride) {
    constexpr int64_t D = NV * 16, pairs = D / 2;
    const int64_t most = keys[kQueries - 1];
    uint32_t qp[kQueries][pairs];
    for (int64_t i = 0; i < kQueries; ++i) {
        float scaled[D];
        for (int64_t d = 0; d < D; ++d) scaled[d] = q[i][d] * scale;
        round_row(scaled, reinterpret_cast<uint16_t*>(qp[i]), D);
    }
    int64_t j = 0;
    for (; j + kTile < most; j += 2 * kTile) score_tiles<pairs, 2>(qp, Kp, j, s, stride);
    if (j < most) score_tiles<pairs, 1>(qp, Kp, j, s, stride);  // at most one tile is left
    const int64_t even = (most + 1) / 2 * 2;
    float inv[kQueries];
    for (int64_t i = 0; i < kQueries; ++i) {
        float* p = s + i * stride;
        inv[i] = softmax_row<Vec16f, 4>(p, keys[i], even);  // to be rounded to bf16; zero to an even count
        round_row(p, pb + i * stride, (even + 15) / 16 * 16);
    }
    __m512 acc[kQueries][NV];
    for (auto& row : acc) {
        for (auto& a : row) a = _mm512_setzero_ps();
    }
    for (int64_t u = 0; u < even / 2; ++u) {
        __m512i v[NV];
        for (int c = 0; c < NV; ++c) v[c] = _mm512_loadu_si512(Vp + (u * D + c * 16) * 2);
        for (int64_t i = 0; i < kQueries; ++i) {
            uint32_t w;
            std::memcpy(&w, pb + i * stride + 2 * u, sizeof w);
            for (int c = 0; c < NV; ++c) acc[i][c] = dot_pairs(acc[i][c], v[c], w);
        }
    }
    for (int64_t i = 0; i < n; ++i) {
        for (int c = 0; c < NV; ++c) _mm512_storeu_ps(out + i * out_stride + c * 16, acc[i][c] * inv[i]);
    }
}
#endif

bool use_bf16(const CausalAttention& a) {
#if defined(__x86_64__)
    static const bool cpu = cpu_has_bf16_dot();
    return a.bf16 && cpu && (a.head_dim == 32 || a.head_dim == 64);
#else
    (void)a;
    return false;
#endif
}

// fn(begin, end) over [0, n) on the threads a.aten_threads names, in chunks of at least `grain`.
template <class F>
void run_tasks(const CausalAttention& a, int64_t n, int64_t grain, const F& fn) {
    if (a.aten_threads) {
        aten_for(n, grain, fn);
    } else {
        pool_for(n, grain, fn);
    }
}

// The tasks, (head, block of kQueries queries), claimed one by one: fn(the queries, the keys each sees,
// how many are real, their KV head, where their output starts).
template <class F>
void for_each_block(const CausalAttention& a, const float* q, int64_t q_stride, const F& fn) {
    const int64_t D = a.head_dim, rep = a.heads / a.kv_heads;
    const int64_t blocks = (a.tokens + kQueries - 1) / kQueries;
    run_tasks(a, a.heads * blocks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t task = t0; task < t1; ++task) {
            const int64_t h = task / blocks, b0 = task % blocks * kQueries;
            const int64_t n = std::min(kQueries, a.tokens - b0);
            const float* qs[kQueries];
            int64_t seen[kQueries];
            for (int64_t i = 0; i < kQueries; ++i) {
                const int64_t t = b0 + std::min(i, n - 1);  // a short block repeats its last query, unused
                qs[i] = q + t * q_stride + h * D;
                seen[i] = a.causal ? a.first + t + 1 : a.first + a.tokens;
            }
            fn(qs, seen, n, h / rep, b0 * a.heads * D + h * D);
        }
    });
}

}  // namespace

void causal_attention(const CausalAttention& a, const float* q, int64_t q_stride, const float* K, const float* V,
                      float* out) {
    const int64_t D = a.head_dim, keys = a.first + a.tokens;
    const int64_t stride = (keys + kTile - 1) / kTile * kTile;  // whole tiles
    const int64_t tiles = stride / kTile;
    const int64_t row_stride = a.heads * D;
#if defined(__x86_64__)
    if (use_bf16(a)) {
        thread_local std::vector<uint32_t> kp;  // every layer of every prefill: keep the buffers
        thread_local std::vector<uint16_t> vp;
        kp.resize(static_cast<size_t>(a.kv_heads * stride * D / 2));
        vp.resize(static_cast<size_t>(a.kv_heads * stride * D));
        uint32_t* pk = kp.data();
        uint16_t* pv = vp.data();
        run_tasks(a, a.kv_heads * tiles, 8, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
                const int64_t g = b / tiles, j0 = b % tiles * kTile;
                lay_out_tile(K + g * a.capacity * D, V + g * a.capacity * D, j0, std::min(j0 + kTile, keys), D,
                             pk + (g * stride + j0) * D / 2, pv + (g * stride + j0) * D);
            }
        });
        for_each_block(a, q, q_stride,
                       [&](const float* const* qs, const int64_t* seen, int64_t n, int64_t g, int64_t at) {
                           thread_local std::vector<float> scores;
                           thread_local std::vector<uint16_t> weights;
                           scores.resize(static_cast<size_t>(kQueries * stride));
                           weights.resize(static_cast<size_t>(kQueries * stride));
                           const auto run = D == 64 ? attend_bf16<4> : attend_bf16<2>;
                           run(qs, seen, n, pk + g * stride * D / 2, stride, pv + g * stride * D, a.scale,
                               scores.data(), weights.data(), out + at, row_stride);
                       });
        return;
    }
#endif
    // The keys transposed in tiles, per KV head: a block of scores is then head_dim vector products. Tiles
    // on the pool (their 16 rows stay in L1 while they are spread out), zero past the last key.
    thread_local std::vector<float> transposed;  // every layer of every prefill: keep the buffer
    transposed.resize(static_cast<size_t>(a.kv_heads * D * stride));
    float* kt = transposed.data();
    run_tasks(a, a.kv_heads * tiles, 8, [&](int64_t b0, int64_t b1) {
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
    for_each_block(a, q, q_stride, [&](const float* const* qs, const int64_t* seen, int64_t n, int64_t g, int64_t at) {
        thread_local std::vector<float> scores;
        scores.resize(static_cast<size_t>(kQueries * stride));
        attend(qs, seen, n, kt + g * D * stride, stride, V + g * a.capacity * D, D, a.scale, scores.data(), out + at,
               row_stride);
    });
}

}  // namespace prospect
