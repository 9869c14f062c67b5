#include "int8_gemm.h"

#include "gelu.h"
#include "simd.h"
#include "thread_pool.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace prospect {

namespace {

// Looked up once: libtorch registers its operators when it loads.
const c10::OperatorHandle* prepack_op() {
    static const auto op = c10::Dispatcher::singleton().findSchema({"onednn::qlinear_prepack", ""});
    return op ? &*op : nullptr;
}

const c10::OperatorHandle* pointwise_op() {
    static const auto op = c10::Dispatcher::singleton().findSchema({"onednn::qlinear_pointwise", ""});
    return op ? &*op : nullptr;
}

// Row by row: s = max|x| / 127 and q = round(x / s) + 128, int8 stored as uint8 with zero point 128.
template <class V>
PROSPECT_SIMD_INLINE void quantize_rows_body(const float* x, uint8_t* q, float* s, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, x += n, q += n) {
        const float top = abs_max<V>(x, n);
        s[r] = top > 0.0f ? top / 127.0f : 1.0f;
        const float inv = 1.0f / s[r];
        for (int64_t i = 0; i < n; ++i) {  // v + 128.5 >= 0.5, so truncation rounds
            const float v = std::clamp(x[i] * inv + 128.5f, 0.0f, 255.0f);
            q[i] = static_cast<uint8_t>(static_cast<int32_t>(v));
        }
    }
}

// out = y * s[row] + b, or out += that.
PROSPECT_SIMD_INLINE void finish_rows_body(const float* y, const float* s, const float* b, float* out, int64_t rows,
                                           int64_t n, bool add) {
    for (int64_t r = 0; r < rows; ++r, y += n, out += n) {
        const float sr = s[r];
        if (add) {
            for (int64_t i = 0; i < n; ++i) out[i] += y[i] * sr + (b ? b[i] : 0.0f);
        } else {
            for (int64_t i = 0; i < n; ++i) out[i] = y[i] * sr + (b ? b[i] : 0.0f);
        }
    }
}

const auto quantize_rows = simd_dispatch_wide<quantize_rows_body<Vec16f>, quantize_rows_body<Vec8f>>();
const auto finish_rows = simd_dispatch_wide<finish_rows_body, finish_rows_body>();

enum class Finish { kStore, kAdd, kGelu };  // out = y, out += y, out = gelu_tanh(y), y = x w^T + bias

// Rows a block: at most 128 (8 blocks a 512 px frame: oneDNN runs 128 rows at the rate of 256 here, and
// a block's fp32 results stay nearer the core), at least 32, and two blocks a thread where there are rows
// enough, so a machine with more cores than a frame has blocks still uses them.
int64_t row_block(int64_t M) {
    const int64_t threads = std::max(1, at::get_num_threads());
    return std::clamp<int64_t>((M + 2 * threads - 1) / (2 * threads), 32, 128);
}

// x w^T + bias into `out` ([M, out] fp32, contiguous) as `finish` says. Blocks of rows are claimed
// by ATen's threads, each block quantized, multiplied (oneDNN, single-threaded inside the parallel
// region) and finished by the thread that claimed it: one parallel region a product, not three, and the
// block's rows stay in that core's cache between the steps.
void run(const at::Tensor& x_in, const Int8Gemm& g, float* out, Finish finish) {
    const auto x = x_in.contiguous();
    const int64_t M = x.size(0), K = g.in, N = g.out;
    const float* px = x.data_ptr<float>();
    const float* pb = g.bias.defined() ? g.bias.data_ptr<float>() : nullptr;
    aten_for(M, row_block(M), [&](int64_t r0, int64_t r1) {
        const int64_t rows = r1 - r0;
        auto q = at::empty({rows, K}, x.options().dtype(at::kByte));
        std::vector<float> s(rows);
        quantize_rows(px + r0 * K, q.data_ptr<uint8_t>(), s.data(), rows, K);
        // Scale 1 and zero point 128 for the whole block; each row's own scale is applied after.
        std::vector<c10::IValue> stack{q,
                                       1.0,
                                       int64_t{128},
                                       g.packed,
                                       g.scale,
                                       g.zero,
                                       c10::IValue(),
                                       1.0,
                                       int64_t{0},
                                       at::kFloat,
                                       std::string("none"),
                                       c10::List<std::optional<at::Scalar>>(),
                                       std::string("")};
        pointwise_op()->callBoxed(&stack);
        const auto y = stack.at(0).toTensor().contiguous();
        const float* py = y.data_ptr<float>();
        if (finish != Finish::kGelu) {
            finish_rows(py, s.data(), pb, out + r0 * N, rows, N, finish == Finish::kAdd);
            return;
        }
        for (int64_t r = 0; r < rows; ++r) {  // row by row: the GELU reads the row from L1
            float* o = out + (r0 + r) * N;
            finish_rows(py + r * N, &s[r], nullptr, o, 1, N, false);
            bias_gelu_tanh_rows(o, pb, 1, N);
        }
    });
}

void check_input(const at::Tensor& x, const Int8Gemm& g) {
    TORCH_CHECK_VALUE(g.defined(), "int8 products: the weight is not packed");
    TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == g.in && x.scalar_type() == at::kFloat && x.is_cpu(),
                      "int8 products expected fp32 [M, ", g.in, "] input on the CPU, got ", x.scalar_type(), " ",
                      x.sizes(), " on ", x.device());
}

}  // namespace

bool int8_gemm_available() { return prepack_op() && pointwise_op(); }

int int8_gemm_weight_max() {
#if defined(__x86_64__)
    static const bool vnni = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avxvnni");
    }();
    return vnni ? 127 : 63;
#else
    return 127;
#endif
}

Int8Gemm pack_int8_gemm(const at::Tensor& w, const at::Tensor& bias, int64_t rows) {
    TORCH_CHECK_VALUE(int8_gemm_available(), "int8 products need ATen's oneDNN operators (onednn::qlinear_*), ",
                      "which this libtorch lacks");
    TORCH_CHECK_VALUE(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_cpu(),
                      "int8 products expected an fp32 [out, in] weight on the CPU, got ", w.scalar_type(), " ",
                      w.sizes(), " on ", w.device());
    Int8Gemm g;
    g.out = w.size(0);
    g.in = w.size(1);
    const int top = int8_gemm_weight_max();
    g.scale = (w.abs().amax(1) / static_cast<double>(top)).clamp_min(1e-12).contiguous();
    auto q = at::round(w / g.scale.unsqueeze(1)).clamp_(-top, top).to(at::kChar).contiguous();
    g.zero = at::zeros({g.out}, at::TensorOptions().dtype(at::kLong));
    if (bias.defined()) g.bias = bias.to(at::kFloat).contiguous();
    std::vector<c10::IValue> stack{q, c10::IValue(std::vector<int64_t>{std::max<int64_t>(rows, 1), g.in})};
    prepack_op()->callBoxed(&stack);
    g.packed = stack.at(0).toTensor();
    return g;
}

at::Tensor int8_gemm(const at::Tensor& x, const Int8Gemm& g) {
    check_input(x, g);
    auto out = at::empty({x.size(0), g.out}, x.options());
    run(x, g, out.data_ptr<float>(), Finish::kStore);
    return out;
}

at::Tensor int8_gemm_gelu(const at::Tensor& x, const Int8Gemm& g) {
    check_input(x, g);
    TORCH_CHECK_VALUE(g.bias.defined(), "int8_gemm_gelu expected a weight packed with its bias");
    auto out = at::empty({x.size(0), g.out}, x.options());
    run(x, g, out.data_ptr<float>(), Finish::kGelu);
    return out;
}

void int8_gemm_add(const at::Tensor& x, const Int8Gemm& g, at::Tensor& into) {
    check_input(x, g);
    TORCH_CHECK_VALUE(into.dim() == 2 && into.size(0) == x.size(0) && into.size(1) == g.out &&
                          into.scalar_type() == at::kFloat && into.is_contiguous(),
                      "int8 products expected a contiguous fp32 [", x.size(0), ", ", g.out, "] output, got ",
                      into.scalar_type(), " ", into.sizes());
    run(x, g, into.data_ptr<float>(), Finish::kAdd);
}

}  // namespace prospect
