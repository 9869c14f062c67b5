#include "gguf.h"

#include <cstring>

namespace prospect {

namespace {

enum : uint32_t { V_U8, V_I8, V_U16, V_I16, V_U32, V_I32, V_F32, V_BOOL, V_STRING, V_ARRAY, V_U64, V_I64, V_F64 };

constexpr uint64_t kMaxDims = 4;

// A bounds-checked little-endian reader over the file.
struct Cursor {
    const uint8_t* data;
    uint64_t size, pos = 0;
    const std::string& what;

    [[noreturn]] void fail(const std::string& msg) const {
        throw FormatError(what + ": " + msg + " (at byte " + std::to_string(pos) + ")");
    }
    void need(uint64_t n) {
        if (n > size - pos) fail("truncated GGUF file");
    }
    template <class T>
    T read() {
        need(sizeof(T));
        T v;
        std::memcpy(&v, data + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }
    std::string string() {
        const auto n = read<uint64_t>();
        need(n);
        std::string s(reinterpret_cast<const char*>(data + pos), n);
        pos += n;
        return s;
    }
    void skip_value(uint32_t type, int depth) {
        static const uint64_t widths[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
        if (type == V_STRING) {
            need(8);
            const auto n = read<uint64_t>();
            need(n);
            pos += n;
        } else if (type == V_ARRAY) {
            if (depth > 2) fail("GGUF arrays nested too deep");
            const auto elem = read<uint32_t>();
            const auto n = read<uint64_t>();
            if (elem < std::size(widths) && widths[elem] > 0) {
                if (n > (size - pos) / widths[elem]) fail("truncated GGUF array");
                pos += n * widths[elem];
            } else {
                for (uint64_t i = 0; i < n; ++i) skip_value(elem, depth + 1);
            }
        } else if (type < std::size(widths)) {
            need(widths[type]);
            pos += widths[type];
        } else {
            fail("unknown GGUF value type " + std::to_string(type));
        }
    }
};

}  // namespace

uint64_t ggml_type_bytes(uint32_t type, uint64_t elements) {
    switch (type) {
        case GGML_TYPE_F32: return elements * 4;
        case GGML_TYPE_F16: return elements * 2;
        case GGML_TYPE_Q4_1: return elements % 32 ? 0 : elements / 32 * 20;
        case GGML_TYPE_Q8_0: return elements % 32 ? 0 : elements / 32 * 34;
        default: return 0;
    }
}

std::vector<GgufTensorInfo> gguf_parse(const uint8_t* data, uint64_t size, const std::string& what) {
    Cursor c{data, size, 0, what};
    c.need(4);
    if (std::memcmp(data, "GGUF", 4) != 0) c.fail("not a GGUF file (no GGUF magic)");
    c.pos = 4;
    const auto version = c.read<uint32_t>();
    if (version != 2 && version != 3) c.fail("GGUF version expected 2 or 3, got " + std::to_string(version));
    const auto n_tensors = c.read<uint64_t>(), n_kv = c.read<uint64_t>();
    if (n_tensors > size / 32 || n_kv > size / 12) c.fail("GGUF counts larger than the file");
    uint64_t alignment = 32;
    for (uint64_t i = 0; i < n_kv; ++i) {
        const auto key = c.string();
        const auto type = c.read<uint32_t>();
        if (key == "general.alignment" && type == V_U32) {
            alignment = c.read<uint32_t>();
            if (alignment == 0 || (alignment & (alignment - 1)) != 0) c.fail("general.alignment must be a power of 2");
        } else {
            c.skip_value(type, 0);
        }
    }
    std::vector<GgufTensorInfo> out;
    out.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) {
        GgufTensorInfo t;
        t.name = c.string();
        const auto n_dims = c.read<uint32_t>();
        if (n_dims == 0 || n_dims > kMaxDims) c.fail("tensor '" + printable(t.name) + "': bad dimension count");
        uint64_t elements = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const auto n = c.read<uint64_t>();
            if (n == 0 || n > (uint64_t{1} << 40) || elements > (uint64_t{1} << 40) / n)
                c.fail("tensor '" + printable(t.name) + "': bad shape");
            elements *= n;
            t.dims.push_back(static_cast<int64_t>(n));
        }
        t.type = c.read<uint32_t>();
        t.begin = c.read<uint64_t>();  // relative to the data section for now
        t.end = ggml_type_bytes(t.type, elements);
        out.push_back(std::move(t));
    }
    const uint64_t data_start = (c.pos + alignment - 1) / alignment * alignment;
    for (auto& t : out) {
        const uint64_t bytes = t.end;
        if (bytes == 0) {  // a type we do not read: no range to check
            t.begin = t.end = 0;
            continue;
        }
        if (data_start > size || t.begin > size - data_start || bytes > size - data_start - t.begin)
            throw FormatError(what + ": tensor '" + printable(t.name) + "' lies past the end of the file");
        t.begin += data_start;
        t.end = t.begin + bytes;
    }
    return out;
}

}  // namespace prospect
