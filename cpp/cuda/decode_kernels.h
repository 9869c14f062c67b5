// Fused kernels for one batch-1 decode step on CUDA, the elementwise work between the matrix
// products: RMSNorm with the residual add folded in, RoPE with the KV-cache write, attention over
// the cache, SiLU-gate. Position and cache length are read from device memory, so one captured
// CUDA graph serves every step. Plain pointers and no CUDA or torch headers: the caller is an
// ordinary C++ file and this header stays cheap to include.
#pragma once

#include <cstdint>

namespace prospect::cuda_kernels {

enum class Dtype : int8_t { F32, BF16, F16 };

// Each returns nullptr, or the CUDA error of the launch.
using Status = const char*;

// x += delta (when delta is not null), then out = w * rms_norm(x), rounding as transformers does
// in `dtype` (normalise in fp32, cast, scale). One vector of n.
Status add_rms_norm(Dtype dtype, void* x, const void* delta, const void* w, void* out, int n, float eps, void* stream);

struct RopeKvArgs {
    void* qkv = nullptr;              // [heads*hd | kv_heads*hd | kv_heads*hd]: q rotated in place
    void* keys = nullptr;             // this layer's keys [kv_heads, capacity, hd]
    void* values = nullptr;           // this layer's values, same shape
    const float* inv_freq = nullptr;  // [hd / 2]
    const int64_t* state = nullptr;   // device [token, length, position]: the slot written is length
    int heads, kv_heads, head_dim;
    int64_t capacity;
};
// Rotates q and k at `position` (cos and sin rounded to dtype first) and writes k and v to slot `length`.
Status rope_write_kv(Dtype dtype, const RopeKvArgs& a, void* stream);

struct AttentionArgs {
    const void* q = nullptr;     // [heads, hd], rotated
    const void* keys = nullptr;  // [kv_heads, capacity, hd]
    const void* values = nullptr;
    const int64_t* state = nullptr;  // attends to slots 0 .. length (inclusive: the token just written)
    void* out = nullptr;             // [heads, hd]
    float* partial = nullptr;        // scratch [heads, splits, hd + 2]
    int heads, kv_heads, head_dim;
    int64_t capacity;
    int chunk;  // keys per block; splits = ceil(capacity / chunk)
    float scale;
};
Status attention(Dtype dtype, const AttentionArgs& a, void* stream);
// Scratch floats attention() needs for this shape.
int64_t attention_scratch(int heads, int head_dim, int64_t capacity, int chunk);

// out[i] = silu(gate_up[i]) * gate_up[n + i], each product rounded to dtype as transformers does.
Status silu_mul(Dtype dtype, const void* gate_up, void* out, int n, void* stream);

// state[1] += 1, state[2] += 1 (length and position), and state[0] = argmax of logits [n]
// (the first maximum), so the next replay feeds the token just chosen.
Status argmax_advance(Dtype dtype, const void* logits, int64_t n, int64_t* state, void* stream);

// y [n] = w [n, k] x [k], fp32 sums rounded once to dtype: a warp per row, 16-byte loads, x staged in
// shared memory. Needs k a multiple of 16 / element size, 16-byte aligned w and x, and k <= 12288.
Status gemv(Dtype dtype, const void* w, const void* x, void* y, int n, int k, int blocks, void* stream);
bool gemv_fits(Dtype dtype, int k);

// Cache surgery's re-rotation, in place: keys [B, H, T, D] (any strides, last dim contiguous) rotated
// by the fp32 tables cos/sin [T or 1, D/2] (one row: every token moves by the same delta).
struct RopeShiftArgs {
    void* keys;
    int64_t batch, heads, tokens, head_dim;
    int64_t stride_b, stride_h, stride_t;  // in elements
    const float* cos;
    const float* sin;
    bool per_token;
};
Status rope_shift(Dtype dtype, const RopeShiftArgs& a, void* stream);

}  // namespace prospect::cuda_kernels
