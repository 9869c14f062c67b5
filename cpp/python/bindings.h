// Shared pieces of the prospect_core Python module.
#pragma once

#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include "kv_cache.h"

namespace py = pybind11;

namespace prospect {

// "Tensor", "tuple", ...: what a wrong argument was, for error messages.
inline std::string py_type_name(const py::handle& obj) {
    return py::type::of(obj).attr("__name__").cast<std::string>();
}

inline bool is_tensor(const py::handle& obj) { return THPVariable_Check(obj.ptr()); }

// torch.dtype or a name ("float32", "bfloat16", "float16", ...); `arg` names it in errors.
at::ScalarType dtype_from_py(const py::handle& obj, const char* arg);
// torch.device or a string ("cpu", "cuda", "cuda:1").
at::Device device_from_py(const py::handle& obj, const char* arg);

// Span and KVCache; returns KVCache's class for bind_cache_interop to add to.
py::class_<KVCache> bind_kv_cache(py::module_& m);
// Module-level surgery on transformers caches; KVCache.to_legacy / to_dynamic_cache / from_past_key_values.
void bind_cache_interop(py::module_& m, py::class_<KVCache>& kv_cache);
// SmolVLM and greedy_generate.
void bind_model(py::module_& m);
// preprocess_frame, resize, and VideoReader where built with OpenCV.
void bind_video(py::module_& m);

}  // namespace prospect
