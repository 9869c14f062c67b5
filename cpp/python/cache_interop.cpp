// Surgery on the caches transformers users already hold: a tuple of (k, v) per
// layer, or a transformers DynamicCache (4.4x key_cache/value_cache lists;
// 4.54+ and v5 cache.layers[i].keys/.values). The result is the same kind of
// object: a DynamicCache is modified in place, a tuple comes back as a tuple of
// views on the compacted tensors. These count tokens, not spans.
#include "bindings.h"

#include "kv_compact.h"
#include "rope.h"

namespace prospect {

namespace {

enum class PkvLayout : int8_t { TUPLE, LAYERS, KEY_CACHE };

struct PastKeyValues {
    PkvLayout layout;
    py::object obj;
    std::vector<at::Tensor> keys, values;
    int64_t length = 0;
};

at::Tensor tensor_of(const py::handle& o, const std::string& what) {
    TORCH_CHECK_TYPE(is_tensor(o), "past_key_values: ", what, " expected a tensor, got ", py_type_name(o));
    return o.cast<at::Tensor>();
}

PastKeyValues read_pkv(const py::object& obj) {
    PastKeyValues p{PkvLayout::TUPLE, obj, {}, {}};
    if (py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) {
        size_t i = 0;
        for (const auto& layer : obj) {
            const auto name = "layer " + std::to_string(i++);
            TORCH_CHECK_TYPE(py::isinstance<py::sequence>(layer) && py::len(layer) >= 2, "past_key_values: ", name,
                             " expected a (key, value) pair, got ", py_type_name(layer));
            p.keys.push_back(tensor_of(layer[py::int_(0)], name + " key"));
            p.values.push_back(tensor_of(layer[py::int_(1)], name + " value"));
        }
    } else if (py::hasattr(obj, "layers")) {
        p.layout = PkvLayout::LAYERS;
        size_t i = 0;
        for (const auto& layer : obj.attr("layers")) {
            const auto name = "layer " + std::to_string(i++);
            TORCH_CHECK_VALUE(!py::hasattr(layer, "is_sliding") || !layer.attr("is_sliding").cast<bool>(),
                              "past_key_values: ", name, " is a sliding-window layer; only full-attention ",
                              "(DynamicLayer) caches can be cut");
            const auto k = layer.attr("keys"), v = layer.attr("values");
            if (k.is_none() || v.is_none()) continue;  // not initialized yet: nothing cached
            p.keys.push_back(tensor_of(k, name + " keys"));
            p.values.push_back(tensor_of(v, name + " values"));
        }
    } else if (py::hasattr(obj, "key_cache") && py::hasattr(obj, "value_cache")) {
        p.layout = PkvLayout::KEY_CACHE;
        for (const auto& k : obj.attr("key_cache")) p.keys.push_back(tensor_of(k, "key_cache entry"));
        for (const auto& v : obj.attr("value_cache")) p.values.push_back(tensor_of(v, "value_cache entry"));
    } else {
        TORCH_CHECK_TYPE(false, "past_key_values expected a tuple of (key, value) per layer or a transformers ",
                         "DynamicCache, got ", py_type_name(obj));
    }
    TORCH_CHECK_VALUE(p.keys.size() == p.values.size(), "past_key_values: ", p.keys.size(), " key tensors but ",
                      p.values.size(), " value tensors");
    for (size_t l = 0; l < p.keys.size(); ++l) {
        const auto &k = p.keys[l], &v = p.values[l];
        if (k.numel() == 0 && k.dim() != 4) continue;  // transformers' empty placeholder tensor
        TORCH_CHECK_VALUE(k.dim() == 4 && v.dim() == 4 && k.size(2) == v.size(2), "past_key_values: layer ", l,
                          " expected key and value [B, Hkv, T, D] with equal T, got ", k.sizes(), " and ", v.sizes());
        if (l == 0) p.length = k.size(2);
        TORCH_CHECK_VALUE(k.size(2) == p.length, "past_key_values: layer ", l, " holds ", k.size(2),
                          " tokens but layer 0 holds ", p.length);
    }
    return p;
}

// Points the object at the first `length` tokens of its (compacted) tensors.
py::object write_back(PastKeyValues& p, int64_t length) {
    std::vector<at::Tensor> ks, vs;
    for (size_t l = 0; l < p.keys.size(); ++l) {
        ks.push_back(p.keys[l].dim() == 4 ? p.keys[l].narrow(2, 0, length) : p.keys[l]);
        vs.push_back(p.values[l].dim() == 4 ? p.values[l].narrow(2, 0, length) : p.values[l]);
    }
    switch (p.layout) {
        case PkvLayout::TUPLE: {
            py::tuple out(ks.size());
            for (size_t l = 0; l < ks.size(); ++l) out[l] = py::make_tuple(ks[l], vs[l]);
            return std::move(out);
        }
        case PkvLayout::LAYERS: {
            size_t l = 0;
            for (const auto& layer : p.obj.attr("layers")) {
                if (layer.attr("keys").is_none()) continue;
                layer.attr("keys") = ks[l];
                layer.attr("values") = vs[l];
                ++l;
            }
            return p.obj;
        }
        case PkvLayout::KEY_CACHE: {
            auto kc = p.obj.attr("key_cache"), vc = p.obj.attr("value_cache");
            for (size_t l = 0; l < ks.size(); ++l) {
                kc[py::int_(l)] = ks[l];
                vc[py::int_(l)] = vs[l];
            }
            return p.obj;
        }
    }
    return p.obj;
}

py::object pkv_drop_middle(const py::object& pkv, int64_t keep_first, int64_t keep_last, const std::string& mode_name,
                           const py::object& rope_theta) {
    const PositionMode mode = position_mode_from_name(mode_name);
    TORCH_CHECK_VALUE(keep_first >= 0, "drop_middle: keep_first expected >= 0, got ", keep_first);
    TORCH_CHECK_VALUE(keep_last >= 0, "drop_middle: keep_last expected >= 0, got ", keep_last);
    auto p = read_pkv(pkv);
    TORCH_CHECK_VALUE(mode != PositionMode::SHIFT || !rope_theta.is_none(),
                      "drop_middle: rope_theta expected the model's rope_theta for position_mode='shift', got None");
    const int64_t T = p.length;
    if (keep_first + keep_last >= T) return write_back(p, T);
    const bool shift = mode == PositionMode::SHIFT && keep_last > 0;
    double theta = 0;
    if (shift) {
        try {
            theta = rope_theta.cast<double>();
        } catch (const py::cast_error&) {
            TORCH_CHECK_TYPE(false, "drop_middle: rope_theta expected a number, got ", py_type_name(rope_theta));
        }
    }
    // Every layer is checked before any moves: a refusal halfway would leave layers cut differently.
    for (size_t l = 0; l < p.keys.size(); ++l) {
        if (p.keys[l].dim() != 4) continue;
        check_kv_compact(p.keys[l]);
        check_kv_compact(p.values[l]);
        if (shift) check_rope_shift(p.keys[l], theta);
    }
    const auto moves = kv_compact_plan({{0, keep_first}, {T - keep_last, T}});
    const int64_t delta = -(T - keep_last - keep_first);
    for (size_t l = 0; l < p.keys.size(); ++l) {
        if (p.keys[l].dim() != 4) continue;
        kv_compact_(p.keys[l], moves);
        kv_compact_(p.values[l], moves);
        if (shift) rope_shift_(p.keys[l].narrow(2, keep_first, keep_last), delta, theta);
    }
    return write_back(p, keep_first + keep_last);
}

py::object pkv_drop_all(const py::object& pkv) {
    auto p = read_pkv(pkv);
    return write_back(p, 0);
}

py::object to_dynamic_cache(const KVCache& c) {
    auto dynamic_cache_type = py::module_::import("transformers").attr("DynamicCache");
    py::list empty;
    for (int64_t l = 0; l < c.num_layers(); ++l) {
        empty.append(py::make_tuple(c.keys(l).narrow(2, 0, 0), c.values(l).narrow(2, 0, 0)));
    }
    py::object cache = dynamic_cache_type(py::arg("ddp_cache_data") = empty);
    // Built empty, then pointed at views of our storage: no copy of the data.
    PastKeyValues p = read_pkv(cache);
    for (int64_t l = 0; l < c.num_layers(); ++l) {
        p.keys[l] = c.key_buffer(l);
        p.values[l] = c.value_buffer(l);
    }
    return write_back(p, c.length());
}

std::unique_ptr<KVCache> from_past_key_values(const py::object& pkv, const py::object& capacity, double rope_theta,
                                              const std::string& kind) {
    auto p = read_pkv(pkv);
    TORCH_CHECK_VALUE(!p.keys.empty() && p.keys[0].dim() == 4,
                      "from_past_key_values: past_key_values expected at least one filled layer, got none");
    const auto& k0 = p.keys[0];
    const int64_t cap = capacity.is_none() ? std::max<int64_t>(p.length, 1) : capacity.cast<int64_t>();
    TORCH_CHECK_VALUE(cap >= p.length, "from_past_key_values: capacity expected >= the ", p.length,
                      " cached tokens, got ", cap);
    auto c = std::make_unique<KVCache>(static_cast<int64_t>(p.keys.size()), k0.size(1), k0.size(3), cap,
                                       k0.scalar_type(), k0.device(), k0.size(0), rope_theta);
    if (p.length > 0) c->append(p.keys, p.values, span_kind_from_name(kind));
    return c;
}

}  // namespace

void bind_cache_interop(py::module_& m, py::class_<KVCache>& kv_cache) {
    m.def("drop_middle", &pkv_drop_middle, py::arg("past_key_values"), py::arg("keep_first"), py::arg("keep_last"),
          py::arg("position_mode") = "shift", py::arg("rope_theta") = py::none(), R"doc(
Keeps the first `keep_first` and the last `keep_last` tokens of every layer, in place.

past_key_values: a tuple of (key, value) per layer, or a transformers DynamicCache.
Returns the same kind of object (a DynamicCache is modified and returned; a tuple
comes back as a new tuple of views on the compacted tensors).
position_mode="shift" (default) re-rotates the kept tail so positions are
contiguous: a model that derives positions from the cache length is then right.
It needs the model's rope_theta. "keep" and "length" move the data only (a tuple
records no positions): the next token's position is the caller's, which
transformers takes from the cache length.
This counts tokens, not spans: it can cut a frame's image tokens in half. The
span-aware path is KVCache.drop_middle.)doc");
    m.def("drop_all", &pkv_drop_all, py::arg("past_key_values"),
          "Empties every layer; returns the same kind of object (a DynamicCache in place).");

    kv_cache
        .def(
            "to_legacy",
            [](const KVCache& c) {
                py::tuple out(c.num_layers());
                for (int64_t l = 0; l < c.num_layers(); ++l) out[l] = py::make_tuple(c.keys(l), c.values(l));
                return out;
            },
            "Tuple of (keys, values) views per layer; they share this cache's storage.")
        .def("to_dynamic_cache", &to_dynamic_cache,
             "A transformers DynamicCache whose layers view this cache's storage (a snapshot: appends to it\n"
             "by transformers concatenate into new tensors and do not reach this cache).")
        .def_static("from_past_key_values", &from_past_key_values, py::arg("past_key_values"),
                    py::arg("capacity") = py::none(), py::arg("rope_theta") = 10000.0, py::arg("kind") = "other",
                    "A new KVCache holding a copy of a tuple or DynamicCache as one span at positions 0..T-1.");
}

}  // namespace prospect
