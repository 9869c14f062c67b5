#include "smolvlm_weights.h"

#include "gguf.h"
#include "matvec.h"
#include "model_loader.h"
#include "simd.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/index_select.h>

#include <filesystem>

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
        l.qkv = Matrix(
            at::cat({w.take(n("self_attn.q_proj.weight"), {nq, H}), w.take(n("self_attn.k_proj.weight"), {nkv, H}),
                     w.take(n("self_attn.v_proj.weight"), {nkv, H})}));  // [nq + 2 nkv, H]
        l.o = Matrix(w.take(n("self_attn.o_proj.weight"), {H, nq}).contiguous());
        l.post_norm = w.take(n("post_attention_layernorm.weight"), {H});
        l.gate_up =
            Matrix(at::cat({w.take(n("mlp.gate_proj.weight"), {I, H}), w.take(n("mlp.up_proj.weight"), {I, H})}));
        l.down = Matrix(w.take(n("mlp.down_proj.weight"), {H, I}).contiguous());
        out.text_layers.push_back(std::move(l));
    }
    out.final_norm = w.take(tm + "norm.weight", {H});
    if (cfg.tie_word_embeddings || !w.contains("lm_head.weight")) {
        TORCH_CHECK_VALUE(cfg.tie_word_embeddings, dir, ": checkpoint has no lm_head.weight and config.json does ",
                          "not set tie_word_embeddings");
        out.lm_head = Matrix(out.embed);
    } else {
        out.lm_head = Matrix(w.take("lm_head.weight", {t.vocab_size, H}).contiguous());
    }
}

// Every decoder matrix and lm_head, for a pass that swaps them all.
std::vector<Matrix*> decoder_matrices(SmolVLMWeights& out) {
    std::vector<Matrix*> all;
    for (auto& l : out.text_layers)
        for (auto* m : {&l.qkv, &l.o, &l.gate_up, &l.down}) all.push_back(m);
    all.push_back(&out.lm_head);
    return all;
}

// One GGUF matrix [rows, cols]: its ggml blocks as stored, rows reordered by `order` if given.
struct GgufBlocks {
    at::Tensor blocks;  // uint8 [rows, cols / 32 * block bytes]
    QuantType type;
};

GgufBlocks gguf_blocks(const std::unordered_map<std::string, GgufTensor>& file, const std::string& path,
                       const std::string& name, int64_t rows, int64_t cols, const at::Tensor& order = {}) {
    const auto it = file.find(name);
    if (it == file.end()) throw FormatError(path + ": missing tensor '" + name + "'");
    const auto& t = it->second;
    if (t.dims != std::vector<int64_t>{cols, rows})
        throw FormatError(path + ": tensor '" + name + "' expected dims [" + std::to_string(cols) + ", " +
                          std::to_string(rows) + "] from config.json");
    QuantType q;
    if (t.type == GGML_TYPE_Q4_1) {
        q = QuantType::Q4_1;
    } else if (t.type == GGML_TYPE_Q8_0) {
        q = QuantType::Q8_0;
    } else {
        throw FormatError(path + ": tensor '" + name + "' expected ggml type Q4_1 or Q8_0, got type " +
                          std::to_string(t.type));
    }
    auto blocks = t.bytes.view({rows, -1});
    return {order.defined() ? blocks.index_select(0, order) : blocks, q};
}

// llama.cpp's converter interleaves each head's two rotary halves in q and k; rotate_half wants them
// as halves. Row order that undoes it, for `heads` heads of head_dim rows.
at::Tensor unpermute_order(int64_t heads, int64_t head_dim) {
    const int64_t half = head_dim / 2;
    auto i = at::arange(half, at::kLong).view({1, 1, half}), p = at::arange(2, at::kLong).view({1, 2, 1});
    auto h = at::arange(heads, at::kLong).view({heads, 1, 1});
    return (h * head_dim + i * 2 + p).reshape({-1});  // HF row (h, p, i) <- GGUF row (h, i, p)
}

// GGUF matrices stacked as rows (q|k|v, gate|up), one Matrix: all parts must share one type.
Matrix gguf_matrix(const std::vector<GgufBlocks>& parts, int64_t cols, const std::string& path,
                   const std::string& what) {
    std::vector<at::Tensor> blocks;
    for (const auto& p : parts) {
        if (p.type != parts[0].type)
            throw FormatError(path + ": " + what + " expected one ggml type for all its parts to be fused");
        blocks.push_back(p.blocks);
    }
    const auto all = blocks.size() == 1 ? blocks[0] : at::cat(blocks);
    return quant_matrix_from_ggml(all, parts[0].type, cols);
}

// The decoder's matrices from <dir>/model.gguf, as stored.
void take_gguf(const std::string& dir, const ModelConfig& cfg, SmolVLMWeights& out) {
    const auto path = (std::filesystem::path(dir) / "model.gguf").string();
    if (!std::filesystem::exists(path))
        throw FileNotFoundError("weights='gguf' expected " + path + " (the 256m-smollm2 preset writes it); not found");
    const auto file = load_gguf(path);
    const auto& t = cfg.text;
    const int64_t H = t.hidden_size, D = t.head_dim, I = t.intermediate_size;
    const int64_t nq = t.num_attention_heads * D, nkv = t.num_key_value_heads * D;
    const auto q_order = unpermute_order(t.num_attention_heads, D), k_order = unpermute_order(t.num_key_value_heads, D);
    for (int64_t i = 0; i < t.num_hidden_layers; ++i) {
        const std::string b = "blk." + std::to_string(i) + ".";
        const auto m = [&](const char* name, int64_t rows, int64_t cols, const at::Tensor& order = {}) {
            return gguf_blocks(file, path, b + name, rows, cols, order);
        };
        auto& l = out.text_layers[i];
        l.qkv = gguf_matrix(
            {m("attn_q.weight", nq, H, q_order), m("attn_k.weight", nkv, H, k_order), m("attn_v.weight", nkv, H)}, H,
            path, b + "attn_q|k|v");
        l.o = gguf_matrix({m("attn_output.weight", H, nq)}, nq, path, b + "attn_output");
        l.gate_up = gguf_matrix({m("ffn_gate.weight", I, H), m("ffn_up.weight", I, H)}, H, path, b + "ffn_gate|up");
        l.down = gguf_matrix({m("ffn_down.weight", H, I)}, I, path, b + "ffn_down");
    }
    // lm_head as the file stores it when its vocabulary is the checkpoint's. The 256m-smollm2 preset grew
    // SmolLM2's 49152 rows by SmolVLM2's tokens, so there the checkpoint's rows are quantized to Q8_0,
    // the file's type for them, which gives back the file's bytes for the rows they share.
    const auto head = file.count("output.weight") ? "output.weight" : "token_embd.weight";
    const auto it = file.find(head);
    if (it != file.end() && it->second.dims == std::vector<int64_t>{H, t.vocab_size}) {
        out.lm_head = gguf_matrix({gguf_blocks(file, path, head, t.vocab_size, H)}, H, path, head);
    } else {
        out.lm_head = quantize_q8_0(out.lm_head.data);
    }
}

// The vision products in int8, packed for one frame's patches; the dense weights go. The connector, whose
// int8 rounding would add half again to the features' error, goes to bf16 on CPUs that multiply it.
void pack_vision(SmolVLMWeights& out, const ModelConfig& cfg) {
    const int64_t patches = cfg.patches_per_side() * cfg.patches_per_side();
    out.patch_q = pack_int8_gemm(out.patch_w.flatten(1), out.patch_b, patches);  // [Dv, C * p * p]
    out.patch_w = out.patch_b = at::Tensor();
    if (cpu_has_bf16_dot()) out.connector_w = out.connector_w.to(at::kBFloat16);
    for (auto& l : out.vision_layers) {
        l.qkv_q = pack_int8_gemm(l.qkv_w, l.qkv_b, patches);
        l.o_q = pack_int8_gemm(l.o_w, l.o_b, patches);
        l.fc1_q = pack_int8_gemm(l.fc1_w, l.fc1_b, patches);
        l.fc2_q = pack_int8_gemm(l.fc2_w, l.fc2_b, patches);
        l.qkv_w = l.o_w = l.fc1_w = l.fc2_w = at::Tensor();
    }
}

void requantize(SmolVLMWeights& out, const std::string& dir, const ModelConfig& cfg, WeightFormat format) {
    if (format == WeightFormat::Bf16) {
        for (auto* m : decoder_matrices(out)) *m = Matrix(m->data.to(at::kBFloat16).contiguous());
        return;
    }
    pack_vision(out, cfg);
    if (format == WeightFormat::Gguf) {
        take_gguf(dir, cfg, out);
        return;
    }
    for (auto* m : decoder_matrices(out)) {
        TORCH_CHECK_VALUE(m->cols % kQuantBlock == 0, "weights='int8' expected decoder matrices whose columns are a ",
                          "multiple of ", kQuantBlock, ", got ", m->cols, " (", dir, ")");
        *m = quantize_q8_0(m->data);
    }
}

}  // namespace

int64_t SmolVLMWeights::nbytes() const {
    std::vector<const at::Tensor*> all = {&patch_w,   &patch_b,     &pos_emb, &post_ln_w,
                                          &post_ln_b, &connector_w, &embed,   &final_norm};
    if (!lm_head.data.is_same(embed)) all.push_back(&lm_head.data);
    int64_t bytes = 0;
    for (const auto& l : vision_layers) {
        for (const auto* x : {&l.ln1_w, &l.ln1_b, &l.qkv_w, &l.qkv_b, &l.o_w, &l.o_b, &l.ln2_w, &l.ln2_b, &l.fc1_w,
                              &l.fc1_b, &l.fc2_w, &l.fc2_b})
            if (x->defined()) all.push_back(x);
        for (const auto* g : {&l.qkv_q, &l.o_q, &l.fc1_q, &l.fc2_q})
            if (g->defined()) bytes += g->nbytes();
    }
    for (const auto& l : text_layers)
        for (const auto* x : {&l.input_norm, &l.qkv.data, &l.o.data, &l.post_norm, &l.gate_up.data, &l.down.data})
            all.push_back(x);
    if (patch_q.defined()) bytes += patch_q.nbytes() + patch_q.bias.numel() * 4;
    for (const auto* x : all)
        if (x->defined()) bytes += x->numel() * x->element_size();
    return bytes;
}

const char* weight_format_name(WeightFormat f) {
    switch (f) {
        case WeightFormat::Int8: return "int8";
        case WeightFormat::Gguf: return "gguf";
        case WeightFormat::Bf16: return "bf16";
        default: return "dense";
    }
}

WeightFormat weight_format_from_name(const std::string& name) {
    for (auto f : {WeightFormat::Dense, WeightFormat::Bf16, WeightFormat::Int8, WeightFormat::Gguf})
        if (name == weight_format_name(f)) return f;
    TORCH_CHECK_VALUE(false, "weights expected 'dense', 'bf16', 'int8' or 'gguf', got '", name, "'");
}

SmolVLMWeights load_smolvlm_weights(const std::string& dir, const ModelConfig& cfg, at::ScalarType dtype,
                                    at::Device device, WeightFormat format) {
    TORCH_CHECK_VALUE(format == WeightFormat::Dense || (dtype == at::kFloat && device.is_cpu()), "weights='",
                      weight_format_name(format), "' expected dtype float32 on cpu (its products run there), got ",
                      dtype, " on ", device);
    auto w = load_weights(dir, dtype, device);
    SmolVLMWeights out;
    take_vision(w, cfg, out);
    take_text(w, cfg, dir, out);
    if (format != WeightFormat::Dense) requantize(out, dir, cfg, format);
    return out;
}

}  // namespace prospect
