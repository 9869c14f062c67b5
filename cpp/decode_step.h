// The decode step on the CPU, batch 1, fp32 activations (weights fp32 or quantized): one token through a decoder layer
// in plain loops over raw memory. Between its matrix products a step is ~30 small tensor ops per layer, each a
// dispatcher round trip; here they are a few loops. Same math as SmolVLM::forward (fp32 RMSNorm, RoPE from the given
// cos/sin, softmax attention over the cached keys), summed in another order.
#pragma once

#include <cstdint>

namespace prospect {

struct Matrix;

struct DecodeShape {
    int64_t hidden, heads, kv_heads, head_dim, intermediate;
    float eps;
};

struct DecodeWeights {
    const float *input_norm, *post_norm;
    const Matrix *qkv, *o, *gate_up, *down;  // dense fp32 or quantized
};

// Floats of scratch decode_layer needs for a context of `keys` tokens.
int64_t decode_scratch_size(const DecodeShape& s, int64_t keys);

// x [hidden] is updated in place. kv: this layer's cache storage [2, kv_heads, capacity, head_dim]
// (keys then values); the token's key and value are written at `slot` and attention reads
// slots [0, slot]. cos/sin [head_dim] for the token's position.
void decode_layer(float* x, const DecodeWeights& w, const DecodeShape& s, float* kv, int64_t capacity, int64_t slot,
                  const float* cos, const float* sin, float* scratch);

}  // namespace prospect
