#include "decode_step.h"

#include "matvec.h"
#include "row_ops.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <cmath>

namespace prospect {

namespace {

PROSPECT_SIMD_INLINE float dot(const float* a, const float* b, int64_t n) {
    Vec8f s0 = {}, s1 = {};  // two accumulators: head_dim 64 is four iterations, each with two chains
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 += load8(a + i) * load8(b + i);
        s1 += load8(a + i + 8) * load8(b + i + 8);
    }
    if (i + 8 <= n) {
        s0 += load8(a + i) * load8(b + i);
        i += 8;
    }
    float s = sum8(s0 + s1);
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
}

// One query head over `keys` cached tokens: out [D] = softmax(K q * scale) V. K, V: [keys, D] rows;
// p: scratch for the keys' weights.
PROSPECT_SIMD_INLINE void attend_head_body(const float* q, const float* K, const float* V, float* p, float* out,
                                           int64_t keys, int64_t D, float scale) {
    float top = -INFINITY;
    for (int64_t j = 0; j < keys; ++j) {
        p[j] = dot(q, K + j * D, D) * scale;
        top = std::max(top, p[j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < keys; ++j) sum += (p[j] = std::exp(p[j] - top));
    std::fill(out, out + D, 0.0f);
    for (int64_t j = 0; j < keys; ++j) {
        const float pj = p[j] / sum;
        const float* vj = V + j * D;
        for (int64_t i = 0; i < D; ++i) out[i] += pj * vj[i];
    }
}

const auto attend_head = simd_dispatch<attend_head_body>();

}  // namespace

int64_t decode_scratch_size(const DecodeShape& s, int64_t keys) {
    const int64_t nq = s.heads * s.head_dim, nkv = s.kv_heads * s.head_dim;
    return s.hidden + (nq + 2 * nkv) + nq + s.hidden + 2 * s.intermediate + s.heads * keys;
}

void decode_layer(float* x, const DecodeWeights& w, const DecodeShape& s, float* kv, int64_t capacity, int64_t slot,
                  const float* cos, const float* sin, float* scratch) {
    const int64_t H = s.hidden, D = s.head_dim, nq = s.heads * D, nkv = s.kv_heads * D, I = s.intermediate;
    const int64_t keys = slot + 1;
    float* h = scratch;
    float* qkv = h + H;
    float* attn = qkv + nq + 2 * nkv;
    float* proj = attn + nq;
    float* gu = proj + H;
    float* scores = gu + 2 * I;

    rms_norm_row(x, w.input_norm, h, H, s.eps);
    matvec(*w.qkv, h, qkv);
    float* q = qkv;
    float* k = qkv + nq;
    const float* v = qkv + nq + nkv;
    rope_heads(q, s.heads, D, cos, sin);
    rope_heads(k, s.kv_heads, D, cos, sin);
    float* K = kv;                              // [kv_heads, capacity, D]
    float* V = kv + s.kv_heads * capacity * D;  // the same for values
    for (int64_t g = 0; g < s.kv_heads; ++g) {
        std::copy(k + g * D, k + (g + 1) * D, K + (g * capacity + slot) * D);
        std::copy(v + g * D, v + (g + 1) * D, V + (g * capacity + slot) * D);
    }

    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const int64_t group = s.heads / s.kv_heads;
    pool_for(s.heads, 1, [&](int64_t h0, int64_t h1) {
        for (int64_t hd = h0; hd < h1; ++hd) {
            const int64_t g = hd / group;
            attend_head(q + hd * D, K + g * capacity * D, V + g * capacity * D, scores + hd * keys, attn + hd * D, keys,
                        D, scale);
        }
    });
    matvec(*w.o, attn, proj);
    add_into(x, proj, H);

    rms_norm_row(x, w.post_norm, h, H, s.eps);
    matvec(*w.gate_up, h, gu);
    silu_mul(gu, gu + I, gu, I);
    matvec(*w.down, gu, proj);
    add_into(x, proj, H);
}

}  // namespace prospect
