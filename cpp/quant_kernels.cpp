#include "quant_kernels.h"

#include "simd.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace prospect {

namespace {

// IEEE half <-> float without F16C, for the generic kernel and quantizing at load.
float half_to_float(uint16_t h) {
    const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: scale the mantissa by 2^-24
        const float f = std::ldexp(static_cast<float>(man), -24);
        std::memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t float_to_half(float f) {  // round to nearest even; scales here are finite and >= 0
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const float a = std::fabs(f);
    if (a >= 65520.0f) return sign | 0x7C00;
    if (a < 6.103515625e-05f) {  // subnormal half: a multiple of 2^-24
        return sign | static_cast<uint16_t>(std::nearbyint(std::ldexp(a, 24)));
    }
    std::memcpy(&x, &a, 4);
    const uint32_t rounded = x + 0x0FFFu + ((x >> 13) & 1u);
    return sign | static_cast<uint16_t>(((rounded >> 13) - (112u << 10)) & 0x7FFFu);
}

float half_at(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return half_to_float(h);
}

constexpr int64_t quant_bytes(QuantType t) { return t == QuantType::Q8_0 ? 32 : 16; }  // per row and block

// Where a group's block b keeps row r's pieces (quant_kernels.h): word j of its quants, scale, minimum.
struct GroupBlock {
    const uint8_t* base;
    int64_t qb;
    GroupBlock(QuantType t, const uint8_t* group, int64_t b)
        : base(group + b * kQuantRows * quant_block_bytes(t)), qb(quant_bytes(t)) {}
    int64_t word(int64_t j, int64_t r) const { return 32 * j + 4 * r; }
    int64_t scale(int64_t r) const { return kQuantRows * qb + 2 * r; }
    int64_t minimum(int64_t r) const { return kQuantRows * qb + 16 + 2 * r; }
};

// Weight e (0 to 31) of row r in a group's block, as its integer quant.
int32_t quant_at(QuantType t, const GroupBlock& g, int64_t r, int64_t e) {
    if (t == QuantType::Q8_0) return static_cast<int8_t>(g.base[g.word(e / 4, r) + e % 4]);
    const uint8_t byte = g.base[g.word((e % 16) / 4, r) + e % 4];
    return e < 16 ? (byte & 0x0F) : (byte >> 4);
}

void dot_groups_generic(QuantType t, const uint8_t* w, int64_t groups, const QuantActs& x, float* y, int64_t y_stride,
                        int64_t rows) {
    const int64_t nb = x.n / kQuantBlock, bytes = quant_group_bytes(t, x.n);
    for (int64_t g = 0; g < groups; ++g) {
        for (int64_t r = 0; r < std::min<int64_t>(kQuantRows, rows - g * kQuantRows); ++r) {
            for (int64_t k = 0; k < x.tokens; ++k) {
                const int8_t* xq = x.q.data() + k * x.n;
                float acc = 0;
                for (int64_t b = 0; b < nb; ++b) {
                    const GroupBlock blk(t, w + g * bytes, b);
                    int32_t dot = 0;
                    for (int64_t e = 0; e < kQuantBlock; ++e) dot += quant_at(t, blk, r, e) * xq[b * kQuantBlock + e];
                    acc += half_at(blk.base + blk.scale(r)) * x.d[k * nb + b] * static_cast<float>(dot);
                    if (t == QuantType::Q4_1) acc += half_at(blk.base + blk.minimum(r)) * x.offset(k * nb + b);
                }
                y[k * y_stride + g * kQuantRows + r] = acc;
            }
        }
    }
}

}  // namespace

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define PROSPECT_QK_NS avx2
#include "quant_kernels_x86.inc"
#undef PROSPECT_QK_NS
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#define PROSPECT_QK_NS avx512_vnni
#define PROSPECT_QK_VNNI
// GCC 12 takes the undefined upper lanes inside its AVX-512 intrinsics for uninitialized variables.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "quant_kernels_x86.inc"
#pragma GCC diagnostic pop
#undef PROSPECT_QK_NS
#undef PROSPECT_QK_VNNI
#pragma GCC pop_options
#endif

namespace {

using DotGroups = void (*)(QuantType, const uint8_t*, int64_t, const QuantActs&, float*, int64_t, int64_t);

struct Kernel {
    const char* name;
    DotGroups fn;
    bool (*runs_here)();
};

bool always() { return true; }

#if defined(__x86_64__)
bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512_vnni() {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
}
#endif

// Best first.
const Kernel kKernels[] = {
#if defined(__x86_64__)
    {"avx512_vnni", avx512_vnni::dot_groups, has_avx512_vnni},
    {"avx2", avx2::dot_groups, has_avx2},
#endif
    {"generic", dot_groups_generic, always},
};

const Kernel* best_kernel() {
    for (const auto& k : kKernels)
        if (k.runs_here()) return &k;
    return &kKernels[std::size(kKernels) - 1];
}

std::atomic<const Kernel*> g_kernel{best_kernel()};

}  // namespace

void quant_pack_group(QuantType t, const uint8_t* ggml, int64_t rows, int64_t n, uint8_t* group) {
    const int64_t nb = n / kQuantBlock, bb = quant_block_bytes(t), qb = quant_bytes(t);
    std::memset(group, 0, quant_group_bytes(t, n));  // missing rows: zero scales and quants
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* src = ggml + (r * nb + b) * bb;
            const GroupBlock g(t, group, b);
            auto* base = const_cast<uint8_t*>(g.base);
            std::memcpy(base + g.scale(r), src, 2);
            if (t == QuantType::Q4_1) std::memcpy(base + g.minimum(r), src + 2, 2);
            for (int64_t j = 0; j < qb / 4; ++j) std::memcpy(base + g.word(j, r), src + bb - qb + 4 * j, 4);
        }
    }
}

void quant_unpack_group(QuantType t, const uint8_t* group, int64_t rows, int64_t n, uint8_t* ggml) {
    const int64_t nb = n / kQuantBlock, bb = quant_block_bytes(t), qb = quant_bytes(t);
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t* dst = ggml + (r * nb + b) * bb;
            const GroupBlock g(t, group, b);
            std::memcpy(dst, g.base + g.scale(r), 2);
            if (t == QuantType::Q4_1) std::memcpy(dst + 2, g.base + g.minimum(r), 2);
            for (int64_t j = 0; j < qb / 4; ++j) std::memcpy(dst + bb - qb + 4 * j, g.base + g.word(j, r), 4);
        }
    }
}

namespace {

// Blocks of 32 activations -> int8 (d = max|x| / 127), to nearest: adding and taking away 1.5 * 2^23
// rounds |v| <= 127 that way, and unlike rint it vectorizes. Where the add fuses with the multiply
// (FMA), the exact product is rounded, so a product within an ulp of a half may round the other way.
PROSPECT_SIMD_INLINE void quantize_blocks_body(const float* x, int64_t blocks, int8_t* q, float* d, int32_t* sum) {
    constexpr float kRound = 12582912.0f;
    for (int64_t b = 0; b < blocks; ++b, x += kQuantBlock, q += kQuantBlock) {
        const float amax = abs_max<Vec8f>(x, kQuantBlock);
        const float scale = amax / 127.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
        int32_t total = 0;
        for (int j = 0; j < kQuantBlock; ++j) {
            const auto v = static_cast<int32_t>((x[j] * inv + kRound) - kRound);
            q[j] = static_cast<int8_t>(v);
            total += v;
        }
        d[b] = scale;
        sum[b] = total;
    }
}

const auto quantize_blocks = simd_dispatch<quantize_blocks_body>();

}  // namespace

void QuantActs::quantize(const float* x, int64_t n_in, int64_t tokens_in) {
    n = n_in;
    tokens = tokens_in;
    const int64_t blocks = n / kQuantBlock * tokens;
    q.resize(static_cast<size_t>(n * tokens));
    d.resize(static_cast<size_t>(blocks));
    sum.resize(static_cast<size_t>(blocks));
    quantize_blocks(x, blocks, q.data(), d.data(), sum.data());
}

void quantize_row_q8_0(const float* w, int64_t n, uint8_t* out) {
    for (int64_t b = 0; b < n / kQuantBlock; ++b, w += kQuantBlock, out += 34) {
        float amax = 0;
        for (int j = 0; j < kQuantBlock; ++j) amax = std::max(amax, std::fabs(w[j]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        const uint16_t h = float_to_half(d);
        std::memcpy(out, &h, 2);
        for (int j = 0; j < kQuantBlock; ++j)
            out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(w[j] * id)));
    }
}

void dequantize_group_row(QuantType t, const uint8_t* group, int64_t r, int64_t n, float* out) {
    for (int64_t b = 0; b < n / kQuantBlock; ++b, out += kQuantBlock) {
        const GroupBlock g(t, group, b);
        const float d = half_at(g.base + g.scale(r)), m = t == QuantType::Q4_1 ? half_at(g.base + g.minimum(r)) : 0;
        for (int64_t e = 0; e < kQuantBlock; ++e) out[e] = d * static_cast<float>(quant_at(t, g, r, e)) + m;
    }
}

void quant_dot_groups(QuantType t, const uint8_t* w, int64_t groups, const QuantActs& x, float* y, int64_t y_stride,
                      int64_t rows) {
    g_kernel.load(std::memory_order_relaxed)->fn(t, w, groups, x, y, y_stride, rows);
}

const char* quant_kernel_name() { return g_kernel.load()->name; }

void quant_force_kernel(const char* name) {
    if (name == nullptr || *name == '\0') {
        g_kernel.store(best_kernel());
        return;
    }
    for (const auto& k : kKernels) {
        if (std::string(name) != k.name) continue;
        if (!k.runs_here()) throw std::invalid_argument(std::string("kernel '") + name + "' does not run on this CPU");
        g_kernel.store(&k);
        return;
    }
    throw std::invalid_argument(std::string("kernel expected one of avx512_vnni, avx2, generic, got '") + name + "'");
}

}  // namespace prospect
