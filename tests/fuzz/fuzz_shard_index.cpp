// libFuzzer target: model.safetensors.index.json parsing returns plain shard file names, each once
// and sorted, or rejects the input with FormatError; no crash, no other exception.
#include "shard_index.h"

#include <algorithm>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const auto shards = prospect::parse_shard_index(std::string(reinterpret_cast<const char*>(data), size));
        for (const auto& s : shards) {
            if (s.find('/') != std::string::npos || s.find("..") != std::string::npos) __builtin_trap();
        }
        if (!std::is_sorted(shards.begin(), shards.end())) __builtin_trap();
        if (std::adjacent_find(shards.begin(), shards.end()) != shards.end()) __builtin_trap();
    } catch (const prospect::FormatError&) {
    }
    return 0;
}
