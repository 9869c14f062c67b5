// prospect_core._C: the Python face of the C++ core. Tensors cross as at::Tensor
// through torch's pybind11 caster, sharing storage with the caller's tensors.
#include "bindings.h"

#include "errors.h"
#include "joint_embed.h"
#include "matching.h"
#include "rope.h"

namespace prospect {

at::ScalarType dtype_from_py(const py::handle& obj, const char* arg) {
    if (py::isinstance<py::str>(obj)) {
        // Names are read from the one table, Python's (prospect_core.model.DTYPE_NAMES).
        return py::module_::import("prospect_core.model").attr("dtype_named")(obj, arg).cast<at::ScalarType>();
    }
    try {
        return obj.cast<at::ScalarType>();
    } catch (const py::cast_error&) {
        TORCH_CHECK_TYPE(false, arg, " expected a torch.dtype or a dtype name, got ", py_type_name(obj));
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
        TORCH_CHECK_TYPE(false, arg, " expected a torch.device or a device string, got ", py_type_name(obj));
    }
}

namespace {

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
        } catch (const FileNotFoundError& e) {
            PyErr_SetString(PyExc_FileNotFoundError, e.what());
        }
    });
}

// rope_shift_(keys, delta, rope_theta): delta an int or a per-token int64 tensor [T].
at::Tensor py_rope_shift(const at::Tensor& keys, const py::object& delta, const py::object& rope_theta) {
    TORCH_CHECK_TYPE(!rope_theta.is_none(), "rope_shift_: rope_theta expected a float, got None");
    const double theta = rope_theta.cast<double>();
    if (py::isinstance<py::int_>(delta)) {
        rope_shift_(keys, delta.cast<int64_t>(), theta);
    } else {
        TORCH_CHECK_TYPE(is_tensor(delta), "rope_shift_: delta expected an int or an int64 tensor [T], got ",
                         py_type_name(delta));
        rope_shift_(keys, delta.cast<at::Tensor>(), theta);
    }
    return keys;
}

std::vector<int64_t> py_min_weight_full_matching(const at::Tensor& cost) {
    TORCH_CHECK_VALUE(cost.dim() == 2, "min_weight_full_matching: cost expected [rows, cols], got shape ",
                      cost.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(cost.scalar_type()),
                     "min_weight_full_matching: cost expected a floating dtype, got ", cost.scalar_type());
    auto c = cost.to(at::kCPU, at::kDouble).contiguous();
    // Row-major tensor -> column-major Eigen matrix through a row-major map.
    Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> map(c.data_ptr<double>(),
                                                                                                 c.size(0), c.size(1));
    Eigen::MatrixXd mat = map;
    py::gil_scoped_release nogil;
    return min_weight_full_matching(mat);
}

}  // namespace

}  // namespace prospect

using namespace prospect;

PYBIND11_MODULE(_C, m) {
    py::module_::import("torch");  // tensors cross through torch's Python types: load them first
    m.doc() = "prospect's C++ core: KV cache with span ledger and in-place surgery, RoPE shifts, joint_embed.";
    m.attr("__version__") = PROSPECT_VERSION;              // from pyproject, through scikit-build-core
    m.attr("__torch_version__") = PROSPECT_TORCH_VERSION;  // the torch it was built against
    translate_errors();

    auto kv = bind_kv_cache(m);
    bind_cache_interop(m, kv);
    bind_model(m);
    bind_video(m);

    m.def("rope_shift_", &py_rope_shift, py::arg("keys"), py::arg("delta"), py::arg("rope_theta"),
          "Re-rotates keys [..., T, D] rotated at positions p to p + delta, in place (fp32 math). Returns keys.");

    m.def("rope_inv_freq", &rope_inv_freq, py::arg("head_dim"), py::arg("rope_theta"),
          "The fp32 inverse frequencies [head_dim / 2] the rotations use.");

    m.def("min_weight_full_matching", &py_min_weight_full_matching, py::arg("cost"),
          "Column of each row in a minimum-weight full matching of cost [rows, cols] (rows <= cols, +inf forbids).");

    m.def("joint_embed", &joint_embed, py::arg("input_ids"), py::arg("text_embeds"), py::arg("image_features"),
          py::arg("image_token_id"),
          "Merges image features [N, L, H] into text embeddings [B, T, H] at the image tokens (k-th token, k-th row).");
}
