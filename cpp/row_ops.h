// The decoder's per-token loops over raw fp32 rows, shared by the decode step and the CPU prefill.
// Between its products a layer is otherwise ~20 small tensor ops: each a dispatcher round trip, and
// past 32K elements an OpenMP region, whose closing barrier waits for a thread that another busy
// process has taken the core from. A prefill's rows are small (84 tokens of 576), so plain loops on
// the calling thread cost less than the regions did.
#pragma once

#include <cstdint>

namespace prospect {

// out [n] = w * x / rms(x), as Llama's RMSNorm in fp32.
void rms_norm_row(const float* x, const float* w, float* out, int64_t n, float eps);

// Rotates each of `heads` heads of d floats by its two halves (Hugging Face's rotate_half
// convention), with cos/sin [d] for the token's position.
void rope_heads(float* v, int64_t heads, int64_t d, const float* cos, const float* sin);

// out [n] = silu(gate) * up, the Llama MLP's activation.
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

// x [n] += y.
void add_into(float* x, const float* y, int64_t n);

// A bf16 model's rows are bf16 values held in floats; these round where transformers' bf16 ops round.

// Each of x [n] rounded to the nearest bf16 (ties to even), in place.
void round_to_bf16(float* x, int64_t n);

// Each of x [n] rounded to the nearest bf16, stored as bf16 into out.
void store_bf16(const float* x, uint16_t* out, int64_t n);

// rms_norm_row as transformers' bf16 RMSNorm: normalised in fp32, rounded, times the bf16 weight w, rounded.
void rms_norm_row_bf16(const float* x, const uint16_t* w, float* out, int64_t n, float eps);

// rope_heads as x * cos + rotate_half(x) * sin in bf16: each product rounded, then their sum.
void rope_heads_bf16(float* v, int64_t heads, int64_t d, const float* cos, const float* sin);

// silu_mul in bf16: silu(gate) rounded, times up, rounded.
void silu_mul_bf16(const float* gate, const float* up, float* out, int64_t n);

}  // namespace prospect
