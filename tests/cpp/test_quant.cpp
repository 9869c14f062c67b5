// GGUF's tensor directory and the quantized row-dot kernels: every kernel this CPU runs against the
// integer math written out, and the layout round trips.
#include <gtest/gtest.h>

#include "gguf.h"
#include "quant_kernels.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace prospect;

namespace {

// A GGUF image: one metadata string, then tensors given as (name, type, dims, data bytes).
struct GgufImage {
    std::vector<uint8_t> bytes;
    template <class T>
    void put(T v) {
        const auto* p = reinterpret_cast<const uint8_t*>(&v);
        bytes.insert(bytes.end(), p, p + sizeof(T));
    }
    void str(const std::string& s) {
        put<uint64_t>(s.size());
        bytes.insert(bytes.end(), s.begin(), s.end());
    }
};

std::vector<uint8_t> gguf_with(uint32_t type, std::vector<uint64_t> dims, uint64_t data_bytes, uint64_t offset = 0) {
    GgufImage g;
    g.bytes = {'G', 'G', 'U', 'F'};
    g.put<uint32_t>(3);
    g.put<uint64_t>(1);  // tensors
    g.put<uint64_t>(1);  // metadata
    g.str("general.name");
    g.put<uint32_t>(8);  // string
    g.str("t");
    g.str("w");
    g.put<uint32_t>(static_cast<uint32_t>(dims.size()));
    for (auto d : dims) g.put<uint64_t>(d);
    g.put<uint32_t>(type);
    g.put<uint64_t>(offset);
    g.bytes.resize((g.bytes.size() + 31) / 32 * 32 + data_bytes, 0);
    return g.bytes;
}

std::string error_of(const std::vector<uint8_t>& f) {
    try {
        gguf_parse(f.data(), f.size(), "t.gguf");
    } catch (const FormatError& e) {
        return e.what();
    }
    return "";
}

// Row r of ggml blocks as fp32, the format written out: w = d * q (+ m for Q4_1).
std::vector<double> ggml_row(QuantType t, const uint8_t* ggml, int64_t n) {
    std::vector<double> w(n);
    const auto half = [](const uint8_t* p) {
        uint16_t h;
        std::memcpy(&h, p, 2);
        const int e = (h >> 10) & 0x1F, m = h & 0x3FF;
        const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
        return (h & 0x8000) ? -v : v;
    };
    for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = ggml + b * quant_block_bytes(t);
        for (int64_t e = 0; e < 32; ++e) {
            if (t == QuantType::Q8_0) {
                w[b * 32 + e] = half(blk) * static_cast<int8_t>(blk[2 + e]);
            } else {
                const uint8_t byte = blk[4 + e % 16];
                w[b * 32 + e] = half(blk) * (e < 16 ? byte & 0x0F : byte >> 4) + half(blk + 2);
            }
        }
    }
    return w;
}

double reference_dot(QuantType t, const uint8_t* ggml, const QuantActs& x, int64_t n) {
    const auto w = ggml_row(t, ggml, n);
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) acc += w[i] * x.d[i / 32] * x.q[i];
    return acc;
}

}  // namespace

TEST(Gguf, ReadsTheDirectory) {
    const auto f = gguf_with(GGML_TYPE_Q8_0, {64, 3}, 3 * 2 * 34);
    const auto t = gguf_parse(f.data(), f.size(), "t.gguf");
    ASSERT_EQ(t.size(), 1u);
    EXPECT_EQ(t[0].name, "w");
    EXPECT_EQ(t[0].type, GGML_TYPE_Q8_0);
    EXPECT_EQ(t[0].dims, (std::vector<int64_t>{64, 3}));
    EXPECT_EQ(t[0].end - t[0].begin, 3u * 2 * 34);
    EXPECT_EQ(t[0].begin % 32, 0u);
    EXPECT_EQ(t[0].end, f.size());
}

TEST(Gguf, RejectsDamage) {
    auto f = gguf_with(GGML_TYPE_Q4_1, {64, 2}, 2 * 2 * 20);
    EXPECT_NE(error_of(std::vector<uint8_t>(f.begin(), f.begin() + 40)).find("truncated"), std::string::npos);
    EXPECT_NE(error_of(gguf_with(GGML_TYPE_Q4_1, {64, 2}, 79)).find("past the end"), std::string::npos);
    EXPECT_NE(error_of(gguf_with(GGML_TYPE_Q4_1, {64, 2}, 80, 1u << 20)).find("past the end"), std::string::npos);
    EXPECT_NE(error_of(gguf_with(GGML_TYPE_F32, {0}, 0)).find("bad shape"), std::string::npos);
    auto bad = f;
    bad[0] = 'X';
    EXPECT_NE(error_of(bad).find("not a GGUF file"), std::string::npos);
    bad = f;
    bad[4] = 9;
    EXPECT_NE(error_of(bad).find("version"), std::string::npos);
    EXPECT_NE(error_of({}).find("truncated"), std::string::npos);
}

TEST(Quant, GroupsRoundTripAndDequantize) {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    const int64_t n = 96, rows = 5;  // a group with 3 missing rows
    std::vector<float> w(rows * n), back(n);
    for (auto& v : w) v = nd(rng);
    for (auto t : {QuantType::Q8_0, QuantType::Q4_1}) {
        const int64_t rb = n / 32 * quant_block_bytes(t);
        std::vector<uint8_t> ggml(rows * rb), group(quant_group_bytes(t, n)), again(rows * rb);
        if (t == QuantType::Q8_0) {
            for (int64_t r = 0; r < rows; ++r) quantize_row_q8_0(w.data() + r * n, n, ggml.data() + r * rb);
        } else {
            for (auto& b : ggml) b = static_cast<uint8_t>(rng() & 0x3F);  // small exponents: finite halves
        }
        quant_pack_group(t, ggml.data(), rows, n, group.data());
        quant_unpack_group(t, group.data(), rows, n, again.data());
        EXPECT_EQ(ggml, again);
        for (int64_t r = 0; r < rows; ++r) {
            dequantize_group_row(t, group.data(), r, n, back.data());
            const auto want = ggml_row(t, ggml.data() + r * rb, n);
            for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(back[i], want[i], 1e-6 * (1 + std::abs(want[i])));
        }
    }
    // Q8_0's scale is max|w| / 127: every weight within half a step.
    std::vector<uint8_t> q(n / 32 * 34);
    quantize_row_q8_0(w.data(), n, q.data());
    const auto deq = ggml_row(QuantType::Q8_0, q.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(w[b * 32 + j]));
        for (int j = 0; j < 32; ++j) EXPECT_NEAR(deq[b * 32 + j], w[b * 32 + j], amax / 127 * 0.51 + 1e-3 * amax);
    }
}

// Every kernel this CPU runs, both types, a whole group and a part group (whose rows past the end
// must not be written), several widths and tokens.
TEST(Quant, EveryKernelMatchesTheFormat) {
    std::mt19937 rng(2);
    std::normal_distribution<float> nd;
    std::uniform_int_distribution<int> byte(0, 255);
    for (const char* kernel : {"generic", "avx2", "avx512_vnni"}) {
        try {
            quant_force_kernel(kernel);
        } catch (const std::invalid_argument&) {
            continue;  // not on this CPU
        }
        for (auto t : {QuantType::Q8_0, QuantType::Q4_1}) {
            for (int64_t n : {32, 256, 576, 1536}) {
                const int64_t rows = 13, tokens = 3, rb = n / 32 * quant_block_bytes(t), gb = quant_group_bytes(t, n);
                std::vector<uint8_t> ggml(rows * rb), w(2 * gb);
                for (int64_t r = 0; r < rows; ++r) {
                    for (int64_t b = 0; b < n / 32; ++b) {
                        uint8_t* blk = ggml.data() + r * rb + b * quant_block_bytes(t);
                        for (int64_t i = 0; i < quant_block_bytes(t); ++i) blk[i] = static_cast<uint8_t>(byte(rng));
                        const uint16_t d = 0x2000 + static_cast<uint16_t>(byte(rng));
                        const uint16_t m = 0xA000 + static_cast<uint16_t>(byte(rng));
                        std::memcpy(blk, &d, 2);  // finite scales near 2^-7, minimums near -2^-7
                        if (t == QuantType::Q4_1) std::memcpy(blk + 2, &m, 2);
                    }
                }
                quant_pack_group(t, ggml.data(), 8, n, w.data());
                quant_pack_group(t, ggml.data() + 8 * rb, rows - 8, n, w.data() + gb);
                std::vector<float> x(tokens * n);
                for (auto& v : x) v = nd(rng);
                QuantActs a;
                a.quantize(x.data(), n, tokens);
                std::vector<float> y(tokens * rows, -7.0f);
                quant_dot_groups(t, w.data(), 2, a, y.data(), rows, rows);
                for (int64_t k = 0; k < tokens; ++k) {
                    QuantActs one;
                    one.quantize(x.data() + k * n, n, 1);
                    for (int64_t r = 0; r < rows; ++r) {
                        const double want = reference_dot(t, ggml.data() + r * rb, one, n);
                        EXPECT_NEAR(y[k * rows + r], want, 1e-4 * (1 + std::abs(want)))
                            << kernel << " n=" << n << " row " << r << " token " << k;
                    }
                }
            }
        }
    }
    quant_force_kernel("");
}

TEST(Quant, ForcingAnUnknownKernelThrows) {
    EXPECT_THROW(quant_force_kernel("sse9"), std::invalid_argument);
    quant_force_kernel("");
    EXPECT_STRNE(quant_kernel_name(), "");
}
