#include "bf16_attention.h"

#include "simd.h"
#include "thread_pool.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace prospect {

namespace {

// W bf16 (as their bits) widened to the W floats they stand for, for V of W floats.
template <class V>
PROSPECT_SIMD_INLINE V widen(const uint16_t* p) {
    using U = decltype(V{} < V{});  // W ints
    typedef uint16_t H __attribute__((vector_size(sizeof(V) / 2), aligned(2)));
    H h;
    std::memcpy(&h, p, sizeof h);
    return std::bit_cast<V>(__builtin_convertvector(h, U) << 16);
}

// A float's bits (or a vector of them) rounded to nearest even at bf16's precision; the top half is the bf16.
template <class U>
PROSPECT_SIMD_INLINE U round_bits(U b) {
    return b + 0x7FFF + ((b >> 16) & 1);
}

// Rows of n bf16 scores -> exp(scale * (score - the row's maximum)), rounded to bf16 in place; inv[r] gets
// 1 / the sum of row r's rounded weights (0 for a row all masked), which the weighted sum is divided by
// afterwards, as flash attention does: two passes over a row, both in L1, and no fp32 copy of it.
// Masked keys (-inf) get exactly 0.
template <class V>
PROSPECT_SIMD_INLINE void exp_rows_body(uint16_t* x, int64_t rows, int64_t n, float scale, float* inv) {
    using U = decltype(V{} < V{});
    typedef uint16_t H __attribute__((vector_size(sizeof(V) / 2), aligned(2)));
    constexpr int64_t W = sizeof(V) / sizeof(float);
    constexpr float kLow = -87.0f;  // exp_approx clamps below this; such keys are masked or weigh < 1e-37
    constexpr float kInf = std::numeric_limits<float>::infinity();
    const int64_t nw = n / W * W;
    for (int64_t r = 0; r < rows; ++r, x += n) {
        V top = V{} - kInf;
        for (int64_t i = 0; i < nw; i += W) {
            const V v = widen<V>(x + i);
            top = v > top ? v : top;
        }
        float m = -kInf;
        for (int j = 0; j < W; ++j) m = std::max(m, top[j]);
        for (int64_t i = nw; i < n; ++i) m = std::max(m, bf16_to_float(x[i]));
        const float shift = m == -kInf ? 0.0f : m * scale;  // scale > 0: the maximum of the scaled scores
        V sum{};
        for (int64_t i = 0; i < nw; i += W) {
            const V t = widen<V>(x + i) * scale - shift;
            const U b = std::bit_cast<U>(t < kLow ? V{} : exp_approx(t));
            const U rounded = round_bits(b) & ~0xFFFF;
            sum += std::bit_cast<V>(rounded);
            const H h = __builtin_convertvector(rounded >> 16, H);
            std::memcpy(x + i, &h, sizeof h);
        }
        float total = lanes_sum(sum);
        for (int64_t i = nw; i < n; ++i) {
            const float t = bf16_to_float(x[i]) * scale - shift;
            const uint32_t b = round_bits(std::bit_cast<uint32_t>(t < kLow ? 0.0f : std::exp(t)));
            x[i] = static_cast<uint16_t>(b >> 16);
            total += bf16_to_float(x[i]);
        }
        inv[r] = total > 0 ? 1.0f / total : 0.0f;
    }
}

const auto exp_rows = simd_dispatch_wide<exp_rows_body<Vec16f>, exp_rows_body<Vec8f>>();

}  // namespace

bool cpu_has_bf16_dot() {
#if defined(__x86_64__)
    static const bool has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
    }();
    return has;
#else
    return false;
#endif
}

at::Tensor bf16_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& key_mask, double scale) {
    TORCH_CHECK_VALUE(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                      "bf16_attention expected q, k, v of one shape [N, heads, S, hd], got ", q.sizes(), ", ",
                      k.sizes(), ", ", v.sizes());
    const int64_t N = q.size(0), heads = q.size(1), S = q.size(2), hd = q.size(3);
    TORCH_CHECK_VALUE(
        !key_mask || (key_mask->scalar_type() == at::kBool && key_mask->sizes() == at::IntArrayRef{N, 1, 1, S}),
        "bf16_attention expected key_mask bool [", N, ", 1, 1, ", S, "] (true: a key to attend to), got ",
        key_mask ? key_mask->scalar_type() : at::kBool, " ", key_mask ? key_mask->sizes() : at::IntArrayRef{});
    const auto bf16 = q.options().dtype(at::kBFloat16);
    // Each a single pass: bf16 copies, contiguous per head; k transposed, so every block reads it as is.
    const auto qb = at::empty({N, heads, S, hd}, bf16).copy_(q).view({N * heads, S, hd});
    const auto kt = at::empty({N, heads, hd, S}, bf16).copy_(k.transpose(-1, -2)).view({N * heads, hd, S});
    const auto vb = at::empty({N, heads, S, hd}, bf16).copy_(v).view({N * heads, S, hd});
    const auto padding = key_mask ? key_mask->logical_not().view({N, S}) : at::Tensor();  // true: padded key
    // One parallel region for the whole attention, a (head, block of 256 queries) per task, claimed one
    // by one, each product single-threaded inside it: with another busy process on the cores, every
    // region's closing barrier waits for a descheduled thread, and a region per product made 12 a layer.
    constexpr int64_t kBlock = 256;
    const int64_t blocks = (S + kBlock - 1) / kBlock;
    const auto inf = std::numeric_limits<float>::infinity();
    auto result = at::empty({N, S, heads, hd}, q.options());
    float* res = result.data_ptr<float>();
    aten_for(N * heads * blocks, 1, [&](int64_t t0, int64_t t1) {
        float inv[kBlock];  // 1 / each query's sum of weights
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t h = t / blocks, s0 = t % blocks * kBlock, n = std::min(kBlock, S - s0);
            auto scores = at::mm(qb[h].narrow(0, s0, n), kt[h]);  // [n, S]
            if (padding.defined()) scores.masked_fill_(padding[h / heads].unsqueeze(0), -inf);
            exp_rows(reinterpret_cast<uint16_t*>(scores.data_ptr<at::BFloat16>()), n, S, static_cast<float>(scale),
                     inv);
            const auto o = at::mm(scores, vb[h]);  // [n, hd] bf16, each row still to be divided by its sum
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
