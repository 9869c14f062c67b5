// prospect_core.KVCache and Span: the cache, its span ledger and its in-place surgery.
#include "bindings.h"

#include <sstream>

namespace prospect {

namespace {

std::optional<int64_t> opt_int(const py::object& o) {
    if (o.is_none()) return std::nullopt;
    return o.cast<int64_t>();
}

std::string span_repr(const Span& s) {
    std::ostringstream os;
    os << "Span(id=" << s.id << ", kind='" << span_kind_name(s.kind) << "', frame_index=";
    if (s.frame_index) {
        os << *s.frame_index;
    } else {
        os << "None";
    }
    os << ", start=" << s.start << ", end=" << s.end << ", first_position=" << s.first_position
       << ", pinned=" << (s.pinned ? "True" : "False") << ")";
    return os.str();
}

std::string kv_cache_repr(const KVCache& c) {
    std::ostringstream os;
    os << "KVCache(layers=" << c.num_layers() << ", kv_heads=" << c.num_kv_heads() << ", head_dim=" << c.head_dim()
       << ", length=" << c.length() << "/" << c.capacity() << ", spans=" << c.spans().size()
       << ", next_position=" << c.next_position() << ", dtype=" << py::str(py::cast(c.dtype())).cast<std::string>()
       << ", device=" << c.device() << ")";
    return os.str();
}

void bind_span(py::module_& m) {
    py::class_<Span>(m, "Span", "A recorded range of cache slots: one frame, turn, reply or summary.")
        .def_readonly("id", &Span::id)
        .def_property_readonly("kind", [](const Span& s) { return span_kind_name(s.kind); })
        .def_readonly("frame_index", &Span::frame_index)
        .def_readonly("start", &Span::start)
        .def_readonly("end", &Span::end)
        .def_readonly("first_position", &Span::first_position)
        .def_readonly("pinned", &Span::pinned)
        .def("__len__", &Span::size)
        .def("__repr__", &span_repr);
}

// Construction, appends, the engine's write/commit path and views on the storage.
void def_writes(py::class_<KVCache>& kv) {
    kv.def(py::init([](int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, int64_t capacity,
                       const py::object& dtype, const py::object& device, int64_t batch, double rope_theta) {
               return std::make_unique<KVCache>(num_layers, num_kv_heads, head_dim, capacity,
                                                dtype.is_none() ? at::kFloat : dtype_from_py(dtype, "KVCache: dtype"),
                                                device_from_py(device, "KVCache: device"), batch, rope_theta);
           }),
           py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("head_dim"), py::arg("capacity"),
           py::arg("dtype") = py::none(), py::arg("device") = "cpu", py::arg("batch") = 1,
           py::arg("rope_theta") = 10000.0)
        .def(
            "append",
            [](KVCache& c, const std::vector<at::Tensor>& keys, const std::vector<at::Tensor>& values,
               const std::string& kind, const py::object& frame_index) {
                return c.append(keys, values, span_kind_from_name(kind), opt_int(frame_index));
            },
            py::arg("keys"), py::arg("values"), py::arg("kind") = "other", py::arg("frame_index") = py::none(),
            "Writes one [B, Hkv, T, D] tensor per layer at `length`; records a span and returns its id.")
        .def("write", &KVCache::write, py::arg("layer"), py::arg("keys"), py::arg("values"),
             "Engine path: writes one layer's T new tokens at slot `length`; invisible until commit.")
        .def(
            "commit",
            [](KVCache& c, int64_t tokens, const std::string& kind, const py::object& frame_index) {
                return c.commit(tokens, span_kind_from_name(kind), opt_int(frame_index));
            },
            py::arg("tokens"), py::arg("kind") = "other", py::arg("frame_index") = py::none(),
            "Makes the written tokens visible as one new span; returns its id.")
        .def("commit_extend", &KVCache::commit_extend, py::arg("tokens"),
             "Makes the written tokens visible as part of the last span.")
        .def("discard_pending", &KVCache::discard_pending, "Forgets tokens written but not committed.")
        .def("key_buffer", &KVCache::key_buffer, py::arg("layer"), "View [B, Hkv, capacity, D] of layer's keys.")
        .def("value_buffer", &KVCache::value_buffer, py::arg("layer"), "View [B, Hkv, capacity, D] of layer's values.")
        .def(
            "keys",
            [](const KVCache& c, int64_t l) {
                KVCache::UseGuard g(c);
                return c.keys(l);
            },
            py::arg("layer"), "View [B, Hkv, length, D] of layer's keys.")
        .def(
            "values",
            [](const KVCache& c, int64_t l) {
                KVCache::UseGuard g(c);
                return c.values(l);
            },
            py::arg("layer"), "View [B, Hkv, length, D] of layer's values.");
}

// The span ledger and the surgery on it.
void def_surgery(py::class_<KVCache>& kv) {
    kv.def_property_readonly("spans",
                             [](const KVCache& c) {
                                 KVCache::UseGuard g(c);
                                 return c.spans();
                             })
        .def("span", &KVCache::span, py::arg("span_id"))
        .def("pin", &KVCache::pin, py::arg("span_id"), py::arg("pinned") = true,
             "Marks a span as anchor: drop_middle keeps it; drop_all keeps it with keep_pinned=True.")
        .def(
            "drop_all",
            [](KVCache& c, bool keep_pinned, const std::string& mode) {
                return c.drop_all(keep_pinned, position_mode_from_name(mode));
            },
            py::arg("keep_pinned") = false, py::arg("position_mode") = "shift")
        .def(
            "drop_middle",
            [](KVCache& c, int64_t keep_last_tokens, const std::string& mode) {
                return c.drop_middle(keep_last_tokens, position_mode_from_name(mode));
            },
            py::arg("keep_last_tokens"), py::arg("position_mode") = "shift",
            "Keeps pinned spans and the newest whole spans that fit in keep_last_tokens; returns tokens dropped.")
        .def(
            "drop_spans",
            [](KVCache& c, const std::vector<int64_t>& ids, const std::string& mode) {
                return c.drop_spans(ids, position_mode_from_name(mode));
            },
            py::arg("span_ids"), py::arg("position_mode") = "shift")
        .def(
            "drop_range",
            [](KVCache& c, int64_t start, int64_t end, const std::string& mode) {
                return c.drop_range(start, end, position_mode_from_name(mode));
            },
            py::arg("start"), py::arg("end"), py::arg("position_mode") = "shift",
            "Token-exact: drops slots [start, end), cutting the spans it crosses; returns tokens dropped.")
        .def("truncate", &KVCache::truncate, py::arg("length"), "Rollback: cuts the cache to `length` tokens.");
}

void def_properties(py::class_<KVCache>& kv) {
    kv.def("nbytes", &KVCache::nbytes, "Bytes of keys and values in use.")
        .def("capacity_bytes", &KVCache::capacity_bytes, "Bytes allocated for keys and values.")
        .def_property_readonly("length", &KVCache::length)
        .def_property_readonly("capacity", &KVCache::capacity)
        .def_property_readonly("next_position", &KVCache::next_position)
        .def_property_readonly("num_layers", &KVCache::num_layers)
        .def_property_readonly("num_kv_heads", &KVCache::num_kv_heads)
        .def_property_readonly("head_dim", &KVCache::head_dim)
        .def_property_readonly("batch", &KVCache::batch)
        .def_property_readonly("rope_theta", &KVCache::rope_theta)
        .def_property_readonly("dtype", &KVCache::dtype)
        .def_property_readonly("device", &KVCache::device)
        .def_property_readonly("storage", &KVCache::storage, "The whole buffer [L, 2, B, Hkv, capacity, D].")
        .def("__len__", &KVCache::length)
        .def("__repr__", &kv_cache_repr);
}

}  // namespace

py::class_<KVCache> bind_kv_cache(py::module_& m) {
    bind_span(m);
    py::class_<KVCache> kv(m, "KVCache", R"doc(
Preallocated KV cache: per layer, keys and values [B, Hkv, capacity, D] in one
storage, filled up to `length`. Every append is recorded as a span; surgery
(drop_all, drop_middle, drop_spans, truncate) removes whole spans and moves the
survivors inside the same storage (drop_range alone cuts inside spans).
position_mode "shift" re-rotates surviving keys so positions are contiguous
(next_position == length); "keep" leaves positions as they were and the caller
passes position ids; "length" leaves the survivors' rotations but the next
token takes position `length`, as transformers assigns positions.)doc");
    def_writes(kv);
    def_surgery(kv);
    def_properties(kv);
    return kv;
}

}  // namespace prospect
