#include "decode_step.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "matvec.h"

namespace prospect {

void rms_norm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
    const float r = 1.0f / std::sqrt(static_cast<float>(ss / n) + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

namespace {

// Rotates each head's two halves (Hugging Face's rotate_half convention).
void rope(float* v, int64_t heads, int64_t d, const float* cos, const float* sin) {
    const int64_t h = d / 2;
    for (int64_t k = 0; k < heads; ++k, v += d) {
        for (int64_t i = 0; i < h; ++i) {
            const float a = v[i], b = v[i + h];
            v[i] = a * cos[i] - b * sin[i];
            v[i + h] = b * cos[i + h] + a * sin[i + h];
        }
    }
}

float dot(const float* a, const float* b, int64_t n) {
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

}  // namespace

int64_t decode_scratch_size(const decode_shape& s, int64_t keys) {
    const int64_t nq = s.heads * s.head_dim, nkv = s.kv_heads * s.head_dim;
    return s.hidden + (nq + 2 * nkv) + nq + s.hidden + 2 * s.intermediate + s.heads * keys;
}

void decode_layer(float* x, const decode_weights& w, const decode_shape& s, float* kv, int64_t capacity, int64_t slot,
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
    matvec(w.qkv, h, qkv, nq + 2 * nkv, H);
    float* q = qkv;
    float* k = qkv + nq;
    const float* v = qkv + nq + nkv;
    rope(q, s.heads, D, cos, sin);
    rope(k, s.kv_heads, D, cos, sin);
    float* K = kv;                             // [kv_heads, capacity, D]
    float* V = kv + s.kv_heads * capacity * D;  // the same for values
    for (int64_t g = 0; g < s.kv_heads; ++g) {
        std::copy(k + g * D, k + (g + 1) * D, K + (g * capacity + slot) * D);
        std::copy(v + g * D, v + (g + 1) * D, V + (g * capacity + slot) * D);
    }

    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const int64_t group = s.heads / s.kv_heads;
    at::parallel_for(0, s.heads, 1, [&](int64_t h0, int64_t h1) {
        for (int64_t hd = h0; hd < h1; ++hd) {
            const float* qh = q + hd * D;
            const float* Kg = K + (hd / group) * capacity * D;
            const float* Vg = V + (hd / group) * capacity * D;
            float* p = scores + hd * keys;
            float top = -INFINITY;
            for (int64_t j = 0; j < keys; ++j) {
                p[j] = dot(qh, Kg + j * D, D) * scale;
                top = std::max(top, p[j]);
            }
            float sum = 0;
            for (int64_t j = 0; j < keys; ++j) sum += (p[j] = std::exp(p[j] - top));
            float* out = attn + hd * D;
            std::fill(out, out + D, 0.0f);
            for (int64_t j = 0; j < keys; ++j) {
                const float pj = p[j] / sum;
                const float* vj = Vg + j * D;
                for (int64_t i = 0; i < D; ++i) out[i] += pj * vj[i];
            }
        }
    });
    matvec(w.o, attn, proj, H, nq);
    for (int64_t i = 0; i < H; ++i) x[i] += proj[i];

    rms_norm_row(x, w.post_norm, h, H, s.eps);
    matvec(w.gate_up, h, gu, 2 * I, H);
    for (int64_t i = 0; i < I; ++i) {
        const float g = gu[i];
        gu[i] = g / (1.0f + std::exp(-g)) * gu[I + i];
    }
    matvec(w.down, gu, proj, H, I);
    for (int64_t i = 0; i < H; ++i) x[i] += proj[i];
}

}  // namespace prospect
