// prospect_core.SmolVLM: the native engine. Long calls release the GIL.
#include "bindings.h"

#include <chrono>
#include <limits>

#include "causal_attention.h"
#include "cuda_graph_decode.h"
#include "generate.h"
#include "int8_gemm.h"
#include "matvec.h"
#include "model_loader.h"
#include "quant_kernels.h"
#include "quantized_attention.h"
#include "simd.h"
#include "smolvlm.h"

namespace prospect {

namespace {

std::optional<at::Tensor> opt_tensor(const py::object& o, const char* arg) {
    if (o.is_none()) return std::nullopt;
    TORCH_CHECK_TYPE(is_tensor(o), arg, " expected a torch.Tensor or None, got ", py_type_name(o));
    return o.cast<at::Tensor>();
}

at::Tensor tensor_arg(const py::object& o, const char* arg) {
    TORCH_CHECK_TYPE(is_tensor(o), arg, " expected a torch.Tensor, got ", py_type_name(o));
    return o.cast<at::Tensor>();
}

// A RowOrder by name; '' is this CPU's own.
RowOrder row_order(const std::string& name) {
    if (name.empty()) return dense_row_order();
    for (const RowOrder o : {RowOrder::Sequential, RowOrder::Interleaved})
        if (name == row_order_name(o)) return o;
    throw py::value_error("order expected 'sequential', 'interleaved' or '', got '" + name + "'");
}

py::dict config_dict(const ModelConfig& c) {
    py::dict text, vision, out;
    text["hidden_size"] = c.text.hidden_size;
    text["num_hidden_layers"] = c.text.num_hidden_layers;
    text["num_attention_heads"] = c.text.num_attention_heads;
    text["num_key_value_heads"] = c.text.num_key_value_heads;
    text["head_dim"] = c.text.head_dim;
    text["intermediate_size"] = c.text.intermediate_size;
    text["vocab_size"] = c.text.vocab_size;
    text["rms_norm_eps"] = c.text.rms_norm_eps;
    text["rope_theta"] = c.text.rope_theta;
    text["max_position_embeddings"] = c.text.max_position_embeddings;
    text["eos_token_ids"] = c.text.eos_token_ids;
    vision["hidden_size"] = c.vision.hidden_size;
    vision["num_hidden_layers"] = c.vision.num_hidden_layers;
    vision["num_attention_heads"] = c.vision.num_attention_heads;
    vision["intermediate_size"] = c.vision.intermediate_size;
    vision["image_size"] = c.vision.image_size;
    vision["patch_size"] = c.vision.patch_size;
    vision["num_channels"] = c.vision.num_channels;
    vision["layer_norm_eps"] = c.vision.layer_norm_eps;
    out["text_config"] = text;
    out["vision_config"] = vision;
    out["scale_factor"] = c.scale_factor;
    out["image_token_id"] = c.image_token_id;
    out["tie_word_embeddings"] = c.tie_word_embeddings;
    out["image_seq_len"] = c.image_seq_len();
    return out;
}

std::string generate_result_repr(const GenerateResult& r) {
    return "GenerateResult(tokens=" + py::repr(py::cast(r.tokens)).cast<std::string>() +
           ", silence_prob=" + py::repr(py::cast(r.silence_prob)).cast<std::string>() +
           ", prefill_ms=" + std::to_string(r.prefill_ms) + ", decode_ms=" + std::to_string(r.decode_ms) + ")";
}

// SmolVLM.greedy_generate: the Python arguments into GenerateOptions, then the loop without the GIL.
GenerateResult py_greedy_generate(const SmolVLM& s, const py::object& embeds, KVCache& cache, int64_t max_new_tokens,
                                  std::vector<int64_t> stop_token_ids, bool keep, const py::object& silence,
                                  const std::string& kind, std::optional<int64_t> frame_index,
                                  const py::object& on_token, double temperature, double top_p,
                                  std::optional<uint64_t> seed, bool cuda_graph) {
    GenerateOptions o;
    o.max_new_tokens = max_new_tokens;
    o.stop_token_ids = std::move(stop_token_ids);
    o.keep_generated_in_cache = keep;
    if (!silence.is_none()) {
        TORCH_CHECK_TYPE(py::isinstance<py::tuple>(silence) && py::len(silence) == 2,
                         "silence expected a (token_id, threshold) tuple, got ", py_type_name(silence));
        o.silence = std::make_pair(silence[py::int_(0)].cast<int64_t>(), silence[py::int_(1)].cast<double>());
    }
    o.span_kind = span_kind_from_name(kind);
    o.frame_index = frame_index;
    o.temperature = temperature;
    o.top_p = top_p;
    o.seed = seed;
    o.cuda_graph = cuda_graph;
    if (!on_token.is_none()) {
        TORCH_CHECK_TYPE(PyCallable_Check(on_token.ptr()), "on_token expected a callable, got ",
                         py_type_name(on_token));
        o.on_token = [on_token](int64_t tok) {
            py::gil_scoped_acquire gil;
            py::object r = on_token(tok);
            return r.is_none() || r.cast<bool>();
        };
    }
    auto e = tensor_arg(embeds, "embeds");
    py::gil_scoped_release nogil;
    return greedy_generate(s, e, cache, o);
}

// Loading and what the loaded model reports about itself.
void def_load(py::class_<SmolVLM>& c) {
    c.def(py::init([](const std::string& path, const py::object& dtype, const py::object& device,
                      const py::object& weights) {
              const auto dt = dtype_from_py(dtype, "dtype");
              const auto dev = device_from_py(device, "device");
              TORCH_CHECK_TYPE(py::isinstance<py::str>(weights), "weights expected 'dense', 'int8' or 'gguf', got ",
                               py_type_name(weights));
              const auto format = weight_format_from_name(weights.cast<std::string>());
              py::gil_scoped_release nogil;
              return std::make_unique<SmolVLM>(path, dt, dev, format);
          }),
          py::arg("path"), py::arg("dtype") = "float32", py::arg("device") = "cpu", py::arg("weights") = "dense")
        .def_property_readonly("config", [](const SmolVLM& s) { return config_dict(s.config()); })
        .def_property_readonly("dtype", &SmolVLM::dtype)
        .def_property_readonly("device", &SmolVLM::device)
        .def_property_readonly("path", &SmolVLM::path)
        .def_property_readonly("weight_bytes", &SmolVLM::weight_bytes)
        .def_property_readonly(
            "weights", [](const SmolVLM& s) { return std::string(weight_format_name(s.weight_format())); },
            "How the decoder's matrices are held: 'dense', 'int8' (Q8_0 made at load) or 'gguf' (model.gguf's blocks).")
        .def_property_readonly("image_token_id", [](const SmolVLM& s) { return s.config().image_token_id; })
        .def_property_readonly("image_seq_len", [](const SmolVLM& s) { return s.config().image_seq_len(); })
        .def("make_cache", &SmolVLM::make_cache, py::arg("capacity"), py::arg("batch") = 1,
             "A KVCache shaped for this model (layers, kv heads, head_dim, dtype, device, rope_theta).");
}

// Tokens and pixels to embeddings.
void def_embed(py::class_<SmolVLM>& c) {
    c.def(
         "embed_tokens",
         [](const SmolVLM& s, const py::object& ids) { return s.embed_tokens(tensor_arg(ids, "input_ids")); },
         py::arg("input_ids"))
        .def(
            "image_features",
            [](const SmolVLM& s, const py::object& pv, const py::object& mask) {
                auto p = tensor_arg(pv, "pixel_values");
                auto m = opt_tensor(mask, "pixel_attention_mask");
                py::gil_scoped_release nogil;
                return s.image_features(p, m);
            },
            py::arg("pixel_values"), py::arg("pixel_attention_mask") = py::none(),
            "Vision features after the connector [N, image_seq_len, hidden].")
        .def(
            "joint_embed",
            [](const SmolVLM& s, const py::object& ids, const py::object& pv, const py::object& mask) {
                auto i = tensor_arg(ids, "input_ids");
                auto p = opt_tensor(pv, "pixel_values");
                auto m = opt_tensor(mask, "pixel_attention_mask");
                py::gil_scoped_release nogil;
                return s.joint_embed(i, p, m);
            },
            py::arg("input_ids"), py::arg("pixel_values") = py::none(), py::arg("pixel_attention_mask") = py::none());
}

// prefill (last-position logits) and forward (every position's): embeds and the span kind are read with
// the GIL held, the decoder runs without it.
auto run_span(bool all_logits) {
    return [all_logits](const SmolVLM& s, const py::object& embeds, KVCache& cache, const std::string& kind,
                        std::optional<int64_t> frame_index) {
        auto e = tensor_arg(embeds, "embeds");
        const auto k = span_kind_from_name(kind);
        py::gil_scoped_release nogil;
        return all_logits ? s.forward(e, cache, k, frame_index, false, true) : s.prefill(e, cache, k, frame_index);
    };
}

// The decoder over a KVCache: one forward pass, or the whole generation loop.
void def_run(py::class_<SmolVLM>& c) {
    c.def("prefill", run_span(false), py::arg("embeds"), py::arg("cache"), py::arg("span_kind") = "other",
          py::arg("frame_index") = py::none(),
          "Appends embeds [B, T, H] to the cache as one span; returns last-position logits [B, V].")
        .def("forward", run_span(true), py::arg("embeds"), py::arg("cache"), py::arg("span_kind") = "other",
             py::arg("frame_index") = py::none(), "Like prefill, but returns logits for every position [B, T, V].")
        .def("greedy_generate", &py_greedy_generate, py::arg("embeds"), py::arg("cache"), py::arg("max_new_tokens"),
             py::arg("stop_token_ids"), py::arg("keep_generated_in_cache") = true, py::arg("silence") = py::none(),
             py::arg("span_kind") = "user", py::arg("frame_index") = py::none(), py::arg("on_token") = py::none(),
             py::arg("temperature") = 0.0, py::arg("top_p") = 1.0, py::arg("seed") = py::none(),
             py::arg("cuda_graph") = true, R"doc(
Prefills embeds [1, T, H] (one span of span_kind), then decodes up to
max_new_tokens in C++ with the GIL released. The stop token is not fed back;
every emitted token is (one assistant span). silence=(token_id, threshold):
say nothing if P(token_id) at the first step exceeds threshold. on_token(id)
-> bool is called after each token; False stops. On CUDA, greedy batch-1
decoding replays a captured CUDA graph per token; cuda_graph=False runs the
eager path instead. Returns GenerateResult.)doc");
}

}  // namespace

void bind_model(py::module_& m) {
    py::class_<GenerateResult>(m, "GenerateResult")
        .def_readonly("tokens", &GenerateResult::tokens)
        .def_readonly("silence_prob", &GenerateResult::silence_prob)
        .def_readonly("prefill_ms", &GenerateResult::prefill_ms)
        .def_readonly("decode_ms", &GenerateResult::decode_ms)
        .def_readonly("graph_steps", &GenerateResult::graph_steps)
        .def("__repr__", &generate_result_repr);

    py::class_<SmolVLM> c(m, "SmolVLM", "SmolVLM2 loaded from a Hugging Face folder, run by the C++ engine.");
    def_load(c);
    def_embed(c);
    def_run(c);
    m.attr("has_cuda_graphs") = has_cuda_graphs();
    m.attr("has_cuda_kernels") = has_cuda_kernels();
    // Tests: the quantized formats and products on their own (a Matrix as blocks, type name, columns).
    const auto matrix = [](const at::Tensor& blocks, const std::string& type, int64_t cols) {
        TORCH_CHECK_VALUE(type == "q8_0" || type == "q4_1", "type expected 'q8_0' or 'q4_1', got '", type, "'");
        return quant_matrix_from_ggml(blocks, type == "q8_0" ? QuantType::Q8_0 : QuantType::Q4_1, cols);
    };
    m.def(
        "_gguf_tensors",
        [](const std::string& path) {
            py::dict out;
            for (auto& [name, t] : load_gguf(path)) out[py::str(name)] = py::make_tuple(t.type, t.dims, t.bytes);
            return out;
        },
        py::arg("path"), "Tests: a GGUF file's tensors prospect reads, {name: (ggml type, dims, uint8 bytes)}.");
    m.def("_quantize_q8_0", &quantize_q8_0_ggml, py::arg("w"), "Tests: fp32 [rows, cols] -> ggml's Q8_0 blocks.");
    m.def(
        "_dequantize",
        [matrix](const at::Tensor& blocks, const std::string& type, int64_t cols) {
            return dequantize(matrix(blocks, type, cols));
        },
        py::arg("blocks"), py::arg("type"), py::arg("cols"));
    m.def(
        "_quant_linear",
        [matrix](const at::Tensor& x, const at::Tensor& blocks, const std::string& type, int64_t cols) {
            return linear(x, matrix(blocks, type, cols));
        },
        py::arg("x"), py::arg("blocks"), py::arg("type"), py::arg("cols"));
    m.def(
        "_matvec",
        [](const at::Tensor& w, const at::Tensor& x, const std::string& order) {
            TORCH_CHECK_VALUE(w.dim() == 2 && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16) &&
                                  w.is_cpu() && x.dim() == 1 && x.scalar_type() == at::kFloat && x.size(0) == w.size(1),
                              "_matvec expected w fp32/bf16 [rows, n] and x fp32 [n] on the CPU, got ", w.sizes(),
                              " and ", x.sizes());
            const Matrix mat(w.contiguous());
            const auto xc = x.contiguous();
            auto y = at::empty({w.size(0)});
            matvec(mat, xc.data_ptr<float>(), y.data_ptr<float>(), row_order(order));
            return y;
        },
        py::arg("w"), py::arg("x"), py::arg("order") = "",
        "Tests: the decode step's product of a dense matrix (fp32 or bf16) and x, its rows read in `order` "
        "('sequential', 'interleaved'; '' = this CPU's).");
    m.def(
        "dense_row_order", [] { return std::string(row_order_name(dense_row_order())); },
        "How dense decode products read their rows on this CPU: 'sequential' (AMD) or 'interleaved' (Intel).");
    m.def(
        "_int8_gemm",
        [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
            return int8_gemm(x, pack_int8_gemm(w, bias.value_or(at::Tensor()), x.dim() == 2 ? x.size(0) : 1));
        },
        py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
        "Tests: x [M, in] times w [out, in] (+ bias) through the vision tower's int8 products.");
    m.def(
        "_quantized_attention",
        [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& key_mask,
           double scale, std::optional<bool> fused) {
            return quantized_attention(q, k, v, key_mask, scale, fused.value_or(quantized_attention_fused()));
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("key_mask") = py::none(), py::arg("scale"),
        py::arg("fused") = py::none(),
        "Tests: the int8 vision tower's attention, int8 scores and bf16 weights (q, k, v fp32 [N, heads, S, hd]) "
        "-> fp32 [N, S, heads, hd]; fused: in prospect's kernels (None: where the CPU has them) or ATen's.");
    m.def("_quantized_attention_fused", &quantized_attention_fused,
          "Whether this CPU runs the int8 tower attention's fused kernels (AVX512_VNNI and AVX512_BF16).");
    m.def(
        "_causal_attention",
        [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t first, double scale, bool bf16,
           bool causal) {
            TORCH_CHECK_VALUE(
                q.dim() == 3 && k.dim() == 3 && v.sizes() == k.sizes() && q.size(2) == k.size(2) &&
                    q.size(1) % k.size(0) == 0 && first >= 0 && first + q.size(0) <= k.size(1),
                "_causal_attention expected q [T, heads, D], k and v [kv_heads, capacity, D] with heads a "
                "multiple of kv_heads and first + T <= capacity, got ",
                q.sizes(), ", ", k.sizes(), ", ", v.sizes(), ", first ", first);
            const auto qc = q.to(at::kFloat).contiguous(), kc = k.to(at::kFloat).contiguous(),
                       vc = v.to(at::kFloat).contiguous();
            auto out = at::empty({q.size(0), q.size(1) * q.size(2)}, qc.options());
            const CausalAttention a{.tokens = q.size(0),
                                    .first = first,
                                    .heads = q.size(1),
                                    .kv_heads = k.size(0),
                                    .head_dim = q.size(2),
                                    .capacity = k.size(1),
                                    .scale = static_cast<float>(scale),
                                    .bf16 = bf16,
                                    .causal = causal};
            py::gil_scoped_release release;
            causal_attention(a, qc.data_ptr<float>(), q.size(1) * q.size(2), kc.data_ptr<float>(), vc.data_ptr<float>(),
                             out.data_ptr<float>());
            return out;
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("first"), py::arg("scale"), py::arg("bf16") = false,
        py::arg("causal") = true,
        "Tests: a prefill's attention in plain loops: query t of q [T, heads, D] over keys 0..first+t of k, v "
        "[kv_heads, capacity, D] (not causal: over keys 0..first+T-1) -> [T, heads * D]; bf16: its products in "
        "bf16 where the CPU and D allow.");
    m.def("_cpu_has_bf16_dot", &cpu_has_bf16_dot,
          "Whether this CPU multiplies bf16 in hardware; the int8 vision tower's attention then runs in bf16.");
    m.def("_int8_gemm_weight_max", &int8_gemm_weight_max, "Tests: the largest |int8 weight| the products use here.");
    m.def(
        "_time_matvec",
        [matrix](const at::Tensor& w, const std::string& type, int64_t cols, int64_t iters, int64_t tokens,
                 const std::string& order) {
            const RowOrder rows_in = row_order(order);
            const bool dense = type == "f32" || type == "bf16";
            const Matrix mat = dense ? Matrix(w.contiguous()) : matrix(w, type, cols);
            const auto want = type == "bf16" ? at::kBFloat16 : at::kFloat;
            TORCH_CHECK_VALUE(mat.quant || (w.dim() == 2 && w.scalar_type() == want && w.is_cpu()), "w expected ", want,
                              " [rows, cols] on the CPU for type '", type, "'");
            TORCH_CHECK_VALUE(tokens >= 1, "tokens expected >= 1, got ", tokens);
            auto x = at::randn({tokens, mat.cols});
            auto y = at::empty({mat.rows()});
            py::gil_scoped_release nogil;
            // One token: the decode step's matvec; more: a prefill's product.
            const auto once = [&] {
                if (tokens == 1) {
                    matvec(mat, x.data_ptr<float>(), y.data_ptr<float>(), rows_in);
                } else {
                    linear(x, mat);
                }
            };
            once();  // warm
            double best = std::numeric_limits<double>::infinity();
            for (int64_t i = 0; i < std::max<int64_t>(iters, 1); ++i) {
                const auto t0 = std::chrono::steady_clock::now();
                once();
                best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            }
            return best;
        },
        py::arg("w"), py::arg("type"), py::arg("cols"), py::arg("iters"), py::arg("tokens") = 1, py::arg("order") = "",
        "Benchmarks: seconds for the fastest of `iters` products of w with `tokens` fp32 rows ('f32', 'bf16': dense w, "
        "one token's rows read in `order` as _matvec's; else ggml blocks, packed once).");
    m.def(
        "quant_kernel", [] { return std::string(quant_kernel_name()); },
        "The kernel quantized products run on this CPU: 'avx512_vnni', 'avx2' or 'generic'.");
    m.def(
        "_force_quant_kernel", [](const std::string& name) { quant_force_kernel(name.c_str()); }, py::arg("name"),
        "Tests: run quantized products on the named kernel ('' = this CPU's best). ValueError if the CPU lacks it.");
}

}  // namespace prospect
