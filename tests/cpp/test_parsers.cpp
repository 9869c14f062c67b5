// The torch-free parsers of untrusted input: safetensors headers and config.json.
#include <gtest/gtest.h>

#include "model_config.h"
#include "safetensors.h"

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

safetensors_header parse(const std::vector<uint8_t>& f) {
    return safetensors_parse_header(f.data(), f.size(), f.size(), "t.safetensors");
}

std::string error_of(const std::vector<uint8_t>& f) {
    try {
        parse(f);
    } catch (const format_error& e) {
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
                                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12))
                  .find("overlap"),
              std::string::npos);
    EXPECT_NE(error_of(file_with(R"({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}})", 2))
                  .find("unsupported dtype 'Q4'"),
              std::string::npos);
    EXPECT_NE(error_of(file_with(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0))
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
    } catch (const format_error& e) {
        EXPECT_NE(std::string(e.what()).find("text_config.vocab_size expected an integer, got string"),
                  std::string::npos);
    }
    EXPECT_THROW(parse_model_config("{\"text_config\": {}}"), format_error);
    EXPECT_THROW(parse_model_config("not json"), format_error);
}
