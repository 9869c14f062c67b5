// libFuzzer target: the safetensors header parser must reject anything malformed with
// FormatError and never read outside the bytes it was given.
#include "safetensors.h"

#include <cstdint>
#include <cstring>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // Exactly `size` bytes on the heap, so ASan sees any read past the end.
    std::vector<uint8_t> buf(data, data + size);
    try {
        // The file may claim to be larger than what we hold (a truncated read).
        const uint64_t file_size = size + (size > 0 ? data[0] % 3 : 0) * 16;
        auto h = prospect::safetensors_parse_header(buf.data(), buf.size(), file_size, "fuzz");
        for (const auto& e : h.entries) {
            if (e.end < e.begin || h.data_offset + e.end > file_size) __builtin_trap();  // validated ranges only
        }
    } catch (const prospect::FormatError&) {
    }
    return 0;
}
