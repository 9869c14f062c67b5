#include "safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace prospect {

namespace {

constexpr uint64_t MAX_HEADER_BYTES = 100u << 20;

[[noreturn]] void fail(const std::string& what, const std::string& msg) {
    throw FormatError(what + ": not a valid safetensors file: " + msg);
}

// The header's JSON: u64 little-endian N, then N bytes, all inside the file and inside `head`.
nlohmann::json read_json(const uint8_t* head, uint64_t head_size, uint64_t file_size, const std::string& what,
                         uint64_t& n) {
    if (file_size < 8 || head_size < 8) fail(what, "file of " + std::to_string(file_size) + " bytes has no header");
    n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | head[i];
    if (n > MAX_HEADER_BYTES) fail(what, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
    if (n > file_size - 8) {
        fail(what, "header length " + std::to_string(n) + " runs past the end of the " + std::to_string(file_size) +
                       "-byte file (truncated?)");
    }
    if (n > head_size - 8) fail(what, "header not fully read");

    nlohmann::json j;
    try {
        j = nlohmann::json::parse(head + 8, head + 8 + n);
    } catch (const nlohmann::json::exception& e) {
        fail(what, "header is not valid JSON (" + printable(e.what()) + ")");
    }
    if (!j.is_object()) fail(what, "header is not a JSON object");
    return j;
}

// One tensor's entry: known dtype, shape x element size == its byte range, inside the data section.
SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& entry, uint64_t data_size,
                             const std::string& what) {
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) fail(what, where + " is not an object");
    if (!entry.contains("dtype") || !entry["dtype"].is_string()) fail(what, where + " has no dtype string");
    if (!entry.contains("shape") || !entry["shape"].is_array()) fail(what, where + " has no shape list");
    if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
        fail(what, where + " has no [begin, end] data_offsets");

    SafetensorsEntry e;
    e.name = name;
    e.dtype = entry["dtype"].get<std::string>();
    e.element_size = safetensors_element_size(e.dtype);
    if (e.element_size == 0) fail(what, where + " has unsupported dtype '" + e.dtype + "'");
    uint64_t bytes = static_cast<uint64_t>(e.element_size);
    for (const auto& d : entry["shape"]) {
        if (!d.is_number_unsigned()) fail(what, where + " has a shape entry that is not a non-negative integer");
        const uint64_t v = d.get<uint64_t>();
        if (v != 0 && bytes > UINT64_MAX / v) fail(what, where + " has a shape whose size overflows");
        if (v > static_cast<uint64_t>(INT64_MAX)) fail(what, where + " has a dimension too large");
        bytes *= v;
        e.shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = entry["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        fail(what, where + " has data_offsets that are not non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size) {
        fail(what, where + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                       "] outside the " + std::to_string(data_size) + "-byte data section");
    }
    if (e.end - e.begin != bytes) {
        fail(what, where + " claims " + std::to_string(e.end - e.begin) + " bytes but its dtype and shape need " +
                       std::to_string(bytes));
    }
    return e;
}

}  // namespace

int64_t safetensors_element_size(const std::string& dtype) {
    static const std::pair<const char*, int64_t> sizes[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
        {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1},
    };
    for (const auto& [name, size] : sizes) {
        if (dtype == name) return size;
    }
    return 0;
}

SafetensorsHeader safetensors_parse_header(const uint8_t* head, uint64_t head_size, uint64_t file_size,
                                           const std::string& what) {
    uint64_t n = 0;
    const nlohmann::json j = read_json(head, head_size, file_size, what, n);
    SafetensorsHeader h;
    h.data_offset = 8 + n;
    const uint64_t data_size = file_size - h.data_offset;
    for (const auto& [name, entry] : j.items()) {
        if (name == "__metadata__") {
            if (!entry.is_object()) fail(what, "__metadata__ is not an object");
            for (const auto& [k, v] : entry.items()) {
                if (v.is_string()) h.metadata[k] = v.get<std::string>();
            }
            continue;
        }
        h.entries.push_back(parse_entry(name, entry, data_size, what));
    }
    std::sort(h.entries.begin(), h.entries.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
    for (size_t i = 1; i < h.entries.size(); ++i) {
        if (h.entries[i].begin < h.entries[i - 1].end) {
            fail(what, "tensors '" + h.entries[i - 1].name + "' and '" + h.entries[i].name + "' overlap");
        }
    }
    return h;
}

}  // namespace prospect
