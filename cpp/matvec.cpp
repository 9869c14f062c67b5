#include "matvec.h"

#include "simd.h"
#include "thread_pool.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>

#include <algorithm>
#include <vector>

namespace prospect {

namespace {

// R rows at once: R independent weight streams keep the memory system busier than one (a
// micro-benchmark here: 1 row 9.6 GB/s, 4 rows 18 GB/s on one core). Each stream also asks for the
// line 512 bytes ahead: the 256m decoder's products, 2 threads, 20.2 -> 22.9 GB/s on the Intel Xeon.
template <int R>
PROSPECT_SIMD_INLINE void rows_block(const float* w, const float* x, float* y, int64_t n) {
    Vec8f s[R][2] = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const Vec8f x0 = load8(x + i), x1 = load8(x + i + 8);
        for (int k = 0; k < R; ++k) {
            const float* a = w + k * n + i;
            __builtin_prefetch(a + 128);  // past the matrix's end near the last rows: prefetches never fault
            s[k][0] += load8(a) * x0;
            s[k][1] += load8(a + 8) * x1;
        }
    }
    for (int k = 0; k < R; ++k) {
        float acc = sum8(s[k][0] + s[k][1]);
        for (int64_t j = i; j < n; ++j) acc += w[k * n + j] * x[j];
        y[k] = acc;
    }
}

PROSPECT_SIMD_INLINE void rows_dot_body(const float* w, const float* x, float* y, int64_t rows, int64_t n) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) rows_block<4>(w + r * n, x, y + r, n);
    for (; r < rows; ++r) rows_block<1>(w + r * n, x, y + r, n);
}

const auto rows_dot = simd_dispatch<rows_dot_body>();

// y [tokens, w.rows()] = x [tokens, w.cols] through w's quantized groups of rows.
void quant_matmul(const Matrix& w, const float* x, float* y, int64_t tokens) {
    const int64_t gb = quant_group_bytes(*w.quant, w.cols), rows = w.rows(), groups = w.data.size(0);
    thread_local QuantActs act;  // decode calls this per matrix: keep the buffers
    act.quantize(x, w.cols, tokens);
    const auto* base = w.data.data_ptr<uint8_t>();
    const QuantActs& a = act;
    // Chunks of at least 32 KiB: waking a thread costs more than streaming less.
    pool_for(groups, std::max<int64_t>(1, (1 << 15) / gb), [&](int64_t g0, int64_t g1) {
        quant_dot_groups(*w.quant, base + g0 * gb, g1 - g0, a, y + g0 * kQuantRows, rows, rows - g0 * kQuantRows);
    });
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const Matrix& w) {
    const int64_t n = w.cols;
    if (w.quant) {
        TORCH_CHECK_VALUE(x.is_cpu() && x.scalar_type() == at::kFloat && x.size(-1) == n,
                          "linear: quantized weights expected fp32 CPU input [..., ", n, "], got ", x.scalar_type(),
                          " ", x.sizes(), " on ", x.device());
        auto xc = x.contiguous();
        auto sizes = x.sizes().vec();
        sizes.back() = w.rows();
        auto y = at::empty(sizes, x.options());
        quant_matmul(w, xc.data_ptr<float>(), y.data_ptr<float>(), x.numel() / std::max<int64_t>(n, 1));
        return y;
    }
    if (!(x.is_cpu() && x.scalar_type() == at::kFloat && w.data.scalar_type() == at::kFloat && x.numel() == n &&
          w.data.is_contiguous())) {
        return at::linear(x, w.data);
    }
    auto xc = x.contiguous();
    auto sizes = x.sizes().vec();
    sizes.back() = w.rows();
    auto y = at::empty(sizes, x.options());
    matvec(w.data.data_ptr<float>(), xc.data_ptr<float>(), y.data_ptr<float>(), w.rows(), n);
    return y;
}

void matvec(const float* w, const float* x, float* y, int64_t rows, int64_t n) {
    // Threads only pay off once a chunk holds enough bytes to amortise waking them.
    const int64_t grain = std::max<int64_t>(64, (1 << 16) / std::max<int64_t>(n, 1));
    pool_for(rows, grain, [&](int64_t r0, int64_t r1) { rows_dot(w + r0 * n, x, y + r0, r1 - r0, n); });
}

Matrix quant_matrix_from_ggml(const at::Tensor& blocks, QuantType type, int64_t cols) {
    const int64_t rows = blocks.size(0), rb = cols / kQuantBlock * quant_block_bytes(type);
    const int64_t groups = (rows + kQuantRows - 1) / kQuantRows, gb = quant_group_bytes(type, cols);
    TORCH_CHECK_VALUE(blocks.dim() == 2 && blocks.scalar_type() == at::kByte && blocks.is_cpu() && cols > 0 &&
                          cols % kQuantBlock == 0 && blocks.size(1) == rb,
                      "blocks expected uint8 [rows, ", rb, "] on the CPU for ", cols, " columns of ",
                      type == QuantType::Q8_0 ? "q8_0" : "q4_1", ", got ", blocks.scalar_type(), " ", blocks.sizes(),
                      " on ", blocks.device());
    const auto src = blocks.contiguous();
    auto out = at::empty({groups, gb}, src.options());
    for (int64_t g = 0; g < groups; ++g)
        quant_pack_group(type, src.data_ptr<uint8_t>() + g * kQuantRows * rb,
                         std::min<int64_t>(kQuantRows, rows - g * kQuantRows), cols, out.data_ptr<uint8_t>() + g * gb);
    return Matrix(out, type, rows, cols);
}

at::Tensor quantize_q8_0_ggml(const at::Tensor& w) {
    TORCH_CHECK_VALUE(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_cpu() && w.size(1) % kQuantBlock == 0,
                      "quantize: expected fp32 CPU [rows, cols] with cols a multiple of ", kQuantBlock, ", got ",
                      w.scalar_type(), " ", w.sizes(), " on ", w.device());
    const auto dense = w.contiguous();
    const int64_t rows = dense.size(0), cols = dense.size(1);
    const int64_t rb = cols / kQuantBlock * quant_block_bytes(QuantType::Q8_0);
    auto blocks = at::empty({rows, rb}, dense.options().dtype(at::kByte));
    const float* src = dense.data_ptr<float>();
    uint8_t* dst = blocks.data_ptr<uint8_t>();
    at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) quantize_row_q8_0(src + r * cols, cols, dst + r * rb);
    });
    return blocks;
}

Matrix quantize_q8_0(const at::Tensor& w) {
    return quant_matrix_from_ggml(quantize_q8_0_ggml(w), QuantType::Q8_0, w.size(1));
}

at::Tensor dequantize(const Matrix& w) {
    TORCH_CHECK_VALUE(w.quant.has_value(), "dequantize: expected a quantized matrix");
    const int64_t gb = quant_group_bytes(*w.quant, w.cols);
    auto out = at::empty({w.rows(), w.cols}, at::TensorOptions().dtype(at::kFloat));
    for (int64_t r = 0; r < w.rows(); ++r)
        dequantize_group_row(*w.quant, w.data.data_ptr<uint8_t>() + r / kQuantRows * gb, r % kQuantRows, w.cols,
                             out.data_ptr<float>() + r * w.cols);
    return out;
}

void matvec(const Matrix& w, const float* x, float* y) {
    if (w.quant) {
        quant_matmul(w, x, y, 1);
    } else {
        matvec(w.data.data_ptr<float>(), x, y, w.rows(), w.cols);
    }
}

}  // namespace prospect
