// Decode-time linear layers: one token, so each weight is read once and used once. The
// matrix-vector product is memory-bound; this kernel streams each weight row exactly once
// with wide independent accumulators, which BLAS's gemm/gemv paths do not reach at batch 1.
#pragma once

#include <cstdint>

namespace at {
class Tensor;
}  // namespace at

namespace prospect {

// x [..., I] (one row in total), w [O, I] fp32 on the CPU -> [..., O]. Anything else: at::linear.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w);

// y[rows] = w[rows, n] x[n], fp32, spread over ATen's threads.
void matvec(const float* w, const float* x, float* y, int64_t rows, int64_t n);

}  // namespace prospect
