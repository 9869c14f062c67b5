#include "smolvlm_weights.h"

#include "model_loader.h"

#include <ATen/ops/cat.h>

namespace prospect {

namespace {

std::string layer_name(const std::string& prefix, int64_t i, const char* rest) {
    return prefix + std::to_string(i) + "." + rest;
}

// model.vision_model.* and the connector; q|k|v fused per layer.
void take_vision(WeightMap& w, const ModelConfig& cfg, SmolVLMWeights& out) {
    const auto& v = cfg.vision;
    const int64_t Dv = v.hidden_size, p = v.patch_size, I = v.intermediate_size;
    const int64_t s2 = cfg.scale_factor * cfg.scale_factor, side = cfg.patches_per_side();
    const std::string vm = "model.vision_model.";
    out.patch_w = w.take(vm + "embeddings.patch_embedding.weight", {Dv, v.num_channels, p, p});
    out.patch_b = w.take(vm + "embeddings.patch_embedding.bias", {Dv});
    out.pos_emb = w.take(vm + "embeddings.position_embedding.weight", {side * side, Dv});
    for (int64_t i = 0; i < v.num_hidden_layers; ++i) {
        const auto n = [&](const char* rest) { return layer_name(vm + "encoder.layers.", i, rest); };
        VisionLayer l;
        l.ln1_w = w.take(n("layer_norm1.weight"), {Dv});
        l.ln1_b = w.take(n("layer_norm1.bias"), {Dv});
        l.qkv_w =
            at::cat({w.take(n("self_attn.q_proj.weight"), {Dv, Dv}), w.take(n("self_attn.k_proj.weight"), {Dv, Dv}),
                     w.take(n("self_attn.v_proj.weight"), {Dv, Dv})});  // [3 Dv, Dv]
        l.qkv_b = at::cat({w.take(n("self_attn.q_proj.bias"), {Dv}), w.take(n("self_attn.k_proj.bias"), {Dv}),
                           w.take(n("self_attn.v_proj.bias"), {Dv})});
        l.o_w = w.take(n("self_attn.out_proj.weight"), {Dv, Dv});
        l.o_b = w.take(n("self_attn.out_proj.bias"), {Dv});
        l.ln2_w = w.take(n("layer_norm2.weight"), {Dv});
        l.ln2_b = w.take(n("layer_norm2.bias"), {Dv});
        l.fc1_w = w.take(n("mlp.fc1.weight"), {I, Dv});
        l.fc1_b = w.take(n("mlp.fc1.bias"), {I});
        l.fc2_w = w.take(n("mlp.fc2.weight"), {Dv, I});
        l.fc2_b = w.take(n("mlp.fc2.bias"), {Dv});
        out.vision_layers.push_back(std::move(l));
    }
    out.post_ln_w = w.take(vm + "post_layernorm.weight", {Dv});
    out.post_ln_b = w.take(vm + "post_layernorm.bias", {Dv});
    out.connector_w = w.take("model.connector.modality_projection.proj.weight", {cfg.text.hidden_size, Dv * s2});
}

// model.text_model.* and lm_head; q|k|v and gate|up fused per layer, the decode step's matrices contiguous.
void take_text(WeightMap& w, const ModelConfig& cfg, const std::string& dir, SmolVLMWeights& out) {
    const auto& t = cfg.text;
    const int64_t H = t.hidden_size, nq = t.num_attention_heads * t.head_dim, nkv = t.num_key_value_heads * t.head_dim;
    const int64_t I = t.intermediate_size;
    const std::string tm = "model.text_model.";
    out.embed = w.take(tm + "embed_tokens.weight", {t.vocab_size, H});
    for (int64_t i = 0; i < t.num_hidden_layers; ++i) {
        const auto n = [&](const char* rest) { return layer_name(tm + "layers.", i, rest); };
        TextLayer l;
        l.input_norm = w.take(n("input_layernorm.weight"), {H});
        l.qkv = at::cat({w.take(n("self_attn.q_proj.weight"), {nq, H}), w.take(n("self_attn.k_proj.weight"), {nkv, H}),
                         w.take(n("self_attn.v_proj.weight"), {nkv, H})});  // [nq + 2 nkv, H]
        l.o = w.take(n("self_attn.o_proj.weight"), {H, nq}).contiguous();
        l.post_norm = w.take(n("post_attention_layernorm.weight"), {H});
        l.gate_up = at::cat({w.take(n("mlp.gate_proj.weight"), {I, H}), w.take(n("mlp.up_proj.weight"), {I, H})});
        l.down = w.take(n("mlp.down_proj.weight"), {H, I}).contiguous();
        out.text_layers.push_back(std::move(l));
    }
    out.final_norm = w.take(tm + "norm.weight", {H});
    if (cfg.tie_word_embeddings || !w.contains("lm_head.weight")) {
        TORCH_CHECK_VALUE(cfg.tie_word_embeddings, dir, ": checkpoint has no lm_head.weight and config.json does ",
                          "not set tie_word_embeddings");
        out.lm_head = out.embed;
    } else {
        out.lm_head = w.take("lm_head.weight", {t.vocab_size, H}).contiguous();
    }
}

}  // namespace

int64_t SmolVLMWeights::nbytes() const {
    std::vector<const at::Tensor*> all = {&patch_w,   &patch_b,     &pos_emb, &post_ln_w,
                                          &post_ln_b, &connector_w, &embed,   &final_norm};
    if (!lm_head.is_same(embed)) all.push_back(&lm_head);
    for (const auto& l : vision_layers)
        for (const auto* x : {&l.ln1_w, &l.ln1_b, &l.qkv_w, &l.qkv_b, &l.o_w, &l.o_b, &l.ln2_w, &l.ln2_b, &l.fc1_w,
                              &l.fc1_b, &l.fc2_w, &l.fc2_b})
            all.push_back(x);
    for (const auto& l : text_layers)
        for (const auto* x : {&l.input_norm, &l.qkv, &l.o, &l.post_norm, &l.gate_up, &l.down}) all.push_back(x);
    int64_t bytes = 0;
    for (const auto* x : all) bytes += x->numel() * x->element_size();
    return bytes;
}

SmolVLMWeights load_smolvlm_weights(const std::string& dir, const ModelConfig& cfg, at::ScalarType dtype,
                                    at::Device device) {
    auto w = load_weights(dir, dtype, device);
    SmolVLMWeights out;
    take_vision(w, cfg, out);
    take_text(w, cfg, dir, out);
    return out;
}

}  // namespace prospect
