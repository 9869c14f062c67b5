// libFuzzer target: config.json parsing accepts well-formed SmolVLM2 configs and rejects
// everything else with FormatError naming a key; no crash, no other exception.
#include "model_config.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const auto c = prospect::parse_model_config(std::string(reinterpret_cast<const char*>(data), size));
        if (c.text.hidden_size <= 0 || c.image_seq_len() < 0 || c.text.head_dim % 2 != 0) __builtin_trap();
    } catch (const prospect::FormatError&) {
    }
    return 0;
}
