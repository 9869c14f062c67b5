// Quantized weights for the CPU decoder: ggml's Q8_0 and Q4_1 (so a GGUF file's quants are used as
// they are), fp32 rows quantized into Q8_0, and the row-dot kernels over them. A product first
// quantizes the activations into blocks of 32 int8 (as llama.cpp does), so each block's dot is an
// integer multiply-add: AVX2's maddubs or VNNI's dpbusd, picked once by what the CPU runs.
//
// In memory a row keeps ggml's bytes, reordered: all its quants, then its fp16 scales (then, Q4_1,
// its fp16 minimums). Eight scales then convert in one instruction instead of eight.
#pragma once

#include <cstdint>
#include <vector>

namespace prospect {

enum class QuantType : uint8_t { Q8_0, Q4_1 };

constexpr int64_t kQuantBlock = 32;  // weights per block, both types

// Bytes of one block: Q8_0 = fp16 scale + 32 int8; Q4_1 = fp16 scale + fp16 min + 32 nibbles.
constexpr int64_t quant_block_bytes(QuantType t) { return t == QuantType::Q8_0 ? 34 : 20; }

// ggml's blocks of one row (n / 32 of them) -> the row layout above, and back.
void quant_row_from_ggml(QuantType t, const uint8_t* ggml, int64_t n, uint8_t* row);
void quant_row_to_ggml(QuantType t, const uint8_t* row, int64_t n, uint8_t* ggml);

// One fp32 row [n] (n a multiple of 32) -> Q8_0 in ggml's block layout (scale max|w| / 127).
void quantize_row_q8_0(const float* w, int64_t n, uint8_t* ggml);

// One row in the layout above -> fp32 [n].
void dequantize_row(QuantType t, const uint8_t* row, int64_t n, float* out);

// `tokens` rows of n activations, each block of 32 as x ~ d * q; s = d * sum(q) is Q4_1's offset term.
struct QuantActs {
    std::vector<int8_t> q;    // [tokens, n]
    std::vector<float> d, s;  // [tokens, n / 32]
    int64_t n = 0, tokens = 0;

    void quantize(const float* x, int64_t n, int64_t tokens);
};

// y[t * y_stride + r] = row r of w . token t of x, for rows [0, rows) of w (rows of row_bytes bytes).
void quant_dot_rows(QuantType t, const uint8_t* w, int64_t row_bytes, int64_t rows, const QuantActs& x, float* y,
                    int64_t y_stride);

// The kernel quant_dot_rows runs on this CPU: "avx512_vnni", "avx2" or "generic".
const char* quant_kernel_name();

// Tests: force a kernel by name ("" = the CPU's best). Throws std::invalid_argument for a kernel the
// CPU cannot run or that does not exist.
void quant_force_kernel(const char* name);

}  // namespace prospect
