// The GGUF container (llama.cpp's model file): its tensor directory parsed and bounds-checked without
// torch, so it can be fuzzed on its own. Metadata values are skipped, except general.alignment.
#pragma once

#include "errors.h"

#include <cstdint>
#include <string>
#include <vector>

namespace prospect {

// ggml's type ids for the tensors prospect reads.
enum GgmlType : uint32_t { GGML_TYPE_F32 = 0, GGML_TYPE_F16 = 1, GGML_TYPE_Q4_1 = 3, GGML_TYPE_Q8_0 = 8 };

struct GgufTensorInfo {
    std::string name;
    uint32_t type;
    std::vector<int64_t> dims;  // fastest-moving first, as GGUF lists them
    uint64_t begin, end;        // byte range inside the file
};

// Bytes of `elements` values of a ggml type, or 0 for a type prospect does not read.
uint64_t ggml_type_bytes(uint32_t type, uint64_t elements);

// `data` holds a whole file of `size` bytes. Validates the magic, version 2 or 3, every length against
// the file, each tensor's range inside it (for the types of ggml_type_bytes). Throws FormatError
// naming `what`.
std::vector<GgufTensorInfo> gguf_parse(const uint8_t* data, uint64_t size, const std::string& what);

}  // namespace prospect
