// A linear layer's weight [rows, cols], dense or in quantized blocks. The decoder's products take it
// (matvec.h), so one layer may be Q4_1 and the next dense.
#pragma once

#include "quant_kernels.h"

#include <ATen/core/Tensor.h>

#include <optional>

namespace prospect {

struct Matrix {
    // dense: [rows, cols] floating (bf16 with fp32 activations: weights="bf16"); quantized: uint8 [ceil(rows / 8),
    // group bytes] (quant_kernels.h)
    at::Tensor data;
    std::optional<QuantType> quant;  // unset: dense
    int64_t cols = 0;

    Matrix() = default;
    explicit Matrix(at::Tensor dense)
        : data(std::move(dense)), cols(data.defined() ? data.size(-1) : 0), rows_(data.defined() ? data.size(0) : 0) {}
    Matrix(at::Tensor groups, QuantType q, int64_t rows, int64_t columns)
        : data(std::move(groups)), quant(q), cols(columns), rows_(rows) {}

    int64_t rows() const { return rows_; }

private:
    int64_t rows_ = 0;
};

}  // namespace prospect
