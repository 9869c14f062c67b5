// Decode-time linear layers: one token, so each weight is read once and used once. The
// matrix-vector product is memory-bound; this kernel streams each weight row exactly once
// with wide independent accumulators, which BLAS's gemm/gemv paths do not reach at batch 1.
// Quantized matrices (quant_kernels.h) take any number of tokens: their rows are read once per call.
#pragma once

#include "matrix.h"

#include <cstdint>

namespace prospect {

// x [..., I] fp32 on the CPU, w [O, I] -> [..., O]. Dense (fp32, or bf16 widened as read): one row in fp32
// takes matvec, anything else at::linear. Quantized: x is quantized per token and every row of w read once.
at::Tensor linear(const at::Tensor& x, const Matrix& w);

// How a thread reads a dense matrix's rows: one after another (one sequential stream), or four rows'
// streams interleaved. Which reads faster depends on the CPU; dense_row_order() is this CPU's.
enum class RowOrder { Sequential, Interleaved };
RowOrder dense_row_order();
inline const char* row_order_name(RowOrder o) { return o == RowOrder::Sequential ? "sequential" : "interleaved"; }

// y[rows] = w[rows, n] x[n], fp32, spread over ATen's threads.
void matvec(const float* w, const float* x, float* y, int64_t rows, int64_t n, RowOrder order = dense_row_order());

// The same for a Matrix: dense fp32, dense bf16 (widened exactly; summed in another order) or quantized
// (which has its own order).
void matvec(const Matrix& w, const float* x, float* y, RowOrder order = dense_row_order());

// ggml's blocks of a [rows, cols] matrix, uint8 [rows, cols / 32 * block bytes] -> a Matrix (the rows'
// bytes reordered as quant_kernels.h lays them out; values unchanged). Throws ValueError for a bad shape.
Matrix quant_matrix_from_ggml(const at::Tensor& blocks, QuantType type, int64_t cols);

// fp32 [rows, cols] (cols a multiple of 32) -> Q8_0: as ggml's blocks, or as a Matrix.
at::Tensor quantize_q8_0_ggml(const at::Tensor& w);
Matrix quantize_q8_0(const at::Tensor& w);

// A quantized Matrix back to fp32 [rows, cols], for tests and references.
at::Tensor dequantize(const Matrix& w);

}  // namespace prospect
