// The decode step on the CPU, batch 1: one token through a decoder layer in plain loops over raw memory. Between its
// matrix products a step is ~30 small tensor ops per layer, each a dispatcher round trip; here they are a few loops.
// Same math as SmolVLM::forward (fp32 RMSNorm, RoPE from the given cos/sin, softmax attention over the cached keys),
// summed in another order. Two precisions:
// - fp32 activations, weights fp32 or quantized, an fp32 cache;
// - a bf16 model (bf16 weights, norms and cache): activations are bf16 values held in floats, rounded where
//   transformers' bf16 ops round (each product, RoPE term, sum and activation), products summed in fp32 as oneDNN's,
//   attention's weights rounded to bf16 before they weigh the values, as ATen's CPU flash attention does.
#pragma once

#include <cstdint>

namespace prospect {

struct Matrix;

struct DecodeShape {
    int64_t hidden, heads, kv_heads, head_dim, intermediate;
    float eps;
    bool bf16 = false;  // a bf16 model: norms and cache bf16, activations rounded as transformers' (above)
};

struct DecodeWeights {
    const void *input_norm, *post_norm;      // fp32, or bf16 when DecodeShape::bf16
    const Matrix *qkv, *o, *gate_up, *down;  // dense fp32, dense bf16 or quantized
};

// Floats of scratch decode_layer needs for a context of `keys` tokens.
int64_t decode_scratch_size(const DecodeShape& s, int64_t keys);

// x [hidden] is updated in place. kv: this layer's cache storage [2, kv_heads, capacity, head_dim]
// (keys then values; fp32, or bf16 when s.bf16); the token's key and value are written at `slot` and attention reads
// slots [0, slot]. cos/sin [head_dim] for the token's position (a bf16 model's tables, widened: bf16 values).
void decode_layer(float* x, const DecodeWeights& w, const DecodeShape& s, void* kv, int64_t capacity, int64_t slot,
                  const float* cos, const float* sin, float* scratch);

// out [n] = RMSNorm(x) with weight w: fp32 weights, or as transformers' bf16 RMSNorm (normalised in fp32, rounded,
// scaled, rounded) when bf16.
void decode_norm(const float* x, const void* w, float* out, int64_t n, float eps, bool bf16);

}  // namespace prospect
