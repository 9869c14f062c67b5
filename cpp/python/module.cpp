// prospect_core._C: the Python face of the C++ core. Tensors cross as at::Tensor
// through torch's pybind11 caster, sharing storage with the caller's tensors.
#include "bindings.h"

#include "joint_embed.h"
#include "matching.h"
#include "safetensors.h"  // format_error, file_not_found_error
#include "rope.h"

#include <sstream>

namespace prospect {

at::ScalarType dtype_from_py(const py::handle& obj, const char* arg) {
    if (py::isinstance<py::str>(obj)) {
        const auto name = obj.cast<std::string>();
        static const std::pair<const char*, at::ScalarType> names[] = {
            {"float32", at::kFloat}, {"float", at::kFloat},     {"fp32", at::kFloat},   {"bfloat16", at::kBFloat16},
            {"bf16", at::kBFloat16}, {"float16", at::kHalf},    {"half", at::kHalf},    {"fp16", at::kHalf},
            {"float64", at::kDouble}, {"double", at::kDouble},
        };
        for (const auto& [n, t] : names) {
            if (name == n) return t;
        }
        TORCH_CHECK_VALUE(false, arg, " expected float32, bfloat16, float16 or float64, got '", name, "'");
    }
    try {
        return obj.cast<at::ScalarType>();
    } catch (const py::cast_error&) {
        TORCH_CHECK_TYPE(false, arg, " expected a torch.dtype or a dtype name, got ",
                         py_type_name(obj));
    }
}

at::Device device_from_py(const py::handle& obj, const char* arg) {
    if (py::isinstance<py::str>(obj)) {
        const auto name = obj.cast<std::string>();
        try {
            return at::Device(name);
        } catch (const c10::Error&) {
            TORCH_CHECK_VALUE(false, arg, " expected 'cpu', 'cuda' or 'cuda:N', got '", name, "'");
        }
    }
    try {
        return obj.cast<at::Device>();
    } catch (const py::cast_error&) {
        TORCH_CHECK_TYPE(false, arg, " expected a torch.device or a device string, got ",
                         py_type_name(obj));
    }
}

namespace {

std::optional<int64_t> opt_int(const py::object& o) {
    if (o.is_none()) return std::nullopt;
    return o.cast<int64_t>();
}

std::string span_repr(const Span& s) {
    std::ostringstream os;
    os << "Span(id=" << s.id << ", kind='" << span_kind_name(s.kind) << "', frame_index=";
    if (s.frame_index) os << *s.frame_index; else os << "None";
    os << ", start=" << s.start << ", end=" << s.end << ", first_position=" << s.first_position
       << ", pinned=" << (s.pinned ? "True" : "False") << ")";
    return os.str();
}

void translate_errors() {
    // c10's ValueError/TypeError/IndexError become their Python namesakes, with
    // the message only (no C++ backtrace in the user's notebook).
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const c10::ValueError& e) {
            PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
        } catch (const c10::TypeError& e) {
            PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
        } catch (const c10::IndexError& e) {
            PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
        } catch (const c10::Error& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
        } catch (const file_not_found_error& e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        }
    });
}

}  // namespace

}  // namespace prospect

using namespace prospect;

PYBIND11_MODULE(_C, m) {
    py::module_::import("torch");  // tensors cross through torch's Python types: load them first
    m.doc() = "prospect's C++ core: KV cache with span ledger and in-place surgery, RoPE shifts, joint_embed.";
    m.attr("__version__") = PROSPECT_VERSION;  // from pyproject, through scikit-build-core
    m.attr("__torch_version__") = PROSPECT_TORCH_VERSION;  // the torch it was built against
    translate_errors();

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

    py::class_<KVCache> kv(m, "KVCache", R"doc(
Preallocated KV cache: per layer, keys and values [B, Hkv, capacity, D] in one
storage, filled up to `length`. Every append is recorded as a span; surgery
(drop_all, drop_middle, drop_spans, truncate) removes whole spans and moves the
survivors inside the same storage (drop_range alone cuts inside spans).
position_mode "shift" re-rotates surviving keys so positions are contiguous
(next_position == length); "keep" leaves positions as they were and the caller
passes position ids; "length" leaves the survivors' rotations but the next
token takes position `length`, as transformers assigns positions.)doc");
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
            "keys", [](const KVCache& c, int64_t l) { KVCache::use_guard g(c); return c.keys(l); }, py::arg("layer"),
            "View [B, Hkv, length, D] of layer's keys.")
        .def(
            "values", [](const KVCache& c, int64_t l) { KVCache::use_guard g(c); return c.values(l); },
            py::arg("layer"), "View [B, Hkv, length, D] of layer's values.")
        .def_property_readonly("spans", [](const KVCache& c) { KVCache::use_guard g(c); return c.spans(); })
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
        .def("truncate", &KVCache::truncate, py::arg("length"), "Rollback: cuts the cache to `length` tokens.")
        .def("nbytes", &KVCache::nbytes, "Bytes of keys and values in use.")
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
        .def("__repr__", [](const KVCache& c) {
            std::ostringstream os;
            os << "KVCache(layers=" << c.num_layers() << ", kv_heads=" << c.num_kv_heads() << ", head_dim="
               << c.head_dim() << ", length=" << c.length() << "/" << c.capacity() << ", spans=" << c.spans().size()
               << ", next_position=" << c.next_position() << ", dtype=" << py::str(py::cast(c.dtype())).cast<std::string>() << ", device=" << c.device()
               << ")";
            return os.str();
        });

    bind_cache_interop(m, kv);
    bind_model(m);
    bind_video(m);

    m.def(
        "rope_shift_",
        [](const at::Tensor& keys, const py::object& delta, const py::object& rope_theta) {
            TORCH_CHECK_TYPE(!rope_theta.is_none(), "rope_shift_: rope_theta expected a float, got None");
            const double theta = rope_theta.cast<double>();
            if (py::isinstance<py::int_>(delta)) {
                rope_shift_(keys, delta.cast<int64_t>(), theta);
            } else {
                TORCH_CHECK_TYPE(is_tensor(delta),
                                 "rope_shift_: delta expected an int or an int64 tensor [T], got ",
                                 py_type_name(delta));
                rope_shift_(keys, delta.cast<at::Tensor>(), theta);
            }
            return keys;
        },
        py::arg("keys"), py::arg("delta"), py::arg("rope_theta"),
        "Re-rotates keys [..., T, D] rotated at positions p to p + delta, in place (fp32 math). Returns keys.");

    m.def("rope_inv_freq", &rope_inv_freq, py::arg("head_dim"), py::arg("rope_theta"),
          "The fp32 inverse frequencies [head_dim / 2] the rotations use.");

    m.def(
        "min_weight_full_matching",
        [](const at::Tensor& cost) {
            TORCH_CHECK_VALUE(cost.dim() == 2, "min_weight_full_matching: cost expected [rows, cols], got shape ",
                              cost.sizes());
            TORCH_CHECK_TYPE(at::isFloatingType(cost.scalar_type()),
                             "min_weight_full_matching: cost expected a floating dtype, got ", cost.scalar_type());
            auto c = cost.to(at::kCPU, at::kDouble).contiguous();
            // Row-major tensor -> column-major Eigen matrix through a row-major map.
            Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> map(
                c.data_ptr<double>(), c.size(0), c.size(1));
            Eigen::MatrixXd mat = map;
            py::gil_scoped_release nogil;
            return min_weight_full_matching(mat);
        },
        py::arg("cost"),
        "Column of each row in a minimum-weight full matching of cost [rows, cols] (rows <= cols, +inf forbids).");

    m.def("joint_embed", &joint_embed, py::arg("input_ids"), py::arg("text_embeds"), py::arg("image_features"),
          py::arg("image_token_id"),
          "Merges image features [N, L, H] into text embeddings [B, T, H] at the image tokens (k-th token, k-th row).");
}
