// The vision MLP's activation: GELU in its tanh form, fused with the fc1 bias. ATen spends a pass
// copying the bias and then evaluates tanh through Sleef, which costs more than the memory traffic;
// here it is one pass with a short exp. 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), so the function is
// the same one transformers computes, rounded differently (a few float ulps).
#pragma once

#include <cstdint>

namespace prospect {

// x [rows, cols] (row-major) <- gelu_tanh(x + bias[cols]), fp32, spread over ATen's threads.
void bias_gelu_tanh(float* x, const float* bias, int64_t rows, int64_t cols);

// The same on the calling thread, for a block of rows inside a parallel region.
void bias_gelu_tanh_rows(float* x, const float* bias, int64_t rows, int64_t cols);

}  // namespace prospect
