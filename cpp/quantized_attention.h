// The int8 vision tower's attention, for CPUs with bf16 dot products (AVX512_BF16, AMX; they all have
// VNNI too). ATen's fp32 flash attention is a third of a 512 px frame's time even after the products go
// int8. Here the scores come from int8 products (oneDNN's VNNI kernels run them at about twice the rate
// of bf16's): each query row and each key row gets its own scale, the keys centred first on their mean
// (which shifts each query's scores by one constant, so the softmax is unchanged, and leaves the keys
// smaller). The weights are rounded to bf16, the weighted sum is a bf16 product divided by the weights'
// sum at the end, a block of queries at a time to keep the scores in cache. With VNNI and bf16 both
// (Zen 4, Sapphire Rapids), heads up to 64 wide run in prospect's fused kernels: oneDNN's products ran
// these narrow shapes (64 deep, or 64 wide) no faster than bf16, and the passes between them cost as much
// again; fused, a 512 px layer's attention took 1.06-1.29x less time (benchmarks/results/README.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace prospect {

// Whether this CPU runs the fused products: AVX512_VNNI and AVX512_BF16.
bool quantized_attention_fused();

// softmax(q k^T * scale, masked) v for q, k, v fp32 [N, heads, S, hd]; key_mask bool [N, 1, 1, S], true for
// keys to attend to. Returns fp32 [N, S, heads, hd] (the layout the out projection reads).
// fused: the products in prospect's kernels, a task's scores, weights and sums in L1 (needs
// quantized_attention_fused(); heads wider than 64 take ATen's whatever is asked); else in ATen's. Both give the same
// scores and weights; the fused sum is not rounded to bf16 before its division. Throws ValueError for fused on a CPU
// without it.
at::Tensor quantized_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, double scale,
                               bool fused = quantized_attention_fused());

}  // namespace prospect
