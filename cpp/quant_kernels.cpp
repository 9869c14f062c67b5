#include "quant_kernels.h"

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

// Where a row's parts start (quant_kernels.h): quants, scales, minimums.
struct RowParts {
    const uint8_t *q, *d, *m;
    RowParts(QuantType t, const uint8_t* row, int64_t nb)
        : q(row), d(row + nb * (t == QuantType::Q8_0 ? 32 : 16)), m(d + 2 * nb) {}
};

float dot_row(QuantType t, const uint8_t* row, const int8_t* xq, const float* xd, const float* xs, int64_t nb) {
    const RowParts p(t, row, nb);
    float acc = 0;
    for (int64_t b = 0; b < nb; ++b, xq += kQuantBlock) {
        int32_t s = 0;
        if (t == QuantType::Q8_0) {
            const auto* q = reinterpret_cast<const int8_t*>(p.q) + b * kQuantBlock;
            for (int j = 0; j < kQuantBlock; ++j) s += q[j] * xq[j];
            acc += half_at(p.d + 2 * b) * xd[b] * static_cast<float>(s);
        } else {
            const uint8_t* q = p.q + b * 16;
            for (int j = 0; j < 16; ++j) s += (q[j] & 0x0F) * xq[j] + (q[j] >> 4) * xq[j + 16];
            acc += half_at(p.d + 2 * b) * xd[b] * static_cast<float>(s) + half_at(p.m + 2 * b) * xs[b];
        }
    }
    return acc;
}

void dot_rows_generic(QuantType t, const uint8_t* w, int64_t row_bytes, int64_t rows, const QuantActs& x, float* y,
                      int64_t y_stride) {
    const int64_t nb = x.n / kQuantBlock;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < x.tokens; ++k)
            y[k * y_stride + r] =
                dot_row(t, w + r * row_bytes, x.q.data() + k * x.n, x.d.data() + k * nb, x.s.data() + k * nb, nb);
}

}  // namespace

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define PROSPECT_QK_NS avx2
#define PROSPECT_QK_DOT32(u, s) _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
#include "quant_kernels_x86.inc"
#undef PROSPECT_QK_NS
#undef PROSPECT_QK_DOT32
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")
#define PROSPECT_QK_NS avx512_vnni
#define PROSPECT_QK_DOT32(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
#include "quant_kernels_x86.inc"
#undef PROSPECT_QK_NS
#undef PROSPECT_QK_DOT32
#pragma GCC pop_options
#endif

namespace {

using DotRows = void (*)(QuantType, const uint8_t*, int64_t, int64_t, const QuantActs&, float*, int64_t);

struct Kernel {
    const char* name;
    DotRows fn;
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
           __builtin_cpu_supports("avx512vnni");
}
#endif

// Best first.
const Kernel kKernels[] = {
#if defined(__x86_64__)
    {"avx512_vnni", avx512_vnni::dot_rows, has_avx512_vnni},
    {"avx2", avx2::dot_rows, has_avx2},
#endif
    {"generic", dot_rows_generic, always},
};

const Kernel* best_kernel() {
    for (const auto& k : kKernels)
        if (k.runs_here()) return &k;
    return &kKernels[std::size(kKernels) - 1];
}

std::atomic<const Kernel*> g_kernel{best_kernel()};

}  // namespace

void quant_row_from_ggml(QuantType t, const uint8_t* ggml, int64_t n, uint8_t* row) {
    const int64_t nb = n / kQuantBlock, bytes = quant_block_bytes(t), qbytes = t == QuantType::Q8_0 ? 32 : 16;
    uint8_t *q = row, *d = row + nb * qbytes, *m = d + 2 * nb;
    for (int64_t b = 0; b < nb; ++b, ggml += bytes) {
        std::memcpy(d + 2 * b, ggml, 2);
        if (t == QuantType::Q4_1) std::memcpy(m + 2 * b, ggml + 2, 2);
        std::memcpy(q + b * qbytes, ggml + bytes - qbytes, qbytes);
    }
}

void quant_row_to_ggml(QuantType t, const uint8_t* row, int64_t n, uint8_t* ggml) {
    const int64_t nb = n / kQuantBlock, bytes = quant_block_bytes(t), qbytes = t == QuantType::Q8_0 ? 32 : 16;
    const RowParts p(t, row, nb);
    for (int64_t b = 0; b < nb; ++b, ggml += bytes) {
        std::memcpy(ggml, p.d + 2 * b, 2);
        if (t == QuantType::Q4_1) std::memcpy(ggml + 2, p.m + 2 * b, 2);
        std::memcpy(ggml + bytes - qbytes, p.q + b * qbytes, qbytes);
    }
}

void QuantActs::quantize(const float* x, int64_t n_in, int64_t tokens_in) {
    n = n_in;
    tokens = tokens_in;
    const int64_t blocks = n / kQuantBlock * tokens;
    q.resize(static_cast<size_t>(n * tokens));
    d.resize(static_cast<size_t>(blocks));
    s.resize(static_cast<size_t>(blocks));
    for (int64_t b = 0; b < blocks; ++b, x += kQuantBlock) {
        float amax = 0;
        for (int j = 0; j < kQuantBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float scale = amax / 127.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
        int8_t* out = q.data() + b * kQuantBlock;
        int32_t sum = 0;
        for (int j = 0; j < kQuantBlock; ++j) {
            out[j] = static_cast<int8_t>(std::nearbyint(x[j] * inv));
            sum += out[j];
        }
        d[b] = scale;
        s[b] = scale * static_cast<float>(sum);
    }
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

void dequantize_row(QuantType t, const uint8_t* row, int64_t n, float* out) {
    const int64_t nb = n / kQuantBlock;
    const RowParts p(t, row, nb);
    for (int64_t b = 0; b < nb; ++b, out += kQuantBlock) {
        const float d = half_at(p.d + 2 * b);
        if (t == QuantType::Q8_0) {
            for (int j = 0; j < kQuantBlock; ++j) out[j] = d * static_cast<int8_t>(p.q[b * 32 + j]);
        } else {
            const float m = half_at(p.m + 2 * b);
            for (int j = 0; j < 16; ++j) {
                out[j] = d * (p.q[b * 16 + j] & 0x0F) + m;
                out[j + 16] = d * (p.q[b * 16 + j] >> 4) + m;
            }
        }
    }
}

void quant_dot_rows(QuantType t, const uint8_t* w, int64_t row_bytes, int64_t rows, const QuantActs& x, float* y,
                    int64_t y_stride) {
    g_kernel.load(std::memory_order_relaxed)->fn(t, w, row_bytes, rows, x, y, y_stride);
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
