// The torch-free parsers of untrusted input: safetensors headers, config.json and the shard index.
#include <gtest/gtest.h>

#include "model_config.h"
#include "safetensors.h"
#include "shard_index.h"

#include <string>
#include <vector>

using namespace prospect;

namespace {

// A file image: u64 length, the JSON header, then `data_bytes` zero bytes.
std::vector<uint8_t> file_with(const std::string& header, size_t data_bytes) {
    std::vector<uint8_t> f(8);
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) f[i] = static_cast<uint8_t>(n >> (8 * i));
    f.insert(f.end(), header.begin(), header.end());
    f.resize(f.size() + data_bytes);
    return f;
}

SafetensorsHeader parse(const std::vector<uint8_t>& f) {
    return safetensors_parse_header(f.data(), f.size(), f.size(), "t.safetensors");
}

std::string error_of(const std::vector<uint8_t>& f) {
    try {
        parse(f);
    } catch (const FormatError& e) {
        return e.what();
    }
    return "";
}

const char* CONFIG = R"({"text_config": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128, "rope_parameters": {"rope_theta": 5e4}},
  "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
  "image_size": 64, "patch_size": 8}, "scale_factor": 2, "image_token_id": 7})";

}  // namespace

TEST(Safetensors, ParsesValidHeaderSortedByOffset) {
    auto f = file_with(R"({"b": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [16, 28]},
                           "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                           "__metadata__": {"format": "pt"}})",
                       28);
    auto h = parse(f);
    ASSERT_EQ(h.entries.size(), 2u);
    EXPECT_EQ(h.entries[0].name, "a");
    EXPECT_EQ(h.entries[1].shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(h.metadata.at("format"), "pt");
    EXPECT_EQ(h.data_offset, f.size() - 28);
}

TEST(Safetensors, RejectsLiesAndDamage) {
    EXPECT_NE(error_of(file_with(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}})", 16))
                  .find("claims 12 bytes but its dtype and shape need 16"),
              std::string::npos);
    EXPECT_NE(error_of(file_with(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8))
                  .find("outside the 8-byte data section"),
              std::string::npos);
    EXPECT_NE(error_of(file_with(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                 12))
                  .find("overlap"),
              std::string::npos);
    EXPECT_NE(error_of(file_with(R"({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}})", 2))
                  .find("unsupported dtype 'Q4'"),
              std::string::npos);
    EXPECT_NE(
        error_of(file_with(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0))
            .find("overflows"),
        std::string::npos);
    EXPECT_NE(error_of(file_with("[1, 2]", 0)).find("not a JSON object"), std::string::npos);
    auto f = file_with("{}", 0);
    f[0] = 0xff;  // header length far past the end of the file
    EXPECT_NE(error_of(f).find("runs past the end"), std::string::npos);
    EXPECT_NE(error_of({1, 2, 3}).find("has no header"), std::string::npos);
}

TEST(ModelConfig, ReadsSizesAndDefaults) {
    auto c = parse_model_config(CONFIG);
    EXPECT_EQ(c.text.head_dim, 16);
    EXPECT_EQ(c.text.rope_theta, 5e4);
    EXPECT_EQ(c.text.rms_norm_eps, 1e-6);
    EXPECT_EQ(c.vision.num_channels, 3);
    EXPECT_EQ(c.image_seq_len(), 16);
}

TEST(ModelConfig, ErrorsNameTheKey) {
    std::string bad = CONFIG;
    bad.replace(bad.find("\"vocab_size\": 100"), 17, "\"vocab_size\": \"a\"");
    try {
        parse_model_config(bad);
        FAIL();
    } catch (const FormatError& e) {
        EXPECT_NE(std::string(e.what()).find("text_config.vocab_size expected an integer, got string"),
                  std::string::npos);
    }
    EXPECT_THROW(parse_model_config("{\"TextConfig\": {}}"), FormatError);
    EXPECT_THROW(parse_model_config("not json"), FormatError);
}

namespace {

std::string shard_index_error(const std::string& json) {
    try {
        parse_shard_index(json, "index.json");
    } catch (const FormatError& e) {
        return e.what();
    }
    return "";
}

}  // namespace

TEST(ShardIndex, ListsEachShardOnceSorted) {
    const auto shards = parse_shard_index(R"({"metadata": {"total_size": 64}, "weight_map": {
        "lm_head.weight": "model-00002-of-00002.safetensors",
        "model.text_model.norm.weight": "model-00002-of-00002.safetensors",
        "model.text_model.embed_tokens.weight": "model-00001-of-00002.safetensors"}})");
    EXPECT_EQ(shards,
              (std::vector<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}));
    EXPECT_TRUE(parse_shard_index(R"({"weight_map": {}})").empty());
}

TEST(ShardIndex, RefusesPathsOutsideTheFolder) {
    EXPECT_EQ(shard_index_error(R"({"weight_map": {"w": "../model.safetensors"}})"),
              "index.json: shard name '../model.safetensors' must be a plain file name");
    EXPECT_EQ(shard_index_error(R"({"weight_map": {"w": "/etc/passwd"}})"),
              "index.json: shard name '/etc/passwd' must be a plain file name");
    EXPECT_EQ(shard_index_error(R"({"weight_map": {"w": "sub/x.safetensors"}})"),
              "index.json: shard name 'sub/x.safetensors' must be a plain file name");
}

TEST(ShardIndex, ErrorsNameTheProblem) {
    EXPECT_EQ(shard_index_error(R"({"weight_map": {"w": 3}})"), "index.json: weight_map['w'] is not a file name");
    const std::string no_map = "index.json: expected an object with a 'weight_map' object";
    EXPECT_EQ(shard_index_error(R"({"metadata": {}})"), no_map);
    EXPECT_EQ(shard_index_error(R"({"weight_map": ["a"]})"), no_map);
    EXPECT_EQ(shard_index_error("[1]"), no_map);
    EXPECT_EQ(shard_index_error("{\"weight_map\": {\"w\": \"a\xff\"}}").rfind("index.json: not valid JSON (", 0), 0u);
    EXPECT_NE(shard_index_error("{\"weight_map\": {\"w\": \"a\xff\"}}").find("\\xff"), std::string::npos)
        << "the quoted byte is escaped";
    EXPECT_EQ(shard_index_error("not json").rfind("index.json: not valid JSON (", 0), 0u);
}
