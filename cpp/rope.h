// Rotary position re-rotation of cached keys.
//
// RoPE is additive, R(p + d) = R(d) R(p), so a key rotated at position p moves
// to position p + d by one more rotation by d. Values carry no position.
#pragma once

#include <ATen/core/Tensor.h>

namespace prospect {

// Inverse frequencies as the model computes them, in fp32: [head_dim / 2].
at::Tensor rope_inv_freq(int64_t head_dim, double theta);

// What rope_shift_ checks before it touches anything (throws ValueError/TypeError);
// surgery calls it on every layer before the first byte moves.
void check_rope_shift(const at::Tensor& keys, double theta);

// keys [..., T, D] rotated at positions p are re-rotated in place to p + delta.
// Angles are formed in double from the fp32 inverse frequencies and the
// rotation runs in fp32, then the result is cast back to the keys' dtype.
void rope_shift_(const at::Tensor& keys, int64_t delta, double theta);

// Per-token deltas: delta is int64 [T], one per token along dim -2.
void rope_shift_(const at::Tensor& keys, const at::Tensor& delta, double theta);

}  // namespace prospect
