#include "generate.h"

#include "cuda_graph_decode.h"
#include "smolvlm.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>

namespace prospect {

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

int64_t pick(const at::Tensor& logits, const GenerateOptions& o, at::Generator& gen) {
    if (o.temperature <= 0) {
        // A plain loop on the CPU: ATen's argmax over a vocabulary is a parallel region each token.
        if (logits.is_cpu() && logits.scalar_type() == at::kFloat && logits.is_contiguous()) {
            const float* p = logits.const_data_ptr<float>();
            return std::max_element(p, p + logits.numel()) - p;
        }
        return logits.argmax(-1).item<int64_t>();
    }
    // In float64 and from the max: a tiny temperature (even subnormal) then tends to greedy, never to NaN.
    auto l = logits.to(at::kCPU, at::kDouble).view({-1});
    auto probs = at::softmax((l - l.max()) / o.temperature, -1);
    if (o.top_p < 1.0) {
        auto [sorted, idx] = probs.sort(-1, true);
        auto cum = sorted.cumsum(-1);
        sorted.masked_fill_((cum - sorted).gt(o.top_p), 0);  // keep the smallest prefix reaching top_p
        probs = at::zeros_like(probs).scatter_(-1, idx, sorted);
    }
    return at::multinomial(probs, 1, false, gen).item<int64_t>();
}

}  // namespace

GenerateResult greedy_generate(const SmolVLM& model, const at::Tensor& embeds, KVCache& cache,
                               const GenerateOptions& o) {
    TORCH_CHECK_VALUE(embeds.dim() == 3 && embeds.size(0) == 1,
                      "greedy_generate: embeds expected [1, T, H], got shape ", embeds.sizes());
    TORCH_CHECK_VALUE(o.max_new_tokens >= 0, "greedy_generate: max_new_tokens expected >= 0, got ", o.max_new_tokens);
    TORCH_CHECK_VALUE(o.temperature >= 0, "greedy_generate: temperature expected >= 0, got ", o.temperature);
    TORCH_CHECK_VALUE(o.top_p > 0 && o.top_p <= 1, "greedy_generate: top_p expected in (0, 1], got ", o.top_p);
    const int64_t V = model.config().text.vocab_size;
    for (auto s : o.stop_token_ids)
        TORCH_CHECK_VALUE(s >= 0 && s < V, "greedy_generate: stop_token_ids expected ids in [0, ", V, "), got ", s);
    if (o.silence) {
        TORCH_CHECK_VALUE(o.silence->first >= 0 && o.silence->first < V,
                          "greedy_generate: silence token expected in [0, ", V, "), got ", o.silence->first);
        TORCH_CHECK_VALUE(o.silence->second >= 0 && o.silence->second <= 1,
                          "greedy_generate: silence threshold expected in [0, 1], got ", o.silence->second);
    }
    auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed.value_or(at::default_rng_seed_val));
    KVCache::UseGuard guard(cache);  // prefill, decode steps and rollback, as one use

    GenerateResult r;
    auto t0 = std::chrono::steady_clock::now();
    auto logits = model.prefill(embeds, cache, o.span_kind, o.frame_index);  // [1, V]
    const int64_t input_end = cache.length();
    if (o.silence) {
        const double p = at::softmax(logits.to(at::kFloat), -1)[0][o.silence->first].item<double>();
        r.silence_prob = p;
        if (p > o.silence->second) {
            r.prefill_ms = ms_since(t0);
            return r;
        }
    }
    const auto stops = o.stop_token_ids;
    int64_t tok = o.max_new_tokens > 0 ? pick(logits, o, gen) : -1;
    r.prefill_ms = ms_since(t0);

    t0 = std::chrono::steady_clock::now();
    if (cuda_graph_decode_applies(model, cache, o)) {
        cuda_graph_decode(model, cache, tok, o, r);
        r.decode_ms = ms_since(t0);
        if (!o.keep_generated_in_cache) cache.truncate(input_end);
        return r;
    }
    for (int64_t step = 0; step < o.max_new_tokens; ++step) {
        if (std::find(stops.begin(), stops.end(), tok) != stops.end()) break;
        r.tokens.push_back(tok);
        const bool go_on = !o.on_token || o.on_token(tok);
        // The reply fills the cache, or the model's positions: keep what fits.
        if (cache.length() >= cache.capacity() || cache.next_position() >= model.config().text.max_position_embeddings)
            break;
        logits = model.forward(model.embed_sampled(tok), cache, SpanKind::ASSISTANT, o.frame_index, step > 0);
        if (!go_on || step + 1 == o.max_new_tokens) break;
        tok = pick(logits, o, gen);
    }
    r.decode_ms = ms_since(t0);
    if (!o.keep_generated_in_cache) cache.truncate(input_end);
    return r;
}

}  // namespace prospect
