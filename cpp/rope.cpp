#include "rope.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

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

// Any device or layout: tensor ops in fp32, cast back.
void shift_generic(const at::Tensor& keys, const std::vector<int64_t>& delta, double theta) {
    const int64_t D = keys.size(-1), h = D / 2;
    auto [c, s] = tables(delta, D, theta);
    const int64_t rows = static_cast<int64_t>(delta.size());
    auto opts = at::TensorOptions().dtype(at::kFloat);
    auto cos = at::from_blob(c.data(), {rows, h}, opts).to(keys.device());  // [T or 1, D/2]
    auto sin = at::from_blob(s.data(), {rows, h}, opts).to(keys.device());
    auto k = keys.to(at::kFloat);
    auto x1 = k.narrow(-1, 0, h), x2 = k.narrow(-1, h, h);
    auto out = at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
    keys.copy_(out);
}

void dispatch(const at::Tensor& keys, const std::vector<int64_t>& delta, double theta) {
    if (keys.numel() == 0) return;
    c10::InferenceMode guard;
    if (keys.is_cpu() && keys.dim() == 4 && keys.stride(3) == 1) {
        shift_cpu_4d(keys, delta, theta);
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
