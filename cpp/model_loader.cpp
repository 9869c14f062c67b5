#include "model_loader.h"

#include "gguf.h"
#include "safetensors.h"
#include "shard_index.h"

#include <ATen/ops/from_blob.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

namespace prospect {

namespace fs = std::filesystem;

namespace {

std::string kind_of(const fs::file_status& st) {
    switch (st.type()) {
        case fs::file_type::directory: return "directory";
        case fs::file_type::fifo: return "FIFO (named pipe)";
        case fs::file_type::socket: return "socket";
        case fs::file_type::block: return "block device";
        case fs::file_type::character: return "character device";
        default: return "special file";
    }
}

// A read-only mapping of a whole file, unmapped when the last tensor viewing it goes.
struct MappedFile {
    void* addr = MAP_FAILED;
    size_t size = 0;
    ~MappedFile() {
        if (addr != MAP_FAILED && size > 0) munmap(addr, size);
    }
};

// Opening a FIFO or a device for reading blocks until a writer comes: refuse anything but a regular file.
void require_regular_file(const fs::path& path) {
    std::error_code ec;
    const auto st = fs::status(path, ec);
    if (ec || !fs::exists(st)) throw FormatError(path.string() + ": cannot open (no such file)");
    if (!fs::is_regular_file(st)) throw FormatError(path.string() + ": expected a regular file, got a " + kind_of(st));
}

std::shared_ptr<MappedFile> map_file(const fs::path& path) {
    require_regular_file(path);
    // O_NONBLOCK: should the file be swapped for a FIFO after the check, open does not wait for a writer.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw FormatError(path.string() + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw FormatError(path.string() + ": not a regular file");
    }
    auto m = std::make_shared<MappedFile>();
    m->size = static_cast<size_t>(st.st_size);
    if (m->size > 0) m->addr = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (m->size > 0 && m->addr == MAP_FAILED) throw FormatError(path.string() + ": mmap failed");
    return m;
}

at::ScalarType scalar_type_of(const std::string& dtype) {
    static const std::pair<const char*, at::ScalarType> types[] = {
        {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong},
        {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},  {"U8", at::kByte},       {"BOOL", at::kBool},
    };
    for (const auto& [name, t] : types) {
        if (dtype == name) return t;
    }
    throw FormatError("unsupported safetensors dtype '" + dtype + "'");
}

std::string read_text(const fs::path& path) {
    require_regular_file(path);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError(path.string() + ": cannot read");
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void load_file(const fs::path& path, at::ScalarType dtype, at::Device device, WeightMap& out) {
    const auto m = map_file(path);
    const auto* base = static_cast<const uint8_t*>(m->addr == MAP_FAILED ? nullptr : m->addr);
    static const uint8_t empty[8] = {};
    const auto h = safetensors_parse_header(base ? base : empty, m->size, m->size, path.string());
    for (const auto& e : h.entries) {
        auto* ptr = const_cast<uint8_t*>(base + h.data_offset + e.begin);
        const auto src_type = scalar_type_of(e.dtype);
        // The deleter holds the mapping: a view outlives this function safely.
        auto t = at::from_blob(
            ptr, e.shape, [m](void*) {}, at::TensorOptions().dtype(src_type));
        const bool aligned = reinterpret_cast<uintptr_t>(ptr) % e.element_size == 0;
        const bool keep_view = aligned && device.is_cpu() && (!at::isFloatingType(src_type) || src_type == dtype);
        if (!keep_view) t = t.to(device, at::isFloatingType(src_type) ? dtype : src_type, false, /*copy=*/true);
        if (out.tensors().count(e.name)) throw FormatError(path.string() + ": tensor '" + e.name + "' appears twice");
        out.tensors().emplace(e.name, std::move(t));
    }
}

}  // namespace

at::Tensor WeightMap::take(const std::string& name, at::IntArrayRef shape) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) throw FormatError("checkpoint: missing weight '" + name + "'");
    at::Tensor t = std::move(it->second);
    tensors_.erase(it);
    // Integer or bool data read as weights would run and generate garbage.
    if (!at::isFloatingType(t.scalar_type())) {
        throw FormatError("checkpoint: weight '" + name + "' expected a floating dtype (F32, F16, BF16 or F64), got " +
                          std::string(c10::toString(t.scalar_type())));
    }
    if (t.sizes() != shape) {
        std::ostringstream os;
        os << "checkpoint: weight '" << name << "' expected shape " << shape << " from config.json, got " << t.sizes();
        throw FormatError(os.str());
    }
    return t;
}

ModelConfig load_model_config(const std::string& dir) {
    const fs::path path = fs::path(dir) / "config.json";
    if (!fs::exists(fs::status(path)))
        throw FormatError(dir + ": no config.json (expected a Hugging Face model folder)");
    return parse_model_config(read_text(path), path.string());
}

WeightMap load_weights(const std::string& dir, at::ScalarType dtype, at::Device device) {
    const fs::path root(dir);
    std::vector<fs::path> files;
    if (fs::exists(root / "model.safetensors")) {
        files.push_back(root / "model.safetensors");
    } else if (fs::exists(root / "model.safetensors.index.json")) {
        const auto index_path = root / "model.safetensors.index.json";
        for (const auto& s : parse_shard_index(read_text(index_path), index_path.string())) files.push_back(root / s);
    } else {
        for (const char* pickle : {"pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin"}) {
            if (fs::exists(root / pickle)) {
                throw FormatError(
                    dir + ": holds a pickle checkpoint (" + pickle + "), which prospect never loads; " +
                    "convert it to safetensors (e.g. model.save_pretrained(dir, safe_serialization=True))");
            }
        }
        throw FormatError(dir + ": no model.safetensors or model.safetensors.index.json");
    }
    WeightMap out;
    for (const auto& f : files) {
        if (!fs::exists(f)) throw FormatError(f.string() + ": shard named in the index is missing");
        load_file(f, dtype, device, out);
    }
    return out;
}

std::unordered_map<std::string, GgufTensor> load_gguf(const std::string& path) {
    const auto m = map_file(path);
    const auto* base = static_cast<const uint8_t*>(m->addr == MAP_FAILED ? nullptr : m->addr);
    static const uint8_t empty[8] = {};
    std::unordered_map<std::string, GgufTensor> out;
    for (const auto& t : gguf_parse(base ? base : empty, m->size, path)) {
        if (t.end == t.begin) continue;  // a type prospect does not read
        auto bytes = at::from_blob(
            const_cast<uint8_t*>(base + t.begin), {static_cast<int64_t>(t.end - t.begin)}, [m](void*) {},
            at::TensorOptions().dtype(at::kByte));
        if (!out.emplace(t.name, GgufTensor{t.type, t.dims, std::move(bytes)}).second)
            throw FormatError(path + ": tensor '" + printable(t.name) + "' appears twice");
    }
    return out;
}

}  // namespace prospect
