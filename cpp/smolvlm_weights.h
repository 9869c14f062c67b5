// SmolVLM2's weights as the engine holds them: taken from the checkpoint by their Hugging Face
// names (no renaming table), each shape checked against config.json, q|k|v and gate|up fused at
// load so a layer reads fewer, larger matrices.
#pragma once

#include "int8_gemm.h"
#include "matrix.h"
#include "model_config.h"

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace prospect {

struct VisionLayer {
    at::Tensor ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;  // q|k|v fused
    // Quantized formats: the four products in int8 (int8_gemm.h), their dense weights released.
    Int8Gemm qkv_q, o_q, fc1_q, fc2_q;
};

struct TextLayer {
    at::Tensor input_norm, post_norm;
    Matrix qkv, o, gate_up, down;  // q|k|v and gate|up fused
};

// How the products' weights are held. The non-dense formats run fp32 activations on the CPU and differ in
// the decoder's matrices (and lm_head); the quantized ones also run the vision side's products in int8
// (int8_gemm.h), the patch embedding's and four a tower layer, and the connector in bf16 where the CPU
// multiplies bf16. Embeddings and norms stay dense.
enum class WeightFormat : uint8_t {
    Dense,  // as the checkpoint stores them, cast to the model's dtype
    Bf16,   // decoder stored in bf16, widened in the products: exact for a bf16 checkpoint, half the bytes
    Int8,   // decoder quantized at load into Q8_0 blocks (int8, one fp16 scale per 32 weights)
    Gguf,   // decoder from the checkpoint's model.gguf, blocks as stored (Q4_1, Q8_0, ...): no dequantizing
};

struct SmolVLMWeights {
    // Vision tower and connector; quantized formats: the patch embedding in int8 (a product over each
    // patch's pixels), its dense weights released.
    at::Tensor patch_w, patch_b, pos_emb, post_ln_w, post_ln_b, connector_w;
    Int8Gemm patch_q;
    std::vector<VisionLayer> vision_layers;
    // Decoder. lm_head is embed itself when the embeddings are tied and dense.
    at::Tensor embed, final_norm;
    Matrix lm_head;
    std::vector<TextLayer> text_layers;

    // Bytes of all weights, a tied lm_head counted once.
    int64_t nbytes() const;
};

// The checkpoint in `dir` (config.json already read into cfg) cast to dtype on device, its decoder in
// `format` (quantized formats: fp32 on the CPU only). Throws FormatError naming a missing or misshapen
// weight; ValueError if lm_head is absent and not tied, or the format does not suit dtype and device.
SmolVLMWeights load_smolvlm_weights(const std::string& dir, const ModelConfig& cfg, at::ScalarType dtype,
                                    at::Device device, WeightFormat format = WeightFormat::Dense);

// The name of a WeightFormat ("dense", "bf16", "int8", "gguf") and back; the latter throws ValueError naming them.
const char* weight_format_name(WeightFormat f);
WeightFormat weight_format_from_name(const std::string& name);

}  // namespace prospect
