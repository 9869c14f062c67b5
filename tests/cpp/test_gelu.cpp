// The fused bias + tanh-GELU kernel against the formula in double precision.
#include <gtest/gtest.h>

#include "gelu.h"

#include <algorithm>
#include <cmath>
#include <vector>

using namespace prospect;

namespace {

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }

void check(int64_t rows, int64_t cols, double lo, double hi) {
    std::vector<float> x(rows * cols), b(cols);
    for (int64_t c = 0; c < cols; ++c) b[c] = 0.01f * static_cast<float>(c % 7) - 0.03f;
    for (int64_t i = 0; i < rows * cols; ++i) x[i] = static_cast<float>(lo + (hi - lo) * i / (rows * cols - 1));
    auto y = x;
    bias_gelu_tanh(y.data(), b.data(), rows, cols);
    double worst_rel = 0;  // where the result is not tiny: catches a sloppy exp that the absolute bound hides
    for (int64_t i = 0; i < rows * cols; ++i) {
        const double in = static_cast<double>(x[i] + b[i % cols]);  // the kernel adds in float, as here
        const double want = gelu_ref(in);
        ASSERT_NEAR(y[i], want, 1e-6 + 1e-6 * std::abs(want)) << "x=" << in << " at " << i;
        if (std::abs(want) > 1e-3) worst_rel = std::max(worst_rel, std::abs(y[i] - want) / std::abs(want));
    }
    EXPECT_LT(worst_rel, 2e-6);
}

}  // namespace

TEST(Gelu, MatchesTanhFormulaAcrossRange) {
    check(3, 3072, -12.0, 12.0);  // vector body
    check(64, 3072, -8.0, 8.0);   // rows split over threads (chunks of ~10 rows)
    check(5, 13, -6.0, 6.0);      // vector body + scalar tail
    check(2, 7, -3.0, 3.0);       // scalar tail only
}

TEST(Gelu, SaturatesAtLargeMagnitudes) {
    std::vector<float> x = {-1e4f, -100.f, -30.f, 30.f, 100.f, 1e4f, 0.f, -0.f, 1e-20f};
    const std::vector<float> zero(x.size(), 0.f);
    bias_gelu_tanh(x.data(), zero.data(), 1, static_cast<int64_t>(x.size()));
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(x[k], 0.0f, 1e-30f);
    EXPECT_FLOAT_EQ(x[3], 30.f);
    EXPECT_FLOAT_EQ(x[4], 100.f);
    EXPECT_FLOAT_EQ(x[5], 1e4f);
    EXPECT_EQ(x[6], 0.f);
    EXPECT_EQ(x[7], 0.f);
    EXPECT_NEAR(x[8], 0.5e-20f, 1e-26f);
}

TEST(Gelu, PropagatesNaN) {
    std::vector<float> x(16, 1.0f), b(16, 0.f);
    x[3] = x[12] = std::nanf("");
    bias_gelu_tanh(x.data(), b.data(), 1, 16);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(std::isnan(x[i]), i == 3 || i == 12) << i;
}
