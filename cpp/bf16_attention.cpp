#include "bf16_attention.h"

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

typedef uint16_t Vec8h __attribute__((vector_size(16), aligned(2)));  // eight bf16
typedef uint32_t Vec8u __attribute__((vector_size(32), aligned(4)));

PROSPECT_SIMD_INLINE Vec8f widen8(const uint16_t* p) {
    Vec8h h;
    std::memcpy(&h, p, sizeof h);
    return std::bit_cast<Vec8f>(__builtin_convertvector(h, Vec8u) << 16);
}

PROSPECT_SIMD_INLINE void narrow8(uint16_t* p, Vec8f v) {  // round to nearest even
    const Vec8u b = std::bit_cast<Vec8u>(v);
    const Vec8h h = __builtin_convertvector((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16, Vec8h);
    std::memcpy(p, &h, sizeof h);
}

PROSPECT_SIMD_INLINE uint16_t narrow1(float v) {
    const uint32_t b = std::bit_cast<uint32_t>(v);
    return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

// Rows of n bf16 scores -> softmax(scale * scores), in place, worked in fp32: one pass for the maximum (each
// row widened into `buf`), one for the exponentials and their sum, one to scale and round. ATen's
// bf16 softmax takes about twice as long. Masked keys (-inf) get exactly 0.
PROSPECT_SIMD_INLINE void softmax_rows_body(uint16_t* x, int64_t rows, int64_t n, float scale, float* buf) {
    constexpr float kLow = -87.0f;  // exp8 clamps below this; such keys are masked or weigh < 1e-37
    constexpr float kInf = std::numeric_limits<float>::infinity();
    const int64_t n8 = n / 8 * 8;
    for (int64_t r = 0; r < rows; ++r, x += n) {
        Vec8f top = Vec8f{} - kInf;
        for (int64_t i = 0; i < n8; i += 8) {
            const Vec8f v = widen8(x + i) * scale;
            store8(buf + i, v);
            top = v > top ? v : top;
        }
        float m = -kInf;
        for (int j = 0; j < 8; ++j) m = std::max(m, top[j]);
        for (int64_t i = n8; i < n; ++i) m = std::max(m, buf[i] = bf16_to_float(x[i]) * scale);
        if (m == -kInf) m = 0;  // every key masked: all zeros
        Vec8f sum{};
        for (int64_t i = 0; i < n8; i += 8) {
            const Vec8f t = load8(buf + i) - m;
            const Vec8f e = t < kLow ? Vec8f{} : exp8(t);
            store8(buf + i, e);
            sum += e;
        }
        float total = sum8(sum);
        for (int64_t i = n8; i < n; ++i) total += buf[i] = buf[i] - m < kLow ? 0.0f : std::exp(buf[i] - m);
        const float inv = total > 0 ? 1.0f / total : 0.0f;
        for (int64_t i = 0; i < n8; i += 8) narrow8(x + i, load8(buf + i) * inv);
        for (int64_t i = n8; i < n; ++i) x[i] = narrow1(buf[i] * inv);
    }
}

const auto softmax_rows = simd_dispatch<softmax_rows_body>();

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
    auto out = at::empty({N * heads, S, hd}, bf16);
    // One parallel region for the whole attention, a (head, block of 256 queries) per task, claimed one
    // by one, each product single-threaded inside it: with another busy process on the cores, every
    // region's closing barrier waits for a descheduled thread, and a region per product made 12 a layer.
    constexpr int64_t kBlock = 256;
    const int64_t blocks = (S + kBlock - 1) / kBlock;
    const auto inf = std::numeric_limits<float>::infinity();
    aten_for(N * heads * blocks, 1, [&](int64_t t0, int64_t t1) {
        thread_local std::vector<float> buf;  // one row of weights, kept from frame to frame
        buf.resize(static_cast<size_t>(S));
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t h = t / blocks, s0 = t % blocks * kBlock, n = std::min(kBlock, S - s0);
            auto scores = at::mm(qb[h].narrow(0, s0, n), kt[h]);  // [n, S]
            if (padding.defined()) scores.masked_fill_(padding[h / heads].unsqueeze(0), -inf);
            softmax_rows(reinterpret_cast<uint16_t*>(scores.data_ptr<at::BFloat16>()), n, S, static_cast<float>(scale),
                         buf.data());
            auto o = out[h].narrow(0, s0, n);
            at::mm_out(o, scores, vb[h]);
        }
    });
    // [N, heads, S, hd] bf16 -> [N, S, heads, hd] fp32 in one pass.
    auto result = at::empty({N, S, heads, hd}, q.options());
    result.copy_(out.view({N, heads, S, hd}).transpose(1, 2));
    return result;
}

}  // namespace prospect
