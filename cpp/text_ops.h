// The Llama decoder's small tensor ops, shared by the eager forward (smolvlm.cpp) and the CUDA
// graph decode step built from ATen ops (cuda_graph_decode.cpp).
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace prospect {

// Llama RMSNorm: normalise in fp32, cast back, then scale.
inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
    auto h = x.to(at::kFloat);
    h = h * at::rsqrt(h.pow(2).mean(-1, true) + eps);
    return w * h.to(x.scalar_type());
}

inline at::Tensor rotate_half(const at::Tensor& x) {
    const int64_t h = x.size(-1) / 2;
    return at::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// x * cos + rotate_half(x) * sin, as transformers applies RoPE.
inline at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    return x * cos + rotate_half(x) * sin;
}

// RoPE tables [T, head_dim] for fp32 positions [T]: computed in fp32, then cast, as transformers does.
inline std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions, const at::Tensor& inv_freq,
                                                     at::ScalarType dtype) {
    auto freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);  // [T, hd/2]
    auto emb = at::cat({freqs, freqs}, -1);
    return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

}  // namespace prospect
