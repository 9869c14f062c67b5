#include "smolvlm.h"

#include "causal_attention.h"
#include "decode_step.h"
#include "gelu.h"
#include "int8_gemm.h"
#include "joint_embed.h"
#include "matvec.h"
#include "model_loader.h"
#include "quantized_attention.h"
#include "rope.h"
#include "row_ops.h"
#include "simd.h"
#include "text_ops.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>

namespace prospect {

namespace {

// A bf16 vision tower's attention, qkv bf16 [N, S, 3 * heads * hd] -> bf16 [N, S, heads * hd]: each image's
// patches all see each other, in causal_attention's bf16 products on ATen's threads. q, k and v are bf16
// already (and for head_dim 64, SigLIP's, the scale is a power of two, so the scaled queries are too): what
// it rounds is the weights, as ATen's CPU flash attention (transformers' on the CPU) does, and the output.
at::Tensor tower_attention_bf16(const at::Tensor& qkv, int64_t heads, double scale) {
    const int64_t N = qkv.size(0), S = qkv.size(1), D = qkv.size(2) / 3, hd = D / heads;
    const auto f = qkv.to(at::kFloat).contiguous();  // the kernel reads fp32 rows
    const auto kv = f.view({N, S, 3, heads, hd}).narrow(2, 1, 2).permute({0, 2, 3, 1, 4}).contiguous();
    auto out = at::empty({N, S, D}, f.options());
    const CausalAttention shape{.tokens = S,
                                .first = 0,
                                .heads = heads,
                                .kv_heads = heads,
                                .head_dim = hd,
                                .capacity = S,
                                .scale = static_cast<float>(scale),
                                .bf16 = true,
                                .causal = false,
                                .aten_threads = true};
    for (int64_t n = 0; n < N; ++n) {
        causal_attention(shape, f[n].data_ptr<float>(), 3 * D, kv[n][0].data_ptr<float>(), kv[n][1].data_ptr<float>(),
                         out[n].data_ptr<float>());
    }
    return out.to(at::kBFloat16);
}

}  // namespace

SmolVLM::SmolVLM(const std::string& dir, at::ScalarType dtype, at::Device device, WeightFormat format)
    : dir_(dir), cfg_(load_model_config(dir)), dtype_(dtype), device_(device), format_(format) {
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                     "load_model: dtype expected float32, bfloat16 or float16, got ", dtype);
    weights_ = load_smolvlm_weights(dir, cfg_, dtype, device, format);
    device_ = weights_.embed.device();  // "cuda" names the current GPU: keep its index, as caches report theirs
    weight_bytes_ = weights_.nbytes();
    inv_freq_ = rope_inv_freq(cfg_.text.head_dim, cfg_.text.rope_theta).to(device);

    // Whether the weights suit decode_step's raw loops: fixed at load, so checked once here.
    decode_loops_ = device_.type() == at::kCPU && (dtype_ == at::kFloat || dtype_ == at::kBFloat16) &&
                    weights_.final_norm.is_contiguous() && weights_.lm_head.data.is_contiguous();
    for (const auto& l : weights_.text_layers)
        for (const auto* x : {&l.input_norm, &l.qkv.data, &l.o.data, &l.post_norm, &l.gate_up.data, &l.down.data})
            decode_loops_ = decode_loops_ && x->is_contiguous();
}

at::Tensor SmolVLM::embed_sampled(int64_t token) const {
    return at::embedding(weights_.embed, at::full({1, 1}, token, at::TensorOptions().dtype(at::kLong).device(device_)));
}

at::Tensor SmolVLM::embed_tokens(const at::Tensor& input_ids) const {
    TORCH_CHECK_VALUE(input_ids.dim() == 2, "input_ids expected [B, T], got shape ", input_ids.sizes());
    TORCH_CHECK_TYPE(!at::isFloatingType(input_ids.scalar_type()) && input_ids.scalar_type() != at::kBool,
                     "input_ids expected an integer dtype, got ", input_ids.scalar_type());
    if (input_ids.numel() > 0) {
        const int64_t lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
        TORCH_CHECK_VALUE(lo >= 0 && hi < cfg_.text.vocab_size, "input_ids expected token ids in [0, ",
                          cfg_.text.vocab_size, "), got values in [", lo, ", ", hi, "]");
    }
    return at::embedding(weights_.embed, input_ids.to(device_, at::kLong));
}

at::Tensor SmolVLM::vision_tower(const at::Tensor& pixels, const at::Tensor& patch_mask) const {
    const auto& v = cfg_.vision;
    const int64_t N = pixels.size(0), p = v.patch_size, side = cfg_.patches_per_side();
    const int64_t h = pixels.size(2) / p, w = pixels.size(3) / p;
    at::Tensor x;  // [N, h*w, Dv] in row-major order: left transposed, every later add and norm would walk it strided
    if (weights_.patch_q.defined()) {  // a product over each patch's pixels, [N*h*w, C*p*p]
        const auto patches = pixels.view({N, pixels.size(1), h, p, w, p}).permute({0, 2, 4, 1, 3, 5});
        x = int8_gemm(patches.reshape({N * h * w, -1}), weights_.patch_q).view({N, h * w, -1});
    } else {
        x = at::conv2d(pixels, weights_.patch_w, weights_.patch_b, {p, p}).flatten(2).transpose(1, 2).contiguous();
    }

    // Bucketed position ids, op for op as transformers computes them (fp32).
    auto boundaries = at::arange(1.0 / side, 1.0, 1.0 / side, at::TensorOptions().dtype(at::kFloat).device(device_));
    auto nb_h = patch_mask.select(2, 0).sum(1).to(at::kFloat), nb_w = patch_mask.select(1, 0).sum(1).to(at::kFloat);
    auto fh = at::arange(h, boundaries.options()).unsqueeze(0) * nb_h.reciprocal().unsqueeze(1);
    auto fw = at::arange(w, boundaries.options()).unsqueeze(0) * nb_w.reciprocal().unsqueeze(1);
    auto bh = at::bucketize(at::clamp_max(fh, 1.0 - 1e-6), boundaries, false, true);  // [N, h]
    auto bw = at::bucketize(at::clamp_max(fw, 1.0 - 1e-6), boundaries, false, true);
    auto pos = (bh.unsqueeze(2) * side + bw.unsqueeze(1)).reshape({N, -1});
    pos = at::where(patch_mask.view({N, -1}), pos, at::zeros_like(pos));
    x.add_(at::embedding(weights_.pos_emb, pos));

    std::optional<at::Tensor> mask;
    if (!patch_mask.all().item<bool>()) mask = patch_mask.view({N, 1, 1, -1});  // keys that are real patches
    const int64_t D = v.hidden_size, heads = v.num_attention_heads, hd = D / heads, S = x.size(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    auto rows = x.view({N * S, D});  // the residual stream: each block adds into it in place
    // fp32: biases and residual adds folded into the products' passes. Other dtypes keep transformers'
    // roundings (product + bias rounded, then the residual add), so bf16 stays equal to it.
    const bool fp32 = rows.scalar_type() == at::kFloat;
    const auto add_linear = [&](const at::Tensor& in, const at::Tensor& w, const at::Tensor& b, const Int8Gemm& q) {
        if (q.defined()) {
            int8_gemm_add(in, q, rows);
        } else if (fp32) {
            rows.addmm_(in, w.t()).add_(b);
        } else {
            rows.add_(at::addmm(b, in, w.t()));
        }
    };
    // The int8 tower is approximate already; on CPUs that multiply bf16, its attention's scores come from int8
    // products and its weighted sum from bf16 ones.
    const bool attention_quantized = !weights_.vision_layers.empty() && weights_.vision_layers[0].qkv_q.defined() &&
                                     rows.is_cpu() && cpu_has_bf16_dot();
    // A bf16 model's attention on those CPUs: vdpbf16ps products, as ATen's flash attention rounds (below).
    const bool attention_bf16 =
        dtype_ == at::kBFloat16 && rows.is_cpu() && cpu_has_bf16_dot() && !mask && (hd == 32 || hd == 64);
    for (const auto& l : weights_.vision_layers) {
        auto r = at::layer_norm(rows, {D}, l.ln1_w, l.ln1_b, v.layer_norm_eps);
        auto qkv = l.qkv_q.defined() ? int8_gemm(r, l.qkv_q) : at::addmm(l.qkv_b, r, l.qkv_w.t());
        at::Tensor a;  // [N, S, heads, hd]
        if (attention_bf16) {
            a = tower_attention_bf16(qkv.view({N, S, 3 * D}), heads, scale);
        } else {
            qkv = qkv.view({N, S, 3, heads, hd}).permute({2, 0, 3, 1, 4});
            if (attention_quantized) {
                a = quantized_attention(qkv[0], qkv[1], qkv[2], mask, scale);
            } else {
                a = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], mask, 0.0, false, scale).transpose(1, 2);
            }
        }
        add_linear(a.reshape({N * S, D}), l.o_w, l.o_b, l.o_q);
        r = at::layer_norm(rows, {D}, l.ln2_w, l.ln2_b, v.layer_norm_eps);
        at::Tensor mid;  // [N*S, I]
        if (l.fc1_q.defined()) {
            mid = int8_gemm_gelu(r, l.fc1_q);
        } else if (fp32 && rows.is_cpu() && l.fc1_b.is_contiguous()) {
            mid = at::mm(r, l.fc1_w.t());
            bias_gelu_tanh(mid.data_ptr<float>(), l.fc1_b.data_ptr<float>(), mid.size(0), mid.size(1));
        } else {
            mid = at::gelu(at::addmm(l.fc1_b, r, l.fc1_w.t()), "tanh");
        }
        add_linear(mid, l.fc2_w, l.fc2_b, l.fc2_q);
    }
    return at::layer_norm(x, {v.hidden_size}, weights_.post_ln_w, weights_.post_ln_b, v.layer_norm_eps);
}

at::Tensor SmolVLM::image_features(const at::Tensor& pixel_values, const std::optional<at::Tensor>& mask_in) const {
    const auto& v = cfg_.vision;
    TORCH_CHECK_VALUE(pixel_values.dim() == 4 || pixel_values.dim() == 5,
                      "pixel_values expected [N, C, H, W] or [B, N, C, H, W], got shape ", pixel_values.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(pixel_values.scalar_type()), "pixel_values expected a floating dtype, got ",
                     pixel_values.scalar_type());
    auto pv = pixel_values.dim() == 5 ? pixel_values.flatten(0, 1) : pixel_values;
    TORCH_CHECK_VALUE(pv.size(1) == v.num_channels && pv.size(2) == v.image_size && pv.size(3) == v.image_size,
                      "pixel_values expected images of [", v.num_channels, ", ", v.image_size, ", ", v.image_size,
                      "] (channels, image_size, image_size from config.json), got ", pv.sizes().slice(1));
    pv = pv.to(device_, dtype_);
    const int64_t per_image = pv[0].numel();
    auto real = pv.eq(0).sum({1, 2, 3}).ne(per_image);  // all-zero images are padding
    if (!real.any().item<bool>()) real[0] = true;

    at::Tensor pixel_mask;
    if (mask_in && mask_in->defined()) {
        auto m = mask_in->dim() == 4 ? mask_in->flatten(0, 1) : *mask_in;
        TORCH_CHECK_VALUE(
            m.dim() == 3 && m.size(0) == pv.size(0) && m.size(1) == v.image_size && m.size(2) == v.image_size,
            "pixel_attention_mask expected [", pv.size(0), ", ", v.image_size, ", ", v.image_size,
            "] to match pixel_values, got shape ", mask_in->sizes());
        pixel_mask = m.to(device_).to(at::kBool).index({real});
    } else {
        pixel_mask = at::ones({real.sum().item<int64_t>(), v.image_size, v.image_size},
                              at::TensorOptions().dtype(at::kBool).device(device_));
    }
    pv = pv.index({real}).contiguous();
    const int64_t p = v.patch_size;
    auto patch_mask = pixel_mask.unfold(1, p, p).unfold(2, p, p).sum({-1, -2}).gt(0);  // [N, h, w]

    auto x = vision_tower(pv, patch_mask);  // [N, S, Dv]
    // Pixel shuffle: trade spatial resolution for channels.
    const int64_t N = x.size(0), S = x.size(1), D = x.size(2), s = cfg_.scale_factor;
    const int64_t side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(S))));
    x = x.view({N, side, side / s, D * s}).permute({0, 2, 1, 3});
    x = x.reshape({N, side / s, side / s, D * s * s}).permute({0, 2, 1, 3});
    x = x.reshape({N, S / (s * s), D * s * s});
    const auto& w = weights_.connector_w;  // bf16 for fp32 features: a quantized model on a bf16 CPU
    return at::linear(x.to(w.scalar_type()), w).to(x.scalar_type());  // [N, L, H]
}

at::Tensor SmolVLM::joint_embed(const at::Tensor& input_ids, const std::optional<at::Tensor>& pixel_values,
                                const std::optional<at::Tensor>& pixel_attention_mask) const {
    auto text = embed_tokens(input_ids);
    if (!pixel_values || !pixel_values->defined()) {
        const auto n = input_ids.eq(cfg_.image_token_id).sum().item<int64_t>();
        TORCH_CHECK_VALUE(n == 0, "joint_embed: input_ids hold ", n, " image tokens but no pixel_values were given");
        return text;
    }
    return prospect::joint_embed(input_ids.to(device_), text, image_features(*pixel_values, pixel_attention_mask),
                                 cfg_.image_token_id);
}

KVCache SmolVLM::make_cache(int64_t capacity, int64_t batch) const {
    return KVCache(cfg_.text.num_hidden_layers, cfg_.text.num_key_value_heads, cfg_.text.head_dim, capacity, dtype_,
                   device_, batch, cfg_.text.rope_theta);
}

at::Tensor SmolVLM::check_embeds(const at::Tensor& embeds, const KVCache& cache) const {
    const auto& t = cfg_.text;
    TORCH_CHECK_VALUE(embeds.dim() == 3 && embeds.size(2) == t.hidden_size && embeds.size(1) > 0,
                      "embeds expected [B, T, ", t.hidden_size, "] with T >= 1, got shape ", embeds.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(embeds.scalar_type()), "embeds expected a floating dtype, got ",
                     embeds.scalar_type());
    TORCH_CHECK_VALUE(cache.num_layers() == t.num_hidden_layers && cache.num_kv_heads() == t.num_key_value_heads &&
                          cache.head_dim() == t.head_dim && cache.batch() == embeds.size(0),
                      "cache expected ", t.num_hidden_layers, " layers x ", t.num_key_value_heads,
                      " kv heads x head_dim ", t.head_dim, " for batch ", embeds.size(0), ", got ", cache.num_layers(),
                      " x ", cache.num_kv_heads(), " x ", cache.head_dim(), " for batch ", cache.batch(),
                      " (use model.make_cache)");
    TORCH_CHECK_TYPE(cache.dtype() == dtype_ && cache.device() == device_, "cache expected dtype ", dtype_, " on ",
                     device_, " (the model's), got ", cache.dtype(), " on ", cache.device());
    TORCH_CHECK_VALUE(cache.length() + embeds.size(1) <= cache.capacity(), "cache full: ", embeds.size(1),
                      " new tokens at length ", cache.length(), " exceed capacity ", cache.capacity(),
                      "; shrink it first (drop_middle, drop_all)");
    // Past the trained positions RoPE still computes, but the model answers garbage.
    TORCH_CHECK_VALUE(cache.next_position() + embeds.size(1) <= t.max_position_embeddings, "positions ",
                      cache.next_position(), "..", cache.next_position() + embeds.size(1) - 1,
                      " exceed the model's max_position_embeddings (", t.max_position_embeddings,
                      "); renumber the cache first (surgery with position_mode='shift')");
    return embeds.to(device_, dtype_);
}

at::Tensor SmolVLM::text_block(const at::Tensor& x_in, int64_t layer, KVCache& cache, const at::Tensor& cos,
                               const at::Tensor& sin, const std::optional<at::Tensor>& mask, bool causal) const {
    const auto& t = cfg_.text;
    const auto& l = weights_.text_layers[layer];
    const int64_t B = x_in.size(0), T = x_in.size(1), hd = t.head_dim, L0 = cache.length();
    const int64_t nq = t.num_attention_heads * hd, nkv = t.num_key_value_heads * hd;
    auto h = rms_norm(x_in, l.input_norm, t.rms_norm_eps);
    auto qkv = prospect::linear(h, l.qkv);  // [B, T, nq + 2 nkv]
    auto q = qkv.narrow(-1, 0, nq).view({B, T, t.num_attention_heads, hd}).transpose(1, 2);
    auto k = qkv.narrow(-1, nq, nkv).reshape({B, T, t.num_key_value_heads, hd}).transpose(1, 2);
    auto v = qkv.narrow(-1, nq + nkv, nkv).reshape({B, T, t.num_key_value_heads, hd}).transpose(1, 2);
    q = apply_rope(q, cos, sin);
    k = apply_rope(k, cos, sin);
    cache.write(layer, k, v);
    auto K = cache.key_buffer(layer).narrow(2, 0, L0 + T), V = cache.value_buffer(layer).narrow(2, 0, L0 + T);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    auto a = at::scaled_dot_product_attention(q, K, V, mask, 0.0, causal, scale,
                                              t.num_key_value_heads != t.num_attention_heads);
    auto x = x_in + prospect::linear(a.transpose(1, 2).reshape({B, T, nq}), l.o);
    h = rms_norm(x, l.post_norm, t.rms_norm_eps);
    auto gu = prospect::linear(h, l.gate_up);  // [B, T, 2 I]
    const int64_t I = t.intermediate_size;
    return x + prospect::linear(at::silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I), l.down);
}

void SmolVLM::text_block_rows(at::Tensor& x, int64_t layer, KVCache& cache, const at::Tensor& cos,
                              const at::Tensor& sin) const {
    const auto& t = cfg_.text;
    const auto& l = weights_.text_layers[layer];
    const int64_t B = x.size(0), T = x.size(1), H = t.hidden_size, hd = t.head_dim, L0 = cache.length();
    const int64_t heads = t.num_attention_heads, kv_heads = t.num_key_value_heads, I = t.intermediate_size;
    const int64_t nq = heads * hd, nkv = kv_heads * hd, rows = B * T;
    const auto eps = static_cast<float>(t.rms_norm_eps);
    float* px = x.data_ptr<float>();
    auto h = at::empty({B, T, H}, x.options());
    float* ph = h.data_ptr<float>();
    const auto norm = [&](const at::Tensor& w) {
        for (int64_t r = 0; r < rows; ++r) rms_norm_row(px + r * H, w.data_ptr<float>(), ph + r * H, H, eps);
    };

    norm(l.input_norm);
    auto qkv = prospect::linear(h, l.qkv);                                 // [B, T, nq + 2 nkv]
    const float *pc = cos.data_ptr<float>(), *ps = sin.data_ptr<float>();  // [T, hd]
    for (int64_t r = 0; r < rows; ++r) {
        float* row = qkv.data_ptr<float>() + r * (nq + 2 * nkv);
        const int64_t p = r % T;
        rope_heads(row, heads, hd, pc + p * hd, ps + p * hd);
        rope_heads(row + nq, kv_heads, hd, pc + p * hd, ps + p * hd);
    }
    auto k = qkv.narrow(-1, nq, nkv).view({B, T, kv_heads, hd}).transpose(1, 2);
    auto v = qkv.narrow(-1, nq + nkv, nkv).view({B, T, kv_heads, hd}).transpose(1, 2);
    cache.write(layer, k, v);
    auto a = at::empty({B, T, nq}, x.options());
    const CausalAttention shape{.tokens = T,
                                .first = L0,
                                .heads = heads,
                                .kv_heads = kv_heads,
                                .head_dim = hd,
                                .capacity = cache.capacity(),
                                .scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd))),
                                .bf16 = l.qkv.quant.has_value()};  // quantized weights: approximate already
    const float *keys = cache.key_buffer(layer).data_ptr<float>(),
                *values = cache.value_buffer(layer).data_ptr<float>();
    const int64_t per_row = kv_heads * cache.capacity() * hd;  // one batch row of a layer's keys
    for (int64_t b = 0; b < B; ++b) {
        causal_attention(shape, qkv.data_ptr<float>() + b * T * (nq + 2 * nkv), nq + 2 * nkv, keys + b * per_row,
                         values + b * per_row, a.data_ptr<float>() + b * T * nq);
    }
    add_into(px, prospect::linear(a.view({B, T, nq}), l.o).data_ptr<float>(), rows * H);

    norm(l.post_norm);
    auto gu = prospect::linear(h, l.gate_up);  // [B, T, 2 I]
    auto act = at::empty({B, T, I}, x.options());
    for (int64_t r = 0; r < rows; ++r) {
        const float* g = gu.data_ptr<float>() + r * 2 * I;
        silu_mul(g, g + I, act.data_ptr<float>() + r * I, I);
    }
    add_into(px, prospect::linear(act, l.down).data_ptr<float>(), rows * H);
}

at::Tensor SmolVLM::forward(const at::Tensor& embeds_in, KVCache& cache, SpanKind kind,
                            std::optional<int64_t> frame_index, bool extend_last_span, bool all_logits) const {
    KVCache::UseGuard guard(cache);  // the whole forward owns the cache
    auto x = check_embeds(embeds_in, cache);
    const auto& t = cfg_.text;
    const int64_t B = x.size(0), T = x.size(1);
    const int64_t L0 = cache.length(), P0 = cache.next_position();

    // RoPE tables for positions P0 .. P0+T-1, fp32 then cast, as transformers does.
    auto [cos, sin] = rope_tables(at::arange(P0, P0 + T, inv_freq_.options()), inv_freq_, dtype_);  // [T, hd]

    if (T == 1 && B == 1 && !all_logits && decode_step_applies(cache)) {
        return decode_step(x, cache, kind, frame_index, extend_last_span, cos, sin);
    }

    try {
        if (decode_loops_ && dtype_ == at::kFloat && cache.storage().is_contiguous()) {
            auto owned = at::empty({B, T, t.hidden_size}, x.options());  // the residual stream, updated in place
            std::memcpy(owned.data_ptr<float>(), x.contiguous().data_ptr<float>(), owned.nbytes());
            x = owned;
            for (int64_t i = 0; i < t.num_hidden_layers; ++i) text_block_rows(x, i, cache, cos, sin);
        } else {
            std::optional<at::Tensor> mask;
            const bool causal = T > 1 && L0 == 0;
            if (T > 1 && L0 > 0) {
                auto opts = at::TensorOptions().dtype(at::kLong).device(device_);
                mask =
                    at::arange(L0 + T, opts).unsqueeze(0).le(at::arange(L0, L0 + T, opts).unsqueeze(1));  // [T, L0+T]
            }
            for (int64_t i = 0; i < t.num_hidden_layers; ++i) x = text_block(x, i, cache, cos, sin, mask, causal);
        }
    } catch (...) {
        cache.discard_pending();
        throw;
    }
    if (extend_last_span) {
        cache.commit_extend(T);
    } else {
        cache.commit(T, kind, frame_index);
    }
    x = rms_norm(all_logits ? x : x.select(1, T - 1), weights_.final_norm, t.rms_norm_eps);
    return prospect::linear(x, weights_.lm_head);
}

bool SmolVLM::decode_step_applies(const KVCache& cache) const {
    // The cache's dtype and device are the model's (check_embeds): fp32 or bf16 on the CPU when decode_loops_.
    return decode_loops_ && cache.batch() == 1 && cache.storage().is_contiguous();
}

at::Tensor SmolVLM::decode_step(const at::Tensor& x_in, KVCache& cache, SpanKind kind,
                                std::optional<int64_t> frame_index, bool extend_last_span, const at::Tensor& cos,
                                const at::Tensor& sin) const {
    const auto& t = cfg_.text;
    const int64_t L0 = cache.length(), H = t.hidden_size, hd = t.head_dim;  // check_embeds left room for one
    const DecodeShape shape{.hidden = H,
                            .heads = t.num_attention_heads,
                            .kv_heads = t.num_key_value_heads,
                            .head_dim = hd,
                            .intermediate = t.intermediate_size,
                            .eps = static_cast<float>(t.rms_norm_eps),
                            .bf16 = dtype_ == at::kBFloat16};
    // The residual stream, updated in place, and the RoPE tables: fp32 (a bf16 model's hold bf16 values).
    auto x = x_in.reshape({H}).to(at::kFloat, false, true);
    auto scratch = at::empty({decode_scratch_size(shape, L0 + 1)}, x.options());
    auto c = cos.to(at::kFloat).contiguous(), s = sin.to(at::kFloat).contiguous();
    auto storage = cache.storage();  // [layers, 2, 1, kv_heads, capacity, head_dim]
    auto* kv = static_cast<char*>(storage.data_ptr());
    const int64_t per_layer = 2 * t.num_key_value_heads * cache.capacity() * hd * storage.element_size();
    for (int64_t i = 0; i < t.num_hidden_layers; ++i) {
        const auto& l = weights_.text_layers[i];
        const DecodeWeights w{.input_norm = l.input_norm.data_ptr(),
                              .post_norm = l.post_norm.data_ptr(),
                              .qkv = &l.qkv,
                              .o = &l.o,
                              .gate_up = &l.gate_up,
                              .down = &l.down};
        decode_layer(x.data_ptr<float>(), w, shape, kv + i * per_layer, cache.capacity(), L0, c.data_ptr<float>(),
                     s.data_ptr<float>(), scratch.data_ptr<float>());
    }
    cache.note_written(1);
    if (extend_last_span) {
        cache.commit_extend(1);
    } else {
        cache.commit(1, kind, frame_index);
    }
    auto normed = at::empty({1, H}, x.options());
    decode_norm(x.data_ptr<float>(), weights_.final_norm.data_ptr(), normed.data_ptr<float>(), H, shape.eps,
                shape.bf16);
    auto logits = at::empty({1, weights_.lm_head.rows()}, x.options());
    matvec(weights_.lm_head, normed.data_ptr<float>(), logits.data_ptr<float>());
    if (!shape.bf16) return logits;
    // Each logit rounded once, as a bf16 product's. In a loop: ATen's copy of this many runs an OpenMP region,
    // whose threads then spin beside the pool's through the next step.
    auto rounded = at::empty(logits.sizes(), logits.options().dtype(at::kBFloat16));
    store_bf16(logits.data_ptr<float>(), static_cast<uint16_t*>(rounded.data_ptr()), logits.numel());
    return rounded;
}

}  // namespace prospect
