// The safetensors header: parsed and validated without torch, so it can be
// fuzzed on its own. Layout: u64 little-endian N, N bytes of JSON, then data.
#pragma once

#include "errors.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace prospect {

struct SafetensorsEntry {
    std::string name;
    std::string dtype;  // "F32", "BF16", ...
    int64_t element_size;
    std::vector<int64_t> shape;
    uint64_t begin;  // byte range inside the data section
    uint64_t end;
};

struct SafetensorsHeader {
    uint64_t data_offset;                   // 8 + N: where the data section starts in the file
    std::vector<SafetensorsEntry> entries;  // sorted by begin
    std::map<std::string, std::string> metadata;
};

// Bytes per element of a safetensors dtype name, or 0 if we do not load it.
int64_t safetensors_element_size(const std::string& dtype);

// `head` holds the first `head_size` bytes of a file of `file_size` bytes.
// Validates: header length inside the file and under 100 MB, UTF-8 JSON object,
// known dtypes, shape x element size == byte range, ranges inside the data
// section and not overlapping. `what` names the file in errors.
// Throws FormatError.
SafetensorsHeader safetensors_parse_header(const uint8_t* head, uint64_t head_size, uint64_t file_size,
                                           const std::string& what);

}  // namespace prospect
