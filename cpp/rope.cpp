#include "rope.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#ifdef PROSPECT_WITH_CUDA_KERNELS
#include "cuda/decode_kernels.h"

#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

namespace prospect {

void check_rope_shift(const at::Tensor& keys, double theta) {
    TORCH_CHECK_TYPE(keys.defined(), "rope_shift_: keys expected a tensor, got None");
    TORCH_CHECK_VALUE(keys.dim() >= 2, "rope_shift_: keys expected [..., T, head_dim], got shape ", keys.sizes());
    TORCH_CHECK_VALUE(keys.size(-1) % 2 == 0, "rope_shift_: keys expected an even head_dim, got ", keys.size(-1));
    const auto t = keys.scalar_type();
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble,
                     "rope_shift_: keys expected float32, float16, bfloat16 or float64, got ", t);
    // An expanded (stride-0) view shares elements between rows: rotating one row in place rotates them all.
    TORCH_CHECK_VALUE(at::has_internal_overlap(keys) != at::MemOverlap::Yes,
                      "rope_shift_: keys expected a tensor whose elements do not overlap, ",
                      "got an expanded view with strides ", keys.strides(), " (pass .contiguous() and use the result)");
    TORCH_CHECK_VALUE(std::isfinite(theta) && theta > 0, "rope_shift_: rope_theta expected > 0, got ", theta);
}

namespace {

// cos/sin tables [T, D/2] in fp32 for per-token deltas.
std::pair<std::vector<float>, std::vector<float>> tables(const std::vector<int64_t>& delta, int64_t D, double theta) {
    const auto inv = rope_inv_freq(D, theta);
    const float* f = inv.data_ptr<float>();
    const int64_t h = D / 2;
    std::vector<float> c(delta.size() * h), s(delta.size() * h);
    for (size_t t = 0; t < delta.size(); ++t) {
        for (int64_t i = 0; i < h; ++i) {
            const double a = static_cast<double>(delta[t]) * static_cast<double>(f[i]);
            c[t * h + i] = static_cast<float>(std::cos(a));
            s[t * h + i] = static_cast<float>(std::sin(a));
        }
    }
    return {std::move(c), std::move(s)};
}

// Fused CPU path: keys [B, H, T, D] with a contiguous last dim, no temporaries.
void shift_cpu_4d(const at::Tensor& k, const std::vector<int64_t>& delta, double theta) {
    const int64_t B = k.size(0), H = k.size(1), T = k.size(2), D = k.size(3), h = D / 2;
    const bool per_token = delta.size() > 1;
    auto [c, s] = tables(delta, D, theta);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), "rope_shift_", [&] {
        auto* base = k.data_ptr<scalar_t>();
        const int64_t sb = k.stride(0), sh = k.stride(1), st = k.stride(2);
        at::parallel_for(0, B * H * T, 256, [&](int64_t lo, int64_t hi) {
            for (int64_t r = lo; r < hi; ++r) {
                const int64_t t = r % T, bh = r / T;
                scalar_t* x = base + (bh / H) * sb + (bh % H) * sh + t * st;
                const float* cr = c.data() + (per_token ? t * h : 0);
                const float* sr = s.data() + (per_token ? t * h : 0);
                for (int64_t i = 0; i < h; ++i) {
                    const float x1 = static_cast<float>(x[i]), x2 = static_cast<float>(x[i + h]);
                    x[i] = static_cast<scalar_t>(x1 * cr[i] - x2 * sr[i]);
                    x[i + h] = static_cast<scalar_t>(x2 * cr[i] + x1 * sr[i]);
                }
            }
        });
    });
}

// The tables on the keys' device: [T or 1, D/2] each.
std::pair<at::Tensor, at::Tensor> device_tables(const at::Tensor& keys, const std::vector<int64_t>& delta,
                                                double theta) {
    const int64_t h = keys.size(-1) / 2, rows = static_cast<int64_t>(delta.size());
    auto [c, s] = tables(delta, keys.size(-1), theta);
    auto opts = at::TensorOptions().dtype(at::kFloat);
    // copy=true: on the CPU a plain to() would return views of the vectors about to be freed.
    return {at::from_blob(c.data(), {rows, h}, opts).to(keys.device(), at::kFloat, false, true),
            at::from_blob(s.data(), {rows, h}, opts).to(keys.device(), at::kFloat, false, true)};
}

// Any device or layout: tensor ops in fp32, cast back. Token chunks keep the fp32 temporaries under
// 1/256 of the keys' storage (surgery on a cache must stay in place).
void shift_generic(const at::Tensor& keys, const std::vector<int64_t>& delta, double theta) {
    const int64_t D = keys.size(-1), h = D / 2, T = keys.size(-2);
    auto [cos, sin] = device_tables(keys, delta, theta);
    const bool per_token = delta.size() > 1;
    const int64_t budget = std::max<int64_t>(static_cast<int64_t>(keys.storage().nbytes()) / 256, 64 << 10);
    const int64_t token_bytes = keys.numel() / std::max<int64_t>(T, 1) * 4 * 8;  // ~8 fp32 temporaries
    const int64_t chunk = std::clamp<int64_t>(budget / std::max<int64_t>(token_bytes, 1), 1, T);
    for (int64_t t0 = 0; t0 < T; t0 += chunk) {
        const int64_t n = std::min(chunk, T - t0);
        auto part = keys.narrow(-2, t0, n);
        auto c = per_token ? cos.narrow(0, t0, n) : cos, s = per_token ? sin.narrow(0, t0, n) : sin;
        auto k = part.to(at::kFloat);
        auto x1 = k.narrow(-1, 0, h), x2 = k.narrow(-1, h, h);
        part.copy_(at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1));
    }
}

#ifdef PROSPECT_WITH_CUDA_KERNELS
// CUDA, 4-d with a contiguous last dim: one fused kernel, nothing allocated but the tables.
bool shift_cuda_4d(const at::Tensor& k, const std::vector<int64_t>& delta, double theta) {
    namespace ck = cuda_kernels;
    const auto t = k.scalar_type();
    if (!k.is_cuda() || k.dim() != 4 || k.stride(3) != 1 || t == at::kDouble) return false;
    auto [cos, sin] = device_tables(k, delta, theta);
    const auto dt = t == at::kBFloat16 ? ck::Dtype::BF16 : t == at::kHalf ? ck::Dtype::F16 : ck::Dtype::F32;
    const auto st = ck::rope_shift(dt,
                                   {.keys = k.data_ptr(),
                                    .batch = k.size(0),
                                    .heads = k.size(1),
                                    .tokens = k.size(2),
                                    .head_dim = k.size(3),
                                    .stride_b = k.stride(0),
                                    .stride_h = k.stride(1),
                                    .stride_t = k.stride(2),
                                    .cos = cos.data_ptr<float>(),
                                    .sin = sin.data_ptr<float>(),
                                    .per_token = delta.size() > 1},
                                   c10::cuda::getCurrentCUDAStream(k.device().index()).stream());
    TORCH_CHECK(st == nullptr, "rope_shift_: CUDA kernel failed: ", st);
    return true;
}
#endif

void dispatch(const at::Tensor& keys, const std::vector<int64_t>& delta, double theta) {
    if (keys.numel() == 0) return;
    c10::InferenceMode guard;
    if (keys.is_cpu() && keys.dim() == 4 && keys.stride(3) == 1) {
        shift_cpu_4d(keys, delta, theta);
#ifdef PROSPECT_WITH_CUDA_KERNELS
    } else if (shift_cuda_4d(keys, delta, theta)) {
#endif
    } else {
        shift_generic(keys, delta, theta);
    }
}

}  // namespace

at::Tensor rope_inv_freq(int64_t head_dim, double theta) {
    // Same op order as transformers: 1 / theta ** (arange(0, D, 2).float() / D), in fp32.
    auto exponent = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(head_dim);
    return at::pow(at::Scalar(theta), exponent).reciprocal();
}

void rope_shift_(const at::Tensor& keys, int64_t delta, double theta) {
    check_rope_shift(keys, theta);
    if (delta == 0) return;
    dispatch(keys, {delta}, theta);
}

void rope_shift_(const at::Tensor& keys, const at::Tensor& delta, double theta) {
    check_rope_shift(keys, theta);
    TORCH_CHECK_VALUE(delta.dim() == 1 && delta.size(0) == keys.size(-2),
                      "rope_shift_: delta expected an int or an int64 tensor [T] with T = ", keys.size(-2),
                      " (keys' token dim), got shape ", delta.sizes());
    TORCH_CHECK_TYPE(!at::isFloatingType(delta.scalar_type()) && delta.scalar_type() != at::kBool,
                     "rope_shift_: delta expected an integer dtype, got ", delta.scalar_type());
    auto d = delta.to(at::kCPU, at::kLong).contiguous();
    std::vector<int64_t> v(d.data_ptr<int64_t>(), d.data_ptr<int64_t>() + d.numel());
    dispatch(keys, v, theta);
}

}  // namespace prospect
