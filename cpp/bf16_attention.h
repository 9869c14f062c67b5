// The vision tower's attention in bf16, for CPUs with bf16 dot products (AVX512_BF16, AMX). ATen's
// fp32 flash attention is a third of a 512 px frame's time even after the products go int8, and its
// bf16 variant is no faster on the CPU; its bf16 batched products (oneDNN) run at two to three times
// fp32's rate. So: scores in bf16 by batched products, their exponentials rounded to bf16, the weighted
// sum in bf16 and divided by the weights' sum at the end, a block of queries at a time to keep the
// scores in cache. The scores are rounded to bf16, as in transformers' bf16 eager attention.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace prospect {

// Whether this CPU multiplies bf16 in hardware (AVX512_BF16 or AMX-BF16).
bool cpu_has_bf16_dot();

// softmax(q k^T * scale, masked) v for q, k, v fp32 [N, heads, S, hd]; key_mask bool [N, 1, 1, S], true for
// keys to attend to. Returns fp32 [N, S, heads, hd] (the layout the out projection reads).
at::Tensor bf16_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& key_mask, double scale);

}  // namespace prospect
