// Greedy (or sampled) decoding over the KVCache, the whole loop in C++.
#pragma once

#include "kv_cache.h"

#include <functional>
#include <optional>
#include <utility>
#include <vector>

namespace prospect {

class SmolVLM;

struct GenerateOptions {
    int64_t max_new_tokens = 100;
    std::vector<int64_t> stop_token_ids;
    bool keep_generated_in_cache = true;
    // ProAssist's talk rule: at the first step, if P(token) > threshold, say nothing.
    std::optional<std::pair<int64_t, double>> silence;
    SpanKind span_kind = SpanKind::USER;
    std::optional<int64_t> frame_index;
    double temperature = 0.0;  // 0: greedy
    double top_p = 1.0;
    std::optional<uint64_t> seed;
    // Greedy batch-1 decode on CUDA replays a captured CUDA graph per token (cuda_graph_decode.h).
    bool cuda_graph = true;
    // Called after each new token; returning false stops. Empty: never leaves C++.
    std::function<bool(int64_t)> on_token;
};

struct GenerateResult {
    std::vector<int64_t> tokens;  // new tokens, stop token excluded
    std::optional<double> silence_prob;
    double prefill_ms = 0;
    double decode_ms = 0;
    int64_t graph_steps = 0;  // decode steps run as CUDA-graph replays
};

// Prefills embeds [1, T, H] as one span of options.span_kind, then decodes one
// token per step. Every emitted token is fed back (one assistant span); the
// stop token is not. With keep_generated_in_cache=false the cache ends as it
// was after the input.
GenerateResult greedy_generate(const SmolVLM& model, const at::Tensor& embeds, KVCache& cache,
                               const GenerateOptions& options);

}  // namespace prospect
