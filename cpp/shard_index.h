// model.safetensors.index.json, the shard list of a sharded checkpoint: parsed without torch, so it
// can be fuzzed alone. Only its weight_map is read: {"weight_map": {"<tensor>": "<shard file>", ...}}.
#pragma once

#include "errors.h"

#include <string>
#include <vector>

namespace prospect {

// The shard files the index names, each once, sorted. Each must be a plain file name (no '/', no
// ".."), so a hostile index cannot point outside the checkpoint folder. `what` names the file in
// errors. Throws FormatError.
std::vector<std::string> parse_shard_index(const std::string& json_text,
                                           const std::string& what = "model.safetensors.index.json");

}  // namespace prospect
