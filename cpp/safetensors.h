// The safetensors header: parsed and validated without torch, so it can be
// fuzzed on its own. Layout: u64 little-endian N, N bytes of JSON, then data.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace prospect {

// A file that is not what it claims to be. Reaches Python as ValueError.
struct format_error : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

// A path that does not exist. Reaches Python as FileNotFoundError.
struct file_not_found_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct safetensors_entry {
    std::string name;
    std::string dtype;  // "F32", "BF16", ...
    int64_t element_size;
    std::vector<int64_t> shape;
    uint64_t begin;  // byte range inside the data section
    uint64_t end;
};

struct safetensors_header {
    uint64_t data_offset;  // 8 + N: where the data section starts in the file
    std::vector<safetensors_entry> entries;  // sorted by begin
    std::map<std::string, std::string> metadata;
};

// Bytes outside printable ASCII as \xNN, so an error message quoting a hostile
// file stays valid UTF-8 on its way into Python.
std::string printable(const std::string& s);

// Bytes per element of a safetensors dtype name, or 0 if we do not load it.
int64_t safetensors_element_size(const std::string& dtype);

// `head` holds the first `head_size` bytes of a file of `file_size` bytes.
// Validates: header length inside the file and under 100 MB, UTF-8 JSON object,
// known dtypes, shape x element size == byte range, ranges inside the data
// section and not overlapping. `what` names the file in errors.
safetensors_header safetensors_parse_header(const uint8_t* head, uint64_t head_size, uint64_t file_size,
                                            const std::string& what);

}  // namespace prospect
