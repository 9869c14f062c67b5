// A prefill's attention on the CPU in plain loops on prospect's pool (thread_pool.h), fp32 or bf16. With
// another busy process on the cores, every OpenMP region of a prefill waits at its end for a thread
// that lost its core; this attention, like the quantized products and the row loops around it, runs
// no such region, so a prefill beside another process costs about its share of the CPU, not more.
// Not causal, on ATen's threads, it is also a bf16 vision tower's attention (every patch sees every patch).
#pragma once

#include <cstdint>

namespace prospect {

struct CausalAttention {
    int64_t tokens;  // T new tokens
    int64_t first;   // keys already cached before them: query t sees keys 0 .. first + t
    int64_t heads, kv_heads, head_dim;
    int64_t capacity;  // the cache's rows per KV head
    float scale;
    // Products in bf16 (queries, keys, weights and values rounded to it, sums in fp32), twice fp32's rate
    // on CPUs with AVX512_BF16: for models whose weights are quantized anyway, or in bf16. Elsewhere, or for
    // a head_dim other than 32 or 64, fp32.
    bool bf16 = false;
    bool causal = true;         // false: every query sees all first + tokens keys
    bool aten_threads = false;  // run on ATen's threads (aten_for), between ATen ops that have just woken them
};

// q [T] rows of heads x head_dim floats, q_stride floats apart; K, V [kv_heads, capacity, head_dim] (one
// batch row of the cache, the new tokens' keys and values already written); out [T, heads x head_dim].
void causal_attention(const CausalAttention& a, const float* q, int64_t q_stride, const float* K, const float* V,
                      float* out);

}  // namespace prospect
