// Quantized weights for the CPU decoder: ggml's Q8_0 and Q4_1 (so a GGUF file's quants are used as
// they are), fp32 rows quantized into Q8_0, and the product kernels over them. A product first
// quantizes the activations into blocks of 32 int8 (as llama.cpp does), so each block's dot is an
// integer multiply-add: AVX2's maddubs or VNNI's dpbusd, picked once by what the CPU runs.
//
// In memory the rows go in groups of 8, block by block: the 8 rows' quants of block b interleaved
// 4 bytes at a time, then their 8 fp16 scales, then (Q4_1) their 8 fp16 minimums. The bytes are
// ggml's, moved: one 32-byte load then holds 4 weights of each of 8 rows, so a broadcast activation
// word multiplies all 8 rows at once, and a group is one sequential stream.
#pragma once

#include <cstdint>
#include <vector>

namespace prospect {

enum class QuantType : uint8_t { Q8_0, Q4_1 };

constexpr int64_t kQuantBlock = 32;  // weights per block, both types
constexpr int64_t kQuantRows = 8;    // rows per group

// Bytes of one block of one row: Q8_0 = fp16 scale + 32 int8; Q4_1 = fp16 scale + fp16 min + 32 nibbles.
constexpr int64_t quant_block_bytes(QuantType t) { return t == QuantType::Q8_0 ? 34 : 20; }
// Bytes of one group of 8 rows of n columns.
constexpr int64_t quant_group_bytes(QuantType t, int64_t n) {
    return n / kQuantBlock * kQuantRows * quant_block_bytes(t);
}

// `rows` (1 to 8) consecutive rows of ggml blocks (n / 32 blocks each) -> one group; rows past them are zero.
void quant_pack_group(QuantType t, const uint8_t* ggml, int64_t rows, int64_t n, uint8_t* group);
// And back: the first `rows` rows of a group -> ggml blocks.
void quant_unpack_group(QuantType t, const uint8_t* group, int64_t rows, int64_t n, uint8_t* ggml);

// One fp32 row [n] (n a multiple of 32) -> Q8_0 in ggml's block layout (scale max|w| / 127).
void quantize_row_q8_0(const float* w, int64_t n, uint8_t* ggml);

// Row r (0 to 7) of a group -> fp32 [n].
void dequantize_group_row(QuantType t, const uint8_t* group, int64_t r, int64_t n, float* out);

// `tokens` rows of n activations, each block of 32 as x ~ d * q. sum(q) gives Q4_1's offset term (d *
// sum(q) times the block's minimum) and corrects VNNI's unsigned Q8_0 weights.
struct QuantActs {
    std::vector<int8_t> q;     // [tokens, n]
    std::vector<float> d;      // [tokens, n / 32]
    std::vector<int32_t> sum;  // [tokens, n / 32]
    int64_t n = 0, tokens = 0;

    void quantize(const float* x, int64_t n, int64_t tokens);
    float offset(int64_t block) const { return d[block] * static_cast<float>(sum[block]); }  // d * sum(q)
};

// For `groups` consecutive groups at w: y[t * y_stride + r] = row r . token t of x, for the first `rows`
// rows (the last group may hold fewer than 8 real rows).
void quant_dot_groups(QuantType t, const uint8_t* w, int64_t groups, const QuantActs& x, float* y, int64_t y_stride,
                      int64_t rows);

// The kernel quant_dot_groups runs on this CPU: "avx512_vnni", "avx2" or "generic".
const char* quant_kernel_name();

// Tests: force a kernel by name ("" = the CPU's best). Throws std::invalid_argument for a kernel the
// CPU cannot run or that does not exist.
void quant_force_kernel(const char* name);

}  // namespace prospect
