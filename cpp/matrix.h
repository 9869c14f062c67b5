// A linear layer's weight [rows, cols], dense or in quantized blocks. The decoder's products take it
// (matvec.h), so one layer may be Q4_1 and the next dense.
#pragma once

#include "quant_kernels.h"

#include <ATen/core/Tensor.h>

#include <optional>

namespace prospect {

struct Matrix {
    at::Tensor data;                 // dense: [rows, cols] floating; quantized: uint8 [rows, cols / 32 * block bytes]
    std::optional<QuantType> quant;  // unset: dense
    int64_t cols = 0;

    Matrix() = default;
    explicit Matrix(at::Tensor dense) : data(std::move(dense)), cols(data.defined() ? data.size(-1) : 0) {}
    Matrix(at::Tensor blocks, QuantType q, int64_t columns) : data(std::move(blocks)), quant(q), cols(columns) {}

    int64_t rows() const { return data.size(0); }
    int64_t row_bytes() const { return data.size(1) * data.element_size(); }
    int64_t nbytes() const { return data.numel() * data.element_size(); }
};

}  // namespace prospect
