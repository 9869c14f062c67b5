#include "quantized_attention.h"

#include "simd.h"
#include "thread_pool.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace prospect {

namespace {

// Rows of n floats (row r at x + r * stride), less `center` (n floats) where given -> int8 q (rows x n,
// contiguous) and s[r] = max |row| / 127, so that row ~ q * s. Rounded to nearest by adding and taking
// away 1.5 * 2^23.
template <class V>
PROSPECT_SIMD_INLINE void quantize_rows(const float* x, int64_t rows, int64_t stride, int64_t n, const float* center,
                                        int8_t* q, float* s) {
    constexpr float kRound = 12582912.0f;
    std::vector<float> row(n);
    for (int64_t r = 0; r < rows; ++r, x += stride, q += n) {
        for (int64_t i = 0; i < n; ++i) row[i] = center ? x[i] - center[i] : x[i];
        const float top = abs_max<V>(row.data(), n);
        s[r] = top > 0.0f ? top / 127.0f : 1.0f;
        const float inv = 1.0f / s[r];
        for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>((row[i] * inv + kRound) - kRound);
    }
}

// One head's rows (S of them, hd floats each, `stride` floats apart) made ready for the products:
// queries -> int8 q8 with scales qs; keys less their mean -> int8 k8 with scales ks; values -> bf16 vb
// (rounded to nearest even), each S x hd contiguous.
template <class V>
PROSPECT_SIMD_INLINE void prepare_head_body(const float* q, const float* k, const float* v, int64_t S, int64_t hd,
                                            int64_t stride, int8_t* q8, float* qs, int8_t* k8, float* ks,
                                            uint16_t* vb) {
    // Any one vector would leave the softmax as it is; the mean leaves the keys smallest.
    std::vector<float> center(hd, 0.0f);
    for (int64_t s = 0; s < S; ++s) {
        for (int64_t d = 0; d < hd; ++d) center[d] += k[s * stride + d];
    }
    for (int64_t d = 0; d < hd; ++d) center[d] /= static_cast<float>(S);
    quantize_rows<V>(q, S, stride, hd, nullptr, q8, qs);
    quantize_rows<V>(k, S, stride, hd, center.data(), k8, ks);
    for (int64_t s = 0; s < S; ++s, v += stride, vb += hd) {
        for (int64_t d = 0; d < hd; ++d) vb[d] = float_to_bf16(v[d]);
    }
}

// Rows of n int32 scores (each query's int8 products with every key) -> the softmax's numerators
// exp(t - max t) cut to bf16 into p, where t = x[j] * key_scale[j] * row_scale[r] (+ key_bias[j] if Masked:
// 0, or -inf for a padded key); inv[r] gets 1 / the sum of row r's cut weights, which the weighted sum is
// divided by afterwards, as flash attention does: cut rather than rounded, each weight is up to an ulp
// low, but the sum is of the same weights, so that bias divides out and what remains is noise of
// rounding's size. row_scale > 0. Padded keys get exactly 0; unmasked, weights below e^-87 are kept at that.
template <class V, bool Masked>
PROSPECT_SIMD_INLINE void exp_rows_body(const int32_t* x, int64_t rows, int64_t n, const float* row_scale,
                                        const float* key_scale, const float* key_bias, uint16_t* p, float* inv) {
    using U = decltype(V{} < V{});
    constexpr int64_t W = sizeof(V) / sizeof(float);
    constexpr float kLow = -87.0f;  // exp_approx clamps below this; such keys are padded or weigh < 1e-37
    constexpr float kInf = std::numeric_limits<float>::infinity();
    const int64_t nw = n / W * W;
    // The score before the row's scale: the maximum is the same key's either way (f > 0).
    const auto score = [&](int64_t i) {
        const V v = __builtin_convertvector(loadv<U>(x + i), V) * loadv<V>(key_scale + i);
        if constexpr (Masked) return v + loadv<V>(key_bias + i);
        return v;
    };
    const auto score_at = [&](int64_t i) {
        return static_cast<float>(x[i]) * key_scale[i] + (Masked ? key_bias[i] : 0.0f);
    };
    for (int64_t r = 0; r < rows; ++r, x += n, p += n) {
        const float f = row_scale[r];
        V top = V{} - kInf;
        for (int64_t i = 0; i < nw; i += W) {
            const V v = score(i);
            top = v > top ? v : top;
        }
        float m = lanes_max(top);
        for (int64_t i = nw; i < n; ++i) m = std::max(m, score_at(i));
        const float shift = m == -kInf ? 0.0f : m * f;
        V sum{};
        for (int64_t i = 0; i < nw; i += W) {
            const V t = score(i) * f - shift;
            U b;
            if constexpr (Masked) {
                b = std::bit_cast<U>(t < kLow ? V{} : exp_approx<4>(t));
            } else {
                b = std::bit_cast<U>(exp_approx<4>(t));
            }
            sum += std::bit_cast<V>(b & ~0xFFFF);
            store_high_halves(p + i, b);
        }
        float total = lanes_sum(sum);
        for (int64_t i = nw; i < n; ++i) {
            const float t = score_at(i) * f - shift;
            p[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(t < kLow ? 0.0f : std::exp(t)) >> 16);
            total += bf16_to_float(p[i]);
        }
        inv[r] = total > 0 ? 1.0f / total : 0.0f;
    }
}

const auto prepare_head = simd_dispatch_wide<prepare_head_body<Vec16f>, prepare_head_body<Vec8f>>();
const auto exp_rows = simd_dispatch_wide<exp_rows_body<Vec16f, false>, exp_rows_body<Vec8f, false>>();
const auto exp_rows_masked = simd_dispatch_wide<exp_rows_body<Vec16f, true>, exp_rows_body<Vec8f, true>>();

}  // namespace

at::Tensor quantized_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, double scale) {
    TORCH_CHECK_VALUE(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                      "quantized_attention expected q, k, v of one shape [N, heads, S, hd], got ", q.sizes(), ", ",
                      k.sizes(), ", ", v.sizes());
    TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                          q.is_cpu() && k.is_cpu() && v.is_cpu(),
                      "quantized_attention expected fp32 q, k, v on the CPU, got ", q.scalar_type(), ", ",
                      k.scalar_type(), ", ", v.scalar_type(), " on ", q.device());
    TORCH_CHECK_VALUE(scale > 0, "quantized_attention expected scale > 0, got ", scale);
    const int64_t N = q.size(0), heads = q.size(1), S = q.size(2), hd = q.size(3);
    TORCH_CHECK_VALUE(
        !key_mask || (key_mask->scalar_type() == at::kBool && key_mask->sizes() == at::IntArrayRef{N, 1, 1, S}),
        "quantized_attention expected key_mask bool [", N, ", 1, 1, ", S, "] (true: a key to attend to), got ",
        key_mask ? key_mask->scalar_type() : at::kBool, " ", key_mask ? key_mask->sizes() : at::IntArrayRef{});
    const int64_t NH = N * heads;
    const auto opts = q.options();
    // q, k, v as the qkv product's permuted views are: rows of hd contiguous, all three with one row stride.
    const bool views = q.stride(3) == 1 && k.strides() == q.strides() && v.strides() == q.strides();
    const auto qr = views ? q : q.contiguous(), kr = views ? k : k.contiguous(), vr = views ? v : v.contiguous();
    const auto q8 = at::empty({NH, S, hd}, opts.dtype(at::kChar)), k8 = at::empty({NH, S, hd}, opts.dtype(at::kChar));
    const auto qs = at::empty({NH, S}, opts), ks = at::empty({NH, S}, opts);
    const auto vb = at::empty({NH, S, hd}, opts.dtype(at::kBFloat16));
    at::Tensor bias;  // masked: 0, or -inf for a padded key
    if (key_mask) {
        bias = at::zeros({N, S}, opts)
                   .masked_fill_(key_mask->logical_not().view({N, S}), -std::numeric_limits<float>::infinity());
    }
    aten_for(NH, 1, [&](int64_t h0, int64_t h1) {
        for (int64_t h = h0; h < h1; ++h) {
            const int64_t offset = h / heads * qr.stride(0) + h % heads * qr.stride(1);
            prepare_head(qr.data_ptr<float>() + offset, kr.data_ptr<float>() + offset, vr.data_ptr<float>() + offset, S,
                         hd, qr.stride(2), q8.data_ptr<int8_t>() + h * S * hd, qs.data_ptr<float>() + h * S,
                         k8.data_ptr<int8_t>() + h * S * hd, ks.data_ptr<float>() + h * S,
                         reinterpret_cast<uint16_t*>(vb.data_ptr<at::BFloat16>()) + h * S * hd);
        }
    });
    // One parallel region for the products, a (head, block of 256 queries) per task, claimed one by one,
    // each product single-threaded inside it: with another busy process on the cores, every region's
    // closing barrier waits for a descheduled thread, and a region per product made 12 a layer.
    constexpr int64_t kBlock = 256;
    const int64_t blocks = (S + kBlock - 1) / kBlock;
    auto result = at::empty({N, S, heads, hd}, opts);
    float* res = result.data_ptr<float>();
    aten_for(NH * blocks, 1, [&](int64_t t0, int64_t t1) {
        const int64_t rows = std::min(kBlock, S);
        auto scores = at::empty({rows, S}, opts.dtype(at::kInt));
        auto weights = at::empty({rows, S}, opts.dtype(at::kBFloat16));
        float row_scale[kBlock], inv[kBlock];
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t h = t / blocks, s0 = t % blocks * kBlock, n = std::min(kBlock, S - s0);
            auto sc = scores.narrow(0, 0, n);
            at::_int_mm_out(sc, q8[h].narrow(0, s0, n), k8[h].t());
            const float* pqs = qs.data_ptr<float>() + h * S + s0;
            for (int64_t r = 0; r < n; ++r) row_scale[r] = pqs[r] * static_cast<float>(scale);
            auto w = weights.narrow(0, 0, n);
            (bias.defined() ? exp_rows_masked : exp_rows)(
                sc.data_ptr<int32_t>(), n, S, row_scale, ks.data_ptr<float>() + h * S,
                bias.defined() ? bias.data_ptr<float>() + h / heads * S : nullptr,
                reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>()), inv);
            const auto o = at::mm(w, vb[h]);  // [n, hd] bf16, each row still to be divided by its sum
            const auto* po = reinterpret_cast<const uint16_t*>(o.data_ptr<at::BFloat16>());
            // Into [N, S, heads, hd] fp32, the layout the out projection reads.
            float* dst = res + ((h / heads * S + s0) * heads + h % heads) * hd;
            for (int64_t r = 0; r < n; ++r, po += hd, dst += heads * hd) {
                for (int64_t j = 0; j < hd; ++j) dst[j] = bf16_to_float(po[j]) * inv[r];
            }
        }
    });
    return result;
}

}  // namespace prospect
