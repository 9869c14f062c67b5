// SmolVLM2's config.json, parsed without torch (so it can be fuzzed alone).
// Sizes are required; keys that transformers defaults may be absent.
#pragma once

#include "errors.h"

#include <cstdint>
#include <string>
#include <vector>

namespace prospect {

struct TextConfig {
    int64_t hidden_size, num_hidden_layers, num_attention_heads, vocab_size, intermediate_size;
    int64_t num_key_value_heads;  // default: num_attention_heads
    int64_t head_dim;             // default: hidden_size / num_attention_heads
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;  // rope_theta, or rope_parameters.rope_theta (transformers v5)
    int64_t max_position_embeddings = 2048;
    std::vector<int64_t> eos_token_ids;
};

struct VisionConfig {
    int64_t hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, image_size, patch_size;
    int64_t num_channels = 3;
    double layer_norm_eps = 1e-6;
};

struct ModelConfig {
    TextConfig text;
    VisionConfig vision;
    int64_t scale_factor = 2;
    int64_t image_token_id = 128257;
    bool tie_word_embeddings = false;

    int64_t patches_per_side() const { return vision.image_size / vision.patch_size; }
    // Tokens one image costs after pixel shuffle.
    int64_t image_seq_len() const { return patches_per_side() * patches_per_side() / (scale_factor * scale_factor); }
};

// Throws FormatError naming the key ("config.json: text_config.hidden_size ...").
ModelConfig parse_model_config(const std::string& json_text, const std::string& what = "config.json");

}  // namespace prospect
