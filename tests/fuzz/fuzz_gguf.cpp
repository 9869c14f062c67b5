// libFuzzer target: the GGUF directory parser must reject anything malformed with FormatError and
// never read outside the bytes it was given, nor return a tensor range outside them.
#include "gguf.h"

#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<uint8_t> buf(data, data + size);  // exactly `size` bytes on the heap, for ASan
    try {
        for (const auto& t : prospect::gguf_parse(buf.data(), buf.size(), "fuzz")) {
            if (t.end < t.begin || t.end > size) __builtin_trap();
        }
    } catch (const prospect::FormatError&) {
    }
    return 0;
}
