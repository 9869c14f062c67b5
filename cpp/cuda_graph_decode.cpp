#include "cuda_graph_decode.h"

#include "smolvlm.h"
#include "text_ops.h"
#ifdef PROSPECT_WITH_CUDA_KERNELS
#include "cuda/decode_kernels.h"
#endif

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <string>

namespace prospect {

namespace {

constexpr size_t kGraphsKept = 4;     // caches a model keeps graphs for
constexpr int kAttentionChunk = 256;  // keys per attention block

bool env_is(const char* name, const char* value) {
    const char* env = std::getenv(name);
    return env != nullptr && std::string(env) == value;
}

// PROSPECT_CUDA_KERNELS=0 captures the step from ATen ops instead of the fused kernels (a check on them).
bool kernels_wanted() {
#ifdef PROSPECT_WITH_CUDA_KERNELS
    return !env_is("PROSPECT_CUDA_KERNELS", "0");
#else
    return false;
#endif
}

#ifdef PROSPECT_WITH_CUDA_KERNELS
void check(cuda_kernels::Status st) { TORCH_CHECK(st == nullptr, "CUDA decode kernel failed: ", st); }

cuda_kernels::Dtype kernel_dtype(at::ScalarType t) {
    return t == at::kBFloat16 ? cuda_kernels::Dtype::BF16
           : t == at::kHalf   ? cuda_kernels::Dtype::F16
                              : cuda_kernels::Dtype::F32;
}

// x [1, K] times w [N, K] transposed: cuBLAS, or the gemv kernel where asked for and where it fits.
at::Tensor kernel_product(const at::Tensor& x, const at::Tensor& w, bool gemv, int blocks) {
    const auto dt = kernel_dtype(x.scalar_type());
    const int n = static_cast<int>(w.size(0)), k = static_cast<int>(w.size(1));
    if (!gemv || !cuda_kernels::gemv_fits(dt, k)) return at::mm(x, w.t());
    auto y = at::empty({1, n}, x.options());
    check(cuda_kernels::gemv(dt, w.data_ptr(), x.data_ptr(), y.data_ptr(), n, k, std::min(blocks, (n + 7) / 8),
                             at::cuda::getCurrentCUDAStream().stream()));
    return y;
}
#endif

// One model's decode step over one cache, captured as a CUDA graph.
class GraphDecoder {
public:
    GraphDecoder(const SmolVLM& model, const KVCache& cache);
    ~GraphDecoder() {
        for (auto e : events_) cudaEventDestroy(e);
    }
    GraphDecoder(const GraphDecoder&) = delete;
    GraphDecoder& operator=(const GraphDecoder&) = delete;

    // The graph writes by address, and holds no reference to the cache: it serves any live cache whose
    // storage is at that address with that shape (the same cache, or a later one the allocator put there).
    bool serves(const KVCache& cache) const {
        return cache.storage().data_ptr() == storage_ptr_ && cache.storage().sizes().vec() == storage_shape_;
    }
    // Next replay feeds `token` at slot `length`, position `position`.
    void start(int64_t token, int64_t length, int64_t position) {
        state_.copy_(at::tensor({token, length, position}, at::kLong));
    }
    // Queues one step; returns its index for token().
    int64_t replay();
    // The token chosen by replay `index` (waits for it). Only the last two replays are kept.
    int64_t token(int64_t index) const;

private:
    void step();
    void step_aten();
#ifdef PROSPECT_WITH_CUDA_KERNELS
    void step_kernels();
#endif

    const SmolVLM& model_;
    const void* storage_ptr_;
    std::vector<int64_t> storage_shape_;
    std::vector<at::Tensor> keys_, values_;  // [1, kv_heads, capacity, hd] views on the cache, while capturing
    at::Tensor state_;                       // device int64 [token, length, position]
    at::Tensor slots_;                       // device int64 [capacity]: 0 .. capacity-1 (the ATen step's mask)
    at::Tensor partial_;                     // attention scratch (fused kernels)
    at::Tensor host_;                        // pinned int64 [2]: the last two replays' tokens
    cudaEvent_t events_[2] = {nullptr, nullptr};
    int64_t replays_ = 0;
    bool kernels_ = false;
    bool gemv_ = false;  // PROSPECT_CUDA_GEMV=1: the products by prospect's gemv kernel, not cuBLAS (to compare)
    int blocks_ = 0;     // the gemv grid: 4 blocks per multiprocessor
    at::cuda::CUDAGraph graph_;
};

GraphDecoder::GraphDecoder(const SmolVLM& model, const KVCache& cache)
    : model_(model), storage_ptr_(cache.storage().data_ptr()), storage_shape_(cache.storage().sizes().vec()) {
    const auto& t = model.config().text;
    const auto device = model.device();
    for (int64_t l = 0; l < cache.num_layers(); ++l) {
        keys_.push_back(cache.key_buffer(l));
        values_.push_back(cache.value_buffer(l));
    }
    auto long_opts = at::TensorOptions().dtype(at::kLong).device(device);
    state_ = at::zeros({3}, long_opts);
    slots_ = at::arange(cache.capacity(), long_opts);
    host_ = at::empty({2}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    for (auto& e : events_) C10_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
#ifdef PROSPECT_WITH_CUDA_KERNELS
    kernels_ = kernels_wanted() && t.head_dim % 2 == 0 && t.head_dim <= 256 &&
               t.num_attention_heads % t.num_key_value_heads == 0;
    if (kernels_) {
        gemv_ = env_is("PROSPECT_CUDA_GEMV", "1");
        blocks_ = 4 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
        partial_ = at::empty(
            {cuda_kernels::attention_scratch(static_cast<int>(t.num_attention_heads), static_cast<int>(t.head_dim),
                                             cache.capacity(), kAttentionChunk)},
            at::TensorOptions().dtype(at::kFloat).device(device));
    }
#else
    (void)t;
#endif
    // Capture on a side stream once the work queued so far (the prefill) is done. The warm-up step
    // creates cuBLAS handles and workspaces outside the capture; it writes slot `length`, which is free.
    start(0, cache.length(), cache.next_position());
    at::cuda::getCurrentCUDAStream().synchronize();
    auto side = c10::cuda::getStreamFromPool(false, device.index());
    c10::cuda::CUDAStreamGuard on_side(side);
    step();
    side.synchronize();
    graph_.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    try {
        step();
    } catch (...) {
        try {
            graph_.capture_end();
        } catch (...) {
        }
        throw;
    }
    graph_.capture_end();
    keys_.clear();  // holding the views would keep a dropped cache's memory alive
    values_.clear();
}

int64_t GraphDecoder::replay() {
    graph_.replay();
    const int64_t i = replays_++;
    auto stream = at::cuda::getCurrentCUDAStream().stream();
    C10_CUDA_CHECK(cudaMemcpyAsync(host_.data_ptr<int64_t>() + i % 2, state_.data_ptr<int64_t>(), sizeof(int64_t),
                                   cudaMemcpyDeviceToHost, stream));
    C10_CUDA_CHECK(cudaEventRecord(events_[i % 2], stream));
    return i;
}

int64_t GraphDecoder::token(int64_t index) const {
    TORCH_INTERNAL_ASSERT(index >= replays_ - 2 && index < replays_, "GraphDecoder: replay ", index, " is gone");
    C10_CUDA_CHECK(cudaEventSynchronize(events_[index % 2]));
    return host_.data_ptr<int64_t>()[index % 2];
}

void GraphDecoder::step() {
#ifdef PROSPECT_WITH_CUDA_KERNELS
    if (kernels_) return step_kernels();
#endif
    step_aten();
}

// The step from ATen ops: attention over the whole capacity, masked past `length`.
void GraphDecoder::step_aten() {
    const auto& t = model_.config().text;
    const auto& w = model_.weights();
    const int64_t nh = t.num_attention_heads, nkv_h = t.num_key_value_heads, hd = t.head_dim;
    const int64_t nq = nh * hd, nkv = nkv_h * hd, I = t.intermediate_size, cap = slots_.size(0);
    auto x = at::embedding(w.embed, state_.narrow(0, 0, 1).view({1, 1}));  // [1, 1, H]
    auto [cos, sin] = rope_tables(state_.narrow(0, 2, 1).to(at::kFloat), model_.inv_freq(), model_.dtype());
    auto slot = state_.narrow(0, 1, 1);
    auto mask = slots_.le(state_.select(0, 1)).view({1, 1, 1, cap});
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    for (size_t l = 0; l < w.text_layers.size(); ++l) {
        const auto& L = w.text_layers[l];
        auto h = rms_norm(x, L.input_norm, t.rms_norm_eps);
        auto qkv = at::linear(h, L.qkv.data);
        auto q = apply_rope(qkv.narrow(-1, 0, nq).view({1, 1, nh, hd}).transpose(1, 2), cos, sin);
        auto k = apply_rope(qkv.narrow(-1, nq, nkv).reshape({1, 1, nkv_h, hd}).transpose(1, 2), cos, sin);
        auto v = qkv.narrow(-1, nq + nkv, nkv).reshape({1, 1, nkv_h, hd}).transpose(1, 2);
        keys_[l].index_copy_(2, slot, k);
        values_[l].index_copy_(2, slot, v);
        auto a = at::scaled_dot_product_attention(q, keys_[l], values_[l], mask, 0.0, false, scale, nkv_h != nh);
        x = x + at::linear(a.transpose(1, 2).reshape({1, 1, nq}), L.o.data);
        h = rms_norm(x, L.post_norm, t.rms_norm_eps);
        auto gu = at::linear(h, L.gate_up.data);
        x = x + at::linear(at::silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I), L.down.data);
    }
    auto logits = at::linear(rms_norm(x.select(1, 0), w.final_norm, t.rms_norm_eps), w.lm_head.data);  // [1, V]
    state_.narrow(0, 0, 1).copy_(logits.argmax(-1));
    state_.narrow(0, 1, 2).add_(1);
}

#ifdef PROSPECT_WITH_CUDA_KERNELS
// The step from the fused kernels and cuBLAS products: ~10 launches a layer.
void GraphDecoder::step_kernels() {
    namespace k = cuda_kernels;
    const auto& t = model_.config().text;
    const auto& w = model_.weights();
    const int heads = static_cast<int>(t.num_attention_heads), kv_heads = static_cast<int>(t.num_key_value_heads);
    const int hd = static_cast<int>(t.head_dim), H = static_cast<int>(t.hidden_size);
    const int I = static_cast<int>(t.intermediate_size);
    const float eps = static_cast<float>(t.rms_norm_eps);
    const auto dt = kernel_dtype(model_.dtype());
    void* s = at::cuda::getCurrentCUDAStream().stream();
    const auto product = [&](const at::Tensor& in, const at::Tensor& m) {
        return kernel_product(in, m, gemv_, blocks_);
    };
    int64_t* state = state_.data_ptr<int64_t>();
    const int64_t cap = slots_.size(0);

    // The per-layer arguments; only the pointers change from layer to layer.
    k::RopeKvArgs rope{.inv_freq = model_.inv_freq().data_ptr<float>(),
                       .state = state,
                       .heads = heads,
                       .kv_heads = kv_heads,
                       .head_dim = hd,
                       .capacity = cap};
    k::AttentionArgs attn{.state = state,
                          .partial = partial_.data_ptr<float>(),
                          .heads = heads,
                          .kv_heads = kv_heads,
                          .head_dim = hd,
                          .capacity = cap,
                          .chunk = kAttentionChunk,
                          .scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)))};

    auto x = at::embedding(w.embed, state_.narrow(0, 0, 1));  // [1, H], the residual stream
    const auto opts = x.options();
    at::Tensor delta;  // the last product, added to x by the next norm
    for (size_t l = 0; l < w.text_layers.size(); ++l) {
        const auto& L = w.text_layers[l];
        auto h = at::empty({1, H}, opts);
        check(k::add_rms_norm(dt, x.data_ptr(), delta.defined() ? delta.data_ptr() : nullptr, L.input_norm.data_ptr(),
                              h.data_ptr(), H, eps, s));
        auto qkv = product(h, L.qkv.data);
        rope.qkv = qkv.data_ptr();
        rope.keys = keys_[l].data_ptr();
        rope.values = values_[l].data_ptr();
        attn.q = rope.qkv;
        attn.keys = rope.keys;
        attn.values = rope.values;
        check(k::rope_write_kv(dt, rope, s));
        auto a = at::empty({1, static_cast<int64_t>(heads) * hd}, opts);
        attn.out = a.data_ptr();
        check(k::attention(dt, attn, s));
        auto o = product(a, L.o.data);
        auto h2 = at::empty({1, H}, opts);
        check(k::add_rms_norm(dt, x.data_ptr(), o.data_ptr(), L.post_norm.data_ptr(), h2.data_ptr(), H, eps, s));
        auto gu = product(h2, L.gate_up.data);
        auto act = at::empty({1, I}, opts);
        check(k::silu_mul(dt, gu.data_ptr(), act.data_ptr(), I, s));
        delta = product(act, L.down.data);
    }
    auto hf = at::empty({1, H}, opts);
    check(k::add_rms_norm(dt, x.data_ptr(), delta.data_ptr(), w.final_norm.data_ptr(), hf.data_ptr(), H, eps, s));
    auto logits = product(hf, w.lm_head.data);
    check(k::argmax_advance(dt, logits.data_ptr(), logits.size(1), state, s));
}
#endif

bool is_stop(const GenerateOptions& o, int64_t tok) {
    return std::find(o.stop_token_ids.begin(), o.stop_token_ids.end(), tok) != o.stop_token_ids.end();
}

}  // namespace

struct CudaGraphs {
    std::mutex mu;
    std::deque<std::shared_ptr<GraphDecoder>> decoders;  // newest last
};

void CudaGraphsDeleter::operator()(CudaGraphs* g) const { delete g; }

CudaGraphsPtr make_cuda_graphs() { return CudaGraphsPtr(new CudaGraphs); }

namespace {

// The model's graph for this cache, captured now if it has none.
std::shared_ptr<GraphDecoder> decoder_for(const SmolVLM& model, const KVCache& cache) {
    auto& store = model.cuda_graphs();
    std::lock_guard<std::mutex> lock(store.mu);
    auto& d = store.decoders;
    for (auto it = d.begin(); it != d.end(); ++it) {
        if ((*it)->serves(cache)) {
            auto g = *it;
            d.erase(it);
            d.push_back(g);
            return g;
        }
    }
    auto g = std::make_shared<GraphDecoder>(model, cache);
    d.push_back(g);
    if (d.size() > kGraphsKept) d.pop_front();
    return g;
}

}  // namespace

bool cuda_graph_decode_applies(const SmolVLM& model, const KVCache& cache, const GenerateOptions& o) {
    return o.cuda_graph && o.temperature <= 0 && model.device().is_cuda() && cache.batch() == 1 &&
           cache.storage().is_contiguous() && cache.device() == model.device() && cache.dtype() == model.dtype();
}

void cuda_graph_decode(const SmolVLM& model, KVCache& cache, int64_t tok, const GenerateOptions& o, GenerateResult& r) {
    c10::cuda::CUDAGuard on_device(model.device());
    const int64_t max_pos = model.config().text.max_position_embeddings;
    std::shared_ptr<GraphDecoder> dec;
    int64_t fed = -1;  // the replay feeding `tok`, when already queued
    for (int64_t step = 0; step < o.max_new_tokens; ++step) {
        if (is_stop(o, tok)) break;
        r.tokens.push_back(tok);
        const bool go_on = !o.on_token || o.on_token(tok);
        // The reply fills the cache, or the model's positions: keep what fits.
        if (cache.length() >= cache.capacity() || cache.next_position() >= max_pos) break;
        if (!dec) {
            dec = decoder_for(model, cache);
            dec->start(tok, cache.length(), cache.next_position());
        }
        if (fed < 0) fed = dec->replay();
        cache.note_written(1);
        if (step > 0) {
            cache.commit_extend(1);
        } else {
            cache.commit(1, SpanKind::ASSISTANT, o.frame_index);
        }
        ++r.graph_steps;
        if (!go_on || step + 1 == o.max_new_tokens) break;
        // Queue the next step before reading this one's token, so the GPU never waits on the host.
        // Its slot is free; if the token turns out to be a stop, the write stays past the ledger.
        const int64_t current = fed;
        fed = cache.length() < cache.capacity() && cache.next_position() < max_pos ? dec->replay() : -1;
        tok = dec->token(current);
    }
}

bool has_cuda_graphs() { return true; }

bool has_cuda_kernels() {
#ifdef PROSPECT_WITH_CUDA_KERNELS
    return true;
#else
    return false;
#endif
}

}  // namespace prospect
