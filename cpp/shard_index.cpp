#include "shard_index.h"

#include <nlohmann/json.hpp>

#include <set>

namespace prospect {

std::vector<std::string> parse_shard_index(const std::string& json_text, const std::string& what) {
    nlohmann::json index;
    try {
        index = nlohmann::json::parse(json_text);
    } catch (const nlohmann::json::exception& e) {
        throw FormatError(what + ": not valid JSON (" + printable(e.what()) + ")");
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
        throw FormatError(what + ": expected an object with a 'weight_map' object");
    std::set<std::string> shards;
    for (const auto& [name, file] : index["weight_map"].items()) {
        if (!file.is_string()) throw FormatError(what + ": weight_map['" + name + "'] is not a file name");
        const auto f = file.get<std::string>();
        if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
            throw FormatError(what + ": shard name '" + f + "' must be a plain file name");
        shards.insert(f);
    }
    return {shards.begin(), shards.end()};
}

}  // namespace prospect
