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

}  // namespace prospect
