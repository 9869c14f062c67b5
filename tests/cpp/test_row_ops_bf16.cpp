// The bf16 model's decode-step row ops against the ATen bf16 ops they stand in for (text_ops.h, which
// mirror transformers' Llama): same roundings, so the same bf16 values.
#include <gtest/gtest.h>

#include "row_ops.h"
#include "text_ops.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstring>
#include <vector>

using namespace prospect;

namespace {

// A bf16 tensor's values as floats.
std::vector<float> floats(const at::Tensor& t) {
    auto f = t.to(at::kFloat).contiguous();
    return {f.data_ptr<float>(), f.data_ptr<float>() + f.numel()};
}

// How many bf16 steps apart two bf16 values (as floats) are.
int64_t ulps(float a, float b) {
    uint32_t x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    const auto key = [](uint32_t u) { return static_cast<int64_t>(u & 0x80000000u ? -(u & 0x7FFFFFFF) : u) >> 16; };
    return std::llabs(key(x) - key(y));
}

at::Tensor randn_bf16(at::IntArrayRef sizes, uint64_t seed, double scale = 1.0) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
    return (at::randn(sizes, g, at::kFloat) * scale).to(at::kBFloat16);
}

}  // namespace

TEST(RowOpsBf16, RoundingMatchesTorchCastIncludingTies) {
    auto g = at::make_generator<at::CPUGeneratorImpl>(1);
    auto x = at::randn({1000}, g, at::kFloat) * 50;
    std::vector<float> v = floats(x);
    // Exact ties between two bf16 values (odd and even last bits), signed zeros, tiny and huge values.
    for (uint32_t bits : {0x3F808000u, 0x3F818000u, 0xBF808000u, 0xBF818000u, 0x80000000u, 0x00000001u, 0x7F7FFFFFu,
                          0x00800000u, 0x3F7FFFFFu}) {
        float f;
        std::memcpy(&f, &bits, 4);
        v.push_back(f);
    }
    auto want = floats(at::from_blob(v.data(), {static_cast<int64_t>(v.size())}, at::kFloat).to(at::kBFloat16));
    round_to_bf16(v.data(), static_cast<int64_t>(v.size()));  // 1009 floats: vector body and a scalar tail
    for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(std::memcmp(&v[i], &want[i], 4), 0) << i << ": " << v[i];
}

TEST(RowOpsBf16, RmsNormMatchesTransformersBf16Norm) {
    const int64_t n = 576;
    int64_t differ = 0;
    for (uint64_t seed = 0; seed < 20; ++seed) {
        auto x = randn_bf16({n}, seed, 3.0), w = randn_bf16({n}, 100 + seed, 0.2);
        auto want = floats(rms_norm(x, w, 1e-5));
        auto xf = floats(x);
        std::vector<float> got(n);
        rms_norm_row_bf16(xf.data(), static_cast<const uint16_t*>(w.data_ptr()), got.data(), n, 1e-5f);
        for (int64_t i = 0; i < n; ++i) {
            ASSERT_LE(ulps(got[i], want[i]), 1) << "seed " << seed << " at " << i;  // the mean summed in another order
            differ += got[i] != want[i];
        }
    }
    EXPECT_LT(differ, 20 * n / 100) << "more than 1% one bf16 step off";
}

TEST(RowOpsBf16, RopeMatchesTransformersBf16Rope) {
    const int64_t heads = 9, d = 64;
    auto inv_freq = at::pow(10000.0, -at::arange(0, d, 2, at::kFloat) / d);
    auto [cos, sin] = rope_tables(at::arange(1000, 1004, at::kFloat), inv_freq, at::kBFloat16);  // [4, d]
    for (int64_t p = 0; p < 4; ++p) {
        auto q = randn_bf16({heads, d}, p, 2.0);
        auto want = floats(apply_rope(q, cos[p], sin[p]));
        auto got = floats(q);
        auto c = floats(cos[p]), s = floats(sin[p]);
        rope_heads_bf16(got.data(), heads, d, c.data(), s.data());
        for (int64_t i = 0; i < heads * d; ++i) ASSERT_EQ(got[i], want[i]) << "position " << p << " at " << i;
    }
}

TEST(RowOpsBf16, SiluMulMatchesTorchBf16) {
    const int64_t n = 1536 + 5;  // vector body and a scalar tail
    auto gate = randn_bf16({n}, 7, 4.0), up = randn_bf16({n}, 8, 1.0);
    auto want = floats(at::silu(gate) * up);
    auto g = floats(gate), u = floats(up);
    std::vector<float> got(n);
    silu_mul_bf16(g.data(), u.data(), got.data(), n);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) {
        ASSERT_LE(ulps(got[i], want[i]), 1) << i;  // a short exp: a rounding may tip a step
        differ += got[i] != want[i];
    }
    EXPECT_LT(differ, n / 100);
}
