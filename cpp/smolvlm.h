// SmolVLM2 in libtorch: SigLIP-style vision tower, pixel-shuffle connector and
// a Llama-style decoder that attends over a KVCache. Parameter names follow the
// Hugging Face checkpoint, so weights load without a renaming table.
#pragma once

#include "cuda_graph_decode.h"
#include "kv_cache.h"
#include "model_config.h"
#include "smolvlm_weights.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

namespace prospect {

class SmolVLM {
public:
    SmolVLM(const std::string& dir, at::ScalarType dtype, at::Device device, WeightFormat format = WeightFormat::Dense);

    const ModelConfig& config() const { return cfg_; }
    at::ScalarType dtype() const { return dtype_; }
    at::Device device() const { return device_; }
    WeightFormat weight_format() const { return format_; }
    const std::string& path() const { return dir_; }
    int64_t weight_bytes() const { return weight_bytes_; }
    const SmolVLMWeights& weights() const { return weights_; }
    const at::Tensor& inv_freq() const { return inv_freq_; }  // RoPE [head_dim / 2], fp32 on device
    // The CUDA graphs greedy decoding captured for this model's caches (cuda_graph_decode.cpp).
    CudaGraphs& cuda_graphs() const { return *graphs_; }

    // input_ids [B, T] -> [B, T, H].
    at::Tensor embed_tokens(const at::Tensor& input_ids) const;
    // One token this model just produced (so inside the vocabulary: no range check, no host sync) -> [1, 1, H].
    at::Tensor embed_sampled(int64_t token) const;
    // pixel_values [N, C, S, S] or [B, N, C, S, S], optional pixel_attention_mask
    // [N, S, S] / [B, N, S, S] -> vision features after the connector [N', L, H]
    // (all-zero padding images dropped).
    at::Tensor image_features(const at::Tensor& pixel_values,
                              const std::optional<at::Tensor>& pixel_attention_mask = std::nullopt) const;
    // Text embeddings with image features merged at the image tokens.
    at::Tensor joint_embed(const at::Tensor& input_ids, const std::optional<at::Tensor>& pixel_values = std::nullopt,
                           const std::optional<at::Tensor>& pixel_attention_mask = std::nullopt) const;

    KVCache make_cache(int64_t capacity, int64_t batch = 1) const;

    // Runs embeds [B, T, H] through the decoder at positions cache.next_position..,
    // appends their keys and values to the cache (one span, or extending the
    // last span) and returns logits [B, T, V] (all_logits) or [B, V] (last).
    at::Tensor forward(const at::Tensor& embeds, KVCache& cache, SpanKind kind, std::optional<int64_t> frame_index,
                       bool extend_last_span = false, bool all_logits = false) const;

    // forward() for a whole input: last-position logits [B, V].
    at::Tensor prefill(const at::Tensor& embeds, KVCache& cache, SpanKind kind,
                       std::optional<int64_t> frame_index = std::nullopt) const {
        return forward(embeds, cache, kind, frame_index);
    }

private:
    at::Tensor vision_tower(const at::Tensor& pixels, const at::Tensor& patch_mask) const;
    at::Tensor check_embeds(const at::Tensor& embeds, const KVCache& cache) const;
    // One decoder layer over x [B, T, H]: writes its keys and values to the cache, returns the new x.
    at::Tensor text_block(const at::Tensor& x, int64_t layer, KVCache& cache, const at::Tensor& cos,
                          const at::Tensor& sin, const std::optional<at::Tensor>& mask, bool causal) const;
    // The same on the CPU in fp32 (decode_loops_ in fp32, a contiguous cache), x [B, T, H] contiguous and updated in
    // place: the attention in plain loops on prospect's pool (causal_attention.h), the rest plain loops over
    // rows (row_ops.h) between the products.
    void text_block_rows(at::Tensor& x, int64_t layer, KVCache& cache, const at::Tensor& cos,
                         const at::Tensor& sin) const;

    // The batch-1 CPU decode step in plain loops (decode_step.h), fp32 or bf16, when the cache and weights allow.
    bool decode_step_applies(const KVCache& cache) const;
    at::Tensor decode_step(const at::Tensor& x, KVCache& cache, SpanKind kind, std::optional<int64_t> frame_index,
                           bool extend_last_span, const at::Tensor& cos, const at::Tensor& sin) const;

    std::string dir_;
    ModelConfig cfg_;
    at::ScalarType dtype_;
    at::Device device_;
    WeightFormat format_;
    SmolVLMWeights weights_;
    int64_t weight_bytes_ = 0;
    at::Tensor inv_freq_;        // [head_dim / 2] fp32 on device
    bool decode_loops_ = false;  // the weights suit raw loops (decode_step; text_block_rows in fp32)
    CudaGraphsPtr graphs_ = make_cuda_graphs();
};

}  // namespace prospect
