#include "model_config.h"

#include <nlohmann/json.hpp>

#include <optional>

namespace prospect {

namespace {

using json = nlohmann::json;

struct Reader {
    const json& obj;
    std::string prefix;  // "text_config."
    const std::string& what;

    [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
        throw FormatError(what + ": " + prefix + key + " " + msg);
    }
    static const char* type_of(const json& v) { return v.type_name(); }

    int64_t integer(const std::string& key, std::optional<int64_t> fallback, int64_t min_value = 1) const {
        if (!obj.contains(key) || obj[key].is_null()) {
            if (!fallback) fail(key, "is required (a size with no default)");
            return *fallback;
        }
        const auto& v = obj[key];
        if (!v.is_number_integer()) fail(key, std::string("expected an integer, got ") + type_of(v));
        const int64_t x = v.get<int64_t>();
        if (x < min_value) fail(key, "expected >= " + std::to_string(min_value) + ", got " + std::to_string(x));
        return x;
    }
    double number(const std::string& key, double fallback) const {
        if (!obj.contains(key) || obj[key].is_null()) return fallback;
        const auto& v = obj[key];
        if (!v.is_number()) fail(key, std::string("expected a number, got ") + type_of(v));
        const double x = v.get<double>();
        if (!(x > 0) || x > 1e300) fail(key, "expected a positive number, got " + v.dump());
        return x;
    }
    bool boolean(const std::string& key, bool fallback) const {
        if (!obj.contains(key) || obj[key].is_null()) return fallback;
        if (!obj[key].is_boolean()) fail(key, std::string("expected true or false, got ") + type_of(obj[key]));
        return obj[key].get<bool>();
    }
    std::string string(const std::string& key, const std::string& fallback) const {
        if (!obj.contains(key) || obj[key].is_null()) return fallback;
        if (!obj[key].is_string()) fail(key, std::string("expected a string, got ") + type_of(obj[key]));
        return obj[key].get<std::string>();
    }
    Reader sub(const std::string& key) const {
        if (!obj.contains(key)) fail(key, "is required");
        if (!obj[key].is_object()) fail(key, std::string("expected an object, got ") + type_of(obj[key]));
        return Reader{obj[key], prefix + key + ".", what};
    }
};

TextConfig parse_text(const Reader& r) {
    TextConfig t;
    t.hidden_size = r.integer("hidden_size", std::nullopt);
    t.num_hidden_layers = r.integer("num_hidden_layers", std::nullopt);
    t.num_attention_heads = r.integer("num_attention_heads", std::nullopt);
    t.vocab_size = r.integer("vocab_size", std::nullopt);
    t.intermediate_size = r.integer("intermediate_size", std::nullopt);
    t.num_key_value_heads = r.integer("num_key_value_heads", t.num_attention_heads);
    if (t.num_attention_heads % t.num_key_value_heads != 0) {
        r.fail("num_key_value_heads", "expected a divisor of num_attention_heads (" +
                                          std::to_string(t.num_attention_heads) + "), got " +
                                          std::to_string(t.num_key_value_heads));
    }
    t.head_dim = r.integer("head_dim", t.hidden_size / t.num_attention_heads);
    if (t.head_dim % 2 != 0) r.fail("head_dim", "expected an even number, got " + std::to_string(t.head_dim));
    t.rms_norm_eps = r.number("rms_norm_eps", 1e-6);
    t.max_position_embeddings = r.integer("max_position_embeddings", 2048);
    t.rope_theta = r.number("rope_theta", 10000.0);
    for (const char* key : {"rope_parameters", "rope_scaling"}) {
        if (!r.obj.contains(key) || r.obj[key].is_null()) continue;
        const Reader rp = r.sub(key);
        const auto type = rp.string("rope_type", rp.string("type", "default"));
        if (type != "default") rp.fail("rope_type", "'" + type + "' is not supported (only 'default' RoPE)");
        t.rope_theta = rp.number("rope_theta", t.rope_theta);
    }
    if (r.string("hidden_act", "silu") != "silu")
        r.fail("hidden_act", "expected 'silu', got " + r.obj["hidden_act"].dump());
    if (r.boolean("attention_bias", false)) r.fail("attention_bias", "true is not supported");
    if (r.boolean("mlp_bias", false)) r.fail("mlp_bias", "true is not supported");
    if (r.obj.contains("eos_token_id") && !r.obj["eos_token_id"].is_null()) {
        const auto& e = r.obj["eos_token_id"];
        if (e.is_number_integer()) {
            t.eos_token_ids.push_back(e.get<int64_t>());
        } else if (e.is_array()) {
            for (const auto& x : e) {
                if (!x.is_number_integer()) r.fail("eos_token_id", "expected integers, got " + x.dump());
                t.eos_token_ids.push_back(x.get<int64_t>());
            }
        } else {
            r.fail("eos_token_id", std::string("expected an integer or a list, got ") + e.type_name());
        }
    }
    return t;
}

VisionConfig parse_vision(const Reader& r) {
    VisionConfig v;
    v.hidden_size = r.integer("hidden_size", std::nullopt);
    v.num_hidden_layers = r.integer("num_hidden_layers", std::nullopt);
    v.num_attention_heads = r.integer("num_attention_heads", std::nullopt);
    v.intermediate_size = r.integer("intermediate_size", std::nullopt);
    v.image_size = r.integer("image_size", std::nullopt);
    v.patch_size = r.integer("patch_size", std::nullopt);
    v.num_channels = r.integer("num_channels", 3);
    v.layer_norm_eps = r.number("layer_norm_eps", 1e-6);
    if (v.hidden_size % v.num_attention_heads != 0) {
        r.fail("hidden_size", "expected a multiple of num_attention_heads (" + std::to_string(v.num_attention_heads) +
                                  "), got " + std::to_string(v.hidden_size));
    }
    const auto act = r.string("hidden_act", "gelu_pytorch_tanh");
    if (act != "gelu_pytorch_tanh") r.fail("hidden_act", "expected 'gelu_pytorch_tanh', got '" + act + "'");
    // Not a multiple of patch_size is fine: the patch convolution drops the rest, as in SmolVLM2-2.2B
    // (384 px, 14 px patches: 27 per side). An image smaller than one patch is not.
    if (v.image_size < v.patch_size) {
        r.fail("image_size", "expected at least patch_size (" + std::to_string(v.patch_size) + "), got " +
                                 std::to_string(v.image_size));
    }
    return v;
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& what) {
    json j;
    try {
        j = json::parse(json_text);
    } catch (const json::exception& e) {
        throw FormatError(what + ": not valid JSON (" + printable(e.what()) + ")");
    }
    if (!j.is_object()) throw FormatError(what + ": expected a JSON object");
    const Reader top{j, "", what};
    ModelConfig c;
    c.text = parse_text(top.sub("text_config"));
    c.vision = parse_vision(top.sub("vision_config"));
    c.scale_factor = top.integer("scale_factor", 2);
    c.image_token_id = top.integer("image_token_id", 128257, 0);
    c.tie_word_embeddings = top.boolean("tie_word_embeddings", false);
    const int64_t side = c.patches_per_side();
    if (side % c.scale_factor != 0) {
        top.fail("scale_factor", "expected a divisor of image_size / patch_size (" + std::to_string(side) + "), got " +
                                     std::to_string(c.scale_factor));
    }
    if (c.image_token_id >= c.text.vocab_size) {
        top.fail("image_token_id", "expected < text_config.vocab_size (" + std::to_string(c.text.vocab_size) +
                                       "), got " + std::to_string(c.image_token_id));
    }
    return c;
}

}  // namespace prospect
