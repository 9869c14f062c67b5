#include "decode_step.h"

#include "matvec.h"
#include "row_ops.h"
#include "simd.h"
#include "thread_pool.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <type_traits>

namespace prospect {

namespace {

typedef uint16_t Half8 __attribute__((vector_size(16), aligned(2)));

// Eight of a cache row's values as floats: fp32 as they are, bf16 widened.
template <class T>
PROSPECT_SIMD_INLINE Vec8f load_row8(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
        return load8(p);
    } else {
        return std::bit_cast<Vec8f>(__builtin_convertvector(loadv<Half8>(p), Vec8i) << 16);
    }
}

template <class T>
PROSPECT_SIMD_INLINE float row_value(const T* p) {
    if constexpr (std::is_same_v<T, float>) {
        return *p;
    } else {
        return bf16_to_float(*p);
    }
}

PROSPECT_SIMD_INLINE float rounded(float x) { return bf16_to_float(float_to_bf16(x)); }

template <class T>
PROSPECT_SIMD_INLINE float dot(const float* a, const T* b, int64_t n) {
    Vec8f s0 = {}, s1 = {};  // two accumulators: head_dim 64 is four iterations, each with two chains
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 += load8(a + i) * load_row8(b + i);
        s1 += load8(a + i + 8) * load_row8(b + i + 8);
    }
    if (i + 8 <= n) {
        s0 += load8(a + i) * load_row8(b + i);
        i += 8;
    }
    float s = sum8(s0 + s1);
    for (; i < n; ++i) s += a[i] * row_value(b + i);
    return s;
}

// One query head over `keys` cached tokens: out [D] = softmax(K q * scale) V. K, V: [keys, D] rows, fp32 or
// bf16; p: scratch for the keys' weights. Over a bf16 cache as ATen's CPU flash attention in bf16: scores and
// softmax in fp32, each weight rounded to bf16 before it weighs its value row, the sum over the unrounded
// weights, out rounded.
template <class T>
PROSPECT_SIMD_INLINE void attend_head_body(const float* q, const T* K, const T* V, float* p, float* out, int64_t keys,
                                           int64_t D, float scale) {
    constexpr bool bf16 = std::is_same_v<T, uint16_t>;
    float top = -INFINITY;
    for (int64_t j = 0; j < keys; ++j) {
        p[j] = dot(q, K + j * D, D) * scale;
        top = std::max(top, p[j]);
    }
    float sum = 0;
    for (int64_t j = 0; j < keys; ++j) {
        const float e = std::exp(p[j] - top);
        sum += e;
        p[j] = bf16 ? rounded(e) : e;
    }
    std::fill(out, out + D, 0.0f);
    for (int64_t j = 0; j < keys; ++j) {
        const float pj = bf16 ? p[j] : p[j] / sum;  // bf16: divided at the end, as flash attention does
        const T* vj = V + j * D;
        for (int64_t i = 0; i < D; ++i) out[i] += pj * row_value(vj + i);
    }
    if constexpr (bf16) {
        for (int64_t i = 0; i < D; ++i) out[i] = rounded(out[i] / sum);
    }
}

const auto attend_head = simd_dispatch<attend_head_body<float>>();
const auto attend_head_bf16 = simd_dispatch<attend_head_body<uint16_t>>();

// A layer's cache rows: fp32, or bf16 (the values already bf16, so the cast is exact).
void write_rows(const float* src, void* cache, int64_t offset, int64_t n, bool bf16) {
    if (bf16) {
        store_bf16(src, static_cast<uint16_t*>(cache) + offset, n);
    } else {
        std::copy(src, src + n, static_cast<float*>(cache) + offset);
    }
}

}  // namespace

void decode_norm(const float* x, const void* w, float* out, int64_t n, float eps, bool bf16) {
    if (bf16) {
        rms_norm_row_bf16(x, static_cast<const uint16_t*>(w), out, n, eps);
    } else {
        rms_norm_row(x, static_cast<const float*>(w), out, n, eps);
    }
}

int64_t decode_scratch_size(const DecodeShape& s, int64_t keys) {
    const int64_t nq = s.heads * s.head_dim, nkv = s.kv_heads * s.head_dim;
    return s.hidden + (nq + 2 * nkv) + nq + s.hidden + 2 * s.intermediate + s.heads * keys;
}

void decode_layer(float* x, const DecodeWeights& w, const DecodeShape& s, void* kv, int64_t capacity, int64_t slot,
                  const float* cos, const float* sin, float* scratch) {
    const int64_t H = s.hidden, D = s.head_dim, nq = s.heads * D, nkv = s.kv_heads * D, I = s.intermediate;
    const int64_t keys = slot + 1;
    float* h = scratch;
    float* qkv = h + H;
    float* attn = qkv + nq + 2 * nkv;
    float* proj = attn + nq;
    float* gu = proj + H;
    float* scores = gu + 2 * I;
    const auto product = [&](const Matrix& m, const float* in, float* out) {
        matvec(m, in, out);
        if (s.bf16) round_to_bf16(out, m.rows());  // a bf16 product: summed in fp32, rounded once
    };
    const auto residual = [&] {
        add_into(x, proj, H);
        if (s.bf16) round_to_bf16(x, H);
    };

    decode_norm(x, w.input_norm, h, H, s.eps, s.bf16);
    product(*w.qkv, h, qkv);
    float* q = qkv;
    float* k = qkv + nq;
    const float* v = qkv + nq + nkv;
    const auto rope = s.bf16 ? rope_heads_bf16 : rope_heads;
    rope(q, s.heads, D, cos, sin);
    rope(k, s.kv_heads, D, cos, sin);
    const int64_t values = s.kv_heads * capacity * D;  // kv: [2, kv_heads, capacity, D], keys then values
    for (int64_t g = 0; g < s.kv_heads; ++g) {
        write_rows(k + g * D, kv, (g * capacity + slot) * D, D, s.bf16);
        write_rows(v + g * D, kv, values + (g * capacity + slot) * D, D, s.bf16);
    }

    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const int64_t group = s.heads / s.kv_heads;
    pool_for(s.heads, 1, [&](int64_t h0, int64_t h1) {
        for (int64_t hd = h0; hd < h1; ++hd) {
            const int64_t at = hd / group * capacity * D;  // this head's KV head's rows
            if (s.bf16) {
                const auto* cached = static_cast<const uint16_t*>(kv);
                attend_head_bf16(q + hd * D, cached + at, cached + values + at, scores + hd * keys, attn + hd * D, keys,
                                 D, scale);
            } else {
                const auto* cached = static_cast<const float*>(kv);
                attend_head(q + hd * D, cached + at, cached + values + at, scores + hd * keys, attn + hd * D, keys, D,
                            scale);
            }
        }
    });
    product(*w.o, attn, proj);
    residual();

    decode_norm(x, w.post_norm, h, H, s.eps, s.bf16);
    product(*w.gate_up, h, gu);
    (s.bf16 ? silu_mul_bf16 : silu_mul)(gu, gu + I, gu, I);
    product(*w.down, gu, proj);
    residual();
}

}  // namespace prospect
