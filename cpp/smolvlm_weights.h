// SmolVLM2's weights as the engine holds them: taken from the checkpoint by their Hugging Face
// names (no renaming table), each shape checked against config.json, q|k|v and gate|up fused at
// load so a layer reads fewer, larger matrices.
#pragma once

#include "model_config.h"

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace prospect {

struct VisionLayer {
    at::Tensor ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;  // q|k|v fused
};

struct TextLayer {
    at::Tensor input_norm, qkv, o, post_norm, gate_up, down;  // q|k|v and gate|up fused
};

struct SmolVLMWeights {
    // Vision tower and connector.
    at::Tensor patch_w, patch_b, pos_emb, post_ln_w, post_ln_b, connector_w;
    std::vector<VisionLayer> vision_layers;
    // Decoder. lm_head is embed itself when the embeddings are tied.
    at::Tensor embed, final_norm, lm_head;
    std::vector<TextLayer> text_layers;

    // Bytes of all weights, a tied lm_head counted once.
    int64_t nbytes() const;
};

// The checkpoint in `dir` (config.json already read into cfg) cast to dtype on device. Throws
// FormatError naming a missing or misshapen weight; ValueError if lm_head is absent and not tied.
SmolVLMWeights load_smolvlm_weights(const std::string& dir, const ModelConfig& cfg, at::ScalarType dtype,
                                    at::Device device);

}  // namespace prospect
