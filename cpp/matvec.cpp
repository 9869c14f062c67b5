#include "matvec.h"

#include "simd.h"
#include "thread_pool.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

namespace prospect {

namespace {

// Two orders of reading a thread's rows, as CPUs differ (RowOrder in matvec.h):
// - Interleaved: R rows at once, R independent weight streams. On the Intel Xeon these kept the memory
//   system busier than one (one core: 1 row 9.6 GB/s, 4 rows 18 GB/s), and each stream asking for the line
//   512 bytes ahead took the 256m decoder's products, 2 threads, from 20.2 to 22.9 GB/s. Near its row's
//   end a stream asks for the start of its row in the next block of R, which would otherwise begin with
//   512 cold bytes a row: a row of 576 floats is 36 lines, and 8 of them were.
// - Sequential: one row after another, so a thread reads one stream from start to end. On the AMD EPYC
//   (Zen 4) the interleaved streams halved what 2 threads read (138240 x 576 fp32: 25 GB/s, against 47
//   sequentially and 45 for a sum over the same bytes).
template <int R>
PROSPECT_SIMD_INLINE const void* ahead(const void* a, int64_t i, int64_t n, int64_t bytes, int64_t elem) {
    const int64_t step = i * elem + bytes < n * elem ? bytes : bytes + (R - 1) * n * elem;
    return static_cast<const char*>(a) + step;  // past the matrix's end near the last rows: prefetches never fault
}

template <int R>
PROSPECT_SIMD_INLINE void rows_block(const float* w, const float* x, float* y, int64_t n) {
    Vec8f s[R][2] = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const Vec8f x0 = load8(x + i), x1 = load8(x + i + 8);
        for (int k = 0; k < R; ++k) {
            const float* a = w + k * n + i;
            __builtin_prefetch(ahead<R>(a, i, n, 512, sizeof(float)));
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

// Sequential: four sums of 8 a row, so the products are not waiting on one another.
PROSPECT_SIMD_INLINE void rows_dot_sequential_body(const float* w, const float* x, float* y, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, w += n) {
        Vec8f s[4] = {};
        int64_t i = 0;
        for (; i + 32 <= n; i += 32)
            for (int k = 0; k < 4; ++k) s[k] += load8(w + i + 8 * k) * load8(x + i + 8 * k);
        for (; i + 8 <= n; i += 8) s[0] += load8(w + i) * load8(x + i);
        float acc = sum8((s[0] + s[1]) + (s[2] + s[3]));
        for (; i < n; ++i) acc += w[i] * x[i];
        y[r] = acc;
    }
}

const auto rows_dot = simd_dispatch<rows_dot_body>();
const auto rows_dot_sequential = simd_dispatch<rows_dot_sequential_body>();

// bf16 rows: one 32-byte load holds 16 weights, as 8 words of (even, odd) pairs. A bf16 is the top half
// of its fp32, so `word << 16` is the even weights and `word & 0xFFFF0000` the odd ones: two ALU ops
// per 16 weights, against x split once per product into its even (xe) and odd (xo) elements.
PROSPECT_SIMD_INLINE void bf16_fma(const uint16_t* a, const float* xe, const float* xo, Vec8f& se, Vec8f& so) {
    Vec8i v;
    std::memcpy(&v, a, sizeof v);
    se += std::bit_cast<Vec8f>(v << 16) * load8(xe);
    so += std::bit_cast<Vec8f>(v & static_cast<int32_t>(0xFFFF0000u)) * load8(xo);
}

template <int R>
PROSPECT_SIMD_INLINE void rows_block_bf16(const uint16_t* w, const float* xe, const float* xo, const float* x, float* y,
                                          int64_t n) {
    Vec8f s[R][2] = {};
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        for (int k = 0; k < R; ++k) {
            const uint16_t* a = w + k * n + i;
            __builtin_prefetch(ahead<R>(a, i, n, 512, sizeof(uint16_t)));  // as the fp32 rows
            bf16_fma(a, xe + i / 2, xo + i / 2, s[k][0], s[k][1]);
        }
    }
    for (int k = 0; k < R; ++k) {
        float acc = sum8(s[k][0] + s[k][1]);
        for (int64_t j = i; j < n; ++j) acc += bf16_to_float(w[k * n + j]) * x[j];
        y[k] = acc;
    }
}

PROSPECT_SIMD_INLINE void rows_dot_bf16_body(const uint16_t* w, const float* xe, const float* xo, const float* x,
                                             float* y, int64_t rows, int64_t n) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) rows_block_bf16<4>(w + r * n, xe, xo, x, y + r, n);
    for (; r < rows; ++r) rows_block_bf16<1>(w + r * n, xe, xo, x, y + r, n);
}

PROSPECT_SIMD_INLINE void rows_dot_bf16_sequential_body(const uint16_t* w, const float* xe, const float* xo,
                                                        const float* x, float* y, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, w += n) {
        Vec8f s[4] = {};
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
            bf16_fma(w + i, xe + i / 2, xo + i / 2, s[0], s[1]);
            bf16_fma(w + i + 16, xe + i / 2 + 8, xo + i / 2 + 8, s[2], s[3]);
        }
        for (; i + 16 <= n; i += 16) bf16_fma(w + i, xe + i / 2, xo + i / 2, s[0], s[1]);
        float acc = sum8((s[0] + s[1]) + (s[2] + s[3]));
        for (; i < n; ++i) acc += bf16_to_float(w[i]) * x[i];
        y[r] = acc;
    }
}

const auto rows_dot_bf16 = simd_dispatch<rows_dot_bf16_body>();
const auto rows_dot_bf16_sequential = simd_dispatch<rows_dot_bf16_sequential_body>();

// Threads only pay off once a chunk holds enough bytes to amortise waking them.
int64_t row_grain(int64_t n) { return std::max<int64_t>(64, (1 << 16) / std::max<int64_t>(n, 1)); }

void matvec_bf16(const uint16_t* w, const float* x, float* y, int64_t rows, int64_t n, RowOrder order) {
    thread_local std::vector<float> split;  // decode calls this per matrix: keep the buffer
    split.resize(n + 16);
    float *xe = split.data(), *xo = split.data() + n / 2 + 8;
    for (int64_t j = 0; 2 * j + 1 < n; ++j) {
        xe[j] = x[2 * j];
        xo[j] = x[2 * j + 1];
    }
    const auto dot = order == RowOrder::Sequential ? rows_dot_bf16_sequential : rows_dot_bf16;
    pool_for(rows, row_grain(n), [&](int64_t r0, int64_t r1) { dot(w + r0 * n, xe, xo, x, y + r0, r1 - r0, n); });
}

// y [tokens, w.rows()] = x [tokens, w.cols] through w's quantized groups of rows.
void quant_matmul(const Matrix& w, const float* x, float* y, int64_t tokens) {
    const int64_t gb = quant_group_bytes(*w.quant, w.cols), rows = w.rows(), groups = w.data.size(0);
    thread_local QuantActs act;  // decode calls this per matrix: keep the buffers
    act.quantize(x, w.cols, tokens);
    const auto* base = w.data.data_ptr<uint8_t>();
    const QuantActs& a = act;
    const auto part = [&](int64_t g0, int64_t g1) {
        quant_dot_groups(*w.quant, base + g0 * gb, g1 - g0, a, y + g0 * kQuantRows, rows, rows - g0 * kQuantRows);
    };
    // A prefill: an even number of groups a chunk (VNNI's kernel takes them in pairs). A decode step:
    // chunks of at least 32 KiB, as waking a thread costs more than streaming less.
    pool_for(groups, tokens > 1 ? std::max<int64_t>(2, groups / 32 + 1) / 2 * 2 : std::max<int64_t>(1, (1 << 15) / gb),
             part);
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
    const bool bf16 = w.data.scalar_type() == at::kBFloat16;
    const bool one_row = x.is_cpu() && x.scalar_type() == at::kFloat && x.numel() == n && w.data.is_contiguous() &&
                         (bf16 || w.data.scalar_type() == at::kFloat);
    if (!one_row) {
        // bf16 weights with fp32 tokens (a prefill): widened per call, so the GEMM stays fp32's.
        return at::linear(x, bf16 && x.scalar_type() == at::kFloat ? w.data.to(at::kFloat) : w.data);
    }
    auto xc = x.contiguous();
    auto sizes = x.sizes().vec();
    sizes.back() = w.rows();
    auto y = at::empty(sizes, x.options());
    matvec(w, xc.data_ptr<float>(), y.data_ptr<float>());
    return y;
}

RowOrder dense_row_order() {
    static const RowOrder order = cpu_is_intel() ? RowOrder::Interleaved : RowOrder::Sequential;
    return order;
}

void matvec(const float* w, const float* x, float* y, int64_t rows, int64_t n, RowOrder order) {
    const auto dot = order == RowOrder::Sequential ? rows_dot_sequential : rows_dot;
    pool_for(rows, row_grain(n), [&](int64_t r0, int64_t r1) { dot(w + r0 * n, x, y + r0, r1 - r0, n); });
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

void matvec(const Matrix& w, const float* x, float* y, RowOrder order) {
    if (w.quant) {
        quant_matmul(w, x, y, 1);
    } else if (w.data.scalar_type() == at::kBFloat16) {
        matvec_bf16(reinterpret_cast<const uint16_t*>(w.data.const_data_ptr()), x, y, w.rows(), w.cols, order);
    } else {
        matvec(w.data.data_ptr<float>(), x, y, w.rows(), w.cols, order);
    }
}

}  // namespace prospect
