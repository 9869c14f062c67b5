// Loading a Hugging Face checkpoint folder: config.json and safetensors
// (single file or sharded with model.safetensors.index.json), memory-mapped.
#pragma once

#include "model_config.h"

#include <ATen/core/Tensor.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace prospect {

class WeightMap {
public:
    // Removes and returns a weight, checking its shape; throws FormatError naming it.
    at::Tensor take(const std::string& name, at::IntArrayRef shape);
    bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
    std::unordered_map<std::string, at::Tensor>& tensors() { return tensors_; }

private:
    std::unordered_map<std::string, at::Tensor> tensors_;
};

// Reads <dir>/config.json.
ModelConfig load_model_config(const std::string& dir);

// Memory-maps every safetensors file of the checkpoint and returns its tensors
// cast to dtype on device (tensors already in that dtype on the CPU stay views
// of the mapping: no copy). Pickle checkpoints are refused.
WeightMap load_weights(const std::string& dir, at::ScalarType dtype, at::Device device);

// One tensor of a GGUF file as stored: a uint8 view of the mapped file, its ggml type, dims fastest-first.
struct GgufTensor {
    uint32_t type;
    std::vector<int64_t> dims;
    at::Tensor bytes;
};

// Memory-maps a GGUF file and returns its tensors by name (gguf.h checks the layout). Throws FormatError.
std::unordered_map<std::string, GgufTensor> load_gguf(const std::string& path);

}  // namespace prospect
