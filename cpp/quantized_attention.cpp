#include "quantized_attention.h"

#include "simd.h"
#include "thread_pool.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace prospect {

namespace {

constexpr int64_t kMaxHeadDim = 64;  // the fused products' widest head

// Rows of n floats (row r at x + r * stride), less `center` (n floats) where given -> int8 q (rows x n,
// contiguous) and s[r] = max |row| / 127, so that row ~ q * s. Rounded to nearest by adding and taking
// away 1.5 * 2^23.
template <class V>
PROSPECT_SIMD_INLINE void quantize_rows(const float* x, int64_t rows, int64_t stride, int64_t n, const float* center,
                                        int8_t* q, float* s) {
    constexpr float kRound = 12582912.0f;
    std::vector<float> row(n);
    for (int64_t r = 0; r < rows; ++r, x += stride, q += n) {
        for (int64_t i = 0; i < n; ++i) row[i] = center ? x[i] - center[i] : x[i];
        const float top = abs_max<V>(row.data(), n);
        s[r] = top > 0.0f ? top / 127.0f : 1.0f;
        const float inv = 1.0f / s[r];
        for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>((row[i] * inv + kRound) - kRound);
    }
}

// One head's rows (S of them, hd floats each, `stride` floats apart) made ready for the products:
// queries -> int8 q8 with scales qs; keys less their mean -> int8 k8 with scales ks; values -> bf16 vb
// (rounded to nearest even), each S x hd contiguous.
template <class V>
PROSPECT_SIMD_INLINE void prepare_head_body(const float* q, const float* k, const float* v, int64_t S, int64_t hd,
                                            int64_t stride, int8_t* q8, float* qs, int8_t* k8, float* ks,
                                            uint16_t* vb) {
    // Any one vector would leave the softmax as it is; the mean leaves the keys smallest.
    std::vector<float> center(hd, 0.0f);
    for (int64_t s = 0; s < S; ++s) {
        for (int64_t d = 0; d < hd; ++d) center[d] += k[s * stride + d];
    }
    for (int64_t d = 0; d < hd; ++d) center[d] /= static_cast<float>(S);
    quantize_rows<V>(q, S, stride, hd, nullptr, q8, qs);
    quantize_rows<V>(k, S, stride, hd, center.data(), k8, ks);
    for (int64_t s = 0; s < S; ++s, v += stride, vb += hd) {
        for (int64_t d = 0; d < hd; ++d) vb[d] = float_to_bf16(v[d]);
    }
}

// Rows of n int32 scores (each query's int8 products with every key; rows `stride` apart in x and p)
// -> the softmax's numerators exp(t - max t) cut to bf16 into p, where t = x[j] * key_scale[j] *
// row_scale[r] (+ key_bias[j] if Masked: 0, or -inf for a padded key); inv[r] gets 1 / the sum of row
// r's cut weights, which the weighted sum is divided by afterwards, as flash attention does: cut rather
// than rounded, each weight is up to an ulp low, but the sum is of the same weights, so that bias
// divides out and what remains is noise of rounding's size. row_scale > 0. Padded keys get exactly 0;
// unmasked, weights below e^-87 are kept at that.
template <class V, bool Masked>
PROSPECT_SIMD_INLINE void exp_rows_body(const int32_t* x, int64_t rows, int64_t n, int64_t stride,
                                        const float* row_scale, const float* key_scale, const float* key_bias,
                                        uint16_t* p, float* inv) {
    using U = decltype(V{} < V{});
    constexpr int64_t W = sizeof(V) / sizeof(float);
    constexpr float kLow = -87.0f;  // exp_approx clamps below this; such keys are padded or weigh < 1e-37
    constexpr float kInf = std::numeric_limits<float>::infinity();
    const int64_t nw = n / W * W;
    // The score before the row's scale: the maximum is the same key's either way (f > 0).
    const auto score = [&](int64_t i) {
        const V v = __builtin_convertvector(loadv<U>(x + i), V) * loadv<V>(key_scale + i);
        if constexpr (Masked) return v + loadv<V>(key_bias + i);
        return v;
    };
    const auto score_at = [&](int64_t i) {
        return static_cast<float>(x[i]) * key_scale[i] + (Masked ? key_bias[i] : 0.0f);
    };
    for (int64_t r = 0; r < rows; ++r, x += stride, p += stride) {
        const float f = row_scale[r];
        V top = V{} - kInf;
        for (int64_t i = 0; i < nw; i += W) {
            const V v = score(i);
            top = v > top ? v : top;
        }
        float m = lanes_max(top);
        for (int64_t i = nw; i < n; ++i) m = std::max(m, score_at(i));
        const float shift = m == -kInf ? 0.0f : m * f;
        V sum{};
        for (int64_t i = 0; i < nw; i += W) {
            const V t = score(i) * f - shift;
            U b;
            if constexpr (Masked) {
                b = std::bit_cast<U>(t < kLow ? V{} : exp_approx<4>(t));
            } else {
                b = std::bit_cast<U>(exp_approx<4>(t));
            }
            sum += std::bit_cast<V>(b & ~0xFFFF);
            store_high_halves(p + i, b);
        }
        float total = lanes_sum(sum);
        for (int64_t i = nw; i < n; ++i) {
            const float t = score_at(i) * f - shift;
            p[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(t < kLow ? 0.0f : std::exp(t)) >> 16);
            total += bf16_to_float(p[i]);
        }
        inv[r] = total > 0 ? 1.0f / total : 0.0f;
    }
}

const auto prepare_head = simd_dispatch_wide<prepare_head_body<Vec16f>, prepare_head_body<Vec8f>>();
const auto exp_rows = simd_dispatch_wide<exp_rows_body<Vec16f, false>, exp_rows_body<Vec8f, false>>();
const auto exp_rows_masked = simd_dispatch_wide<exp_rows_body<Vec16f, true>, exp_rows_body<Vec8f, true>>();

// One call's operands, quantized, each head's rows contiguous: q8, k8 int8 [NH, S, hd] with scales qs, ks
// [NH, S]; vb bf16 [NH, S, hd]; bias [N, S] (0, or -inf for a padded key) where masked.
struct Prepared {
    at::Tensor q8, qs, k8, ks, vb, bias;
    int64_t N = 0, heads = 0, S = 0, hd = 0;
    int64_t NH() const { return N * heads; }
    // Where query row r of head h goes in the result [N, S, heads, hd].
    int64_t out_offset(int64_t h, int64_t r) const { return ((h / heads * S + r) * heads + h % heads) * hd; }
};

Prepared prepare(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const std::optional<at::Tensor>& key_mask) {
    Prepared p;
    p.N = q.size(0), p.heads = q.size(1), p.S = q.size(2), p.hd = q.size(3);
    const int64_t NH = p.NH(), S = p.S, hd = p.hd;
    const auto opts = q.options();
    // q, k, v as the qkv product's permuted views are: rows of hd contiguous, all three with one row stride.
    const bool views = q.stride(3) == 1 && k.strides() == q.strides() && v.strides() == q.strides();
    const auto qr = views ? q : q.contiguous(), kr = views ? k : k.contiguous(), vr = views ? v : v.contiguous();
    p.q8 = at::empty({NH, S, hd}, opts.dtype(at::kChar)), p.k8 = at::empty({NH, S, hd}, opts.dtype(at::kChar));
    p.qs = at::empty({NH, S}, opts), p.ks = at::empty({NH, S}, opts);
    p.vb = at::empty({NH, S, hd}, opts.dtype(at::kBFloat16));
    if (key_mask) {
        p.bias = at::zeros({p.N, S}, opts)
                     .masked_fill_(key_mask->logical_not().view({p.N, S}), -std::numeric_limits<float>::infinity());
    }
    aten_for(NH, 1, [&](int64_t h0, int64_t h1) {
        for (int64_t h = h0; h < h1; ++h) {
            const int64_t offset = h / p.heads * qr.stride(0) + h % p.heads * qr.stride(1);
            prepare_head(qr.data_ptr<float>() + offset, kr.data_ptr<float>() + offset, vr.data_ptr<float>() + offset, S,
                         hd, qr.stride(2), p.q8.data_ptr<int8_t>() + h * S * hd, p.qs.data_ptr<float>() + h * S,
                         p.k8.data_ptr<int8_t>() + h * S * hd, p.ks.data_ptr<float>() + h * S,
                         reinterpret_cast<uint16_t*>(p.vb.data_ptr<at::BFloat16>()) + h * S * hd);
        }
    });
    return p;
}

// The products in ATen's (oneDNN's) kernels: the scores by _int_mm, the weighted sum a bf16 mm, rounded to
// bf16 before it is divided by the weights' sum. One parallel region, a (head, block of 256 queries) per
// task, claimed one by one, each product single-threaded inside it: with another busy process on the
// cores, every region's closing barrier waits for a descheduled thread, and a region per product made 12
// a layer.
void products_aten(const Prepared& x, double scale, float* res) {
    constexpr int64_t kBlock = 256;
    const int64_t S = x.S, hd = x.hd, blocks = (S + kBlock - 1) / kBlock;
    const auto opts = x.qs.options();
    aten_for(x.NH() * blocks, 1, [&](int64_t t0, int64_t t1) {
        const int64_t rows = std::min(kBlock, S);
        auto scores = at::empty({rows, S}, opts.dtype(at::kInt));
        auto weights = at::empty({rows, S}, opts.dtype(at::kBFloat16));
        float row_scale[kBlock], inv[kBlock];
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t h = t / blocks, s0 = t % blocks * kBlock, n = std::min(kBlock, S - s0);
            auto sc = scores.narrow(0, 0, n);
            at::_int_mm_out(sc, x.q8[h].narrow(0, s0, n), x.k8[h].t());
            const float* pqs = x.qs.data_ptr<float>() + h * S + s0;
            for (int64_t r = 0; r < n; ++r) row_scale[r] = pqs[r] * static_cast<float>(scale);
            auto w = weights.narrow(0, 0, n);
            (x.bias.defined() ? exp_rows_masked : exp_rows)(
                sc.data_ptr<int32_t>(), n, S, S, row_scale, x.ks.data_ptr<float>() + h * S,
                x.bias.defined() ? x.bias.data_ptr<float>() + h / x.heads * S : nullptr,
                reinterpret_cast<uint16_t*>(w.data_ptr<at::BFloat16>()), inv);
            const auto o = at::mm(w, x.vb[h]);  // [n, hd] bf16, each row still to be divided by its sum
            const auto* po = reinterpret_cast<const uint16_t*>(o.data_ptr<at::BFloat16>());
            float* dst = res + x.out_offset(h, s0);
            for (int64_t r = 0; r < n; ++r, po += hd, dst += x.heads * hd) {
                for (int64_t j = 0; j < hd; ++j) dst[j] = bf16_to_float(po[j]) * inv[r];
            }
        }
    });
}

// ---- the fused products: VNNI scores, bf16 weighted sums (AVX512_VNNI and AVX512_BF16) -----------------
// A task is four queries of one head: their scores against every key (16 KB for 1,024 keys), the weights,
// and the weighted sums, while all of it is in L1 and the head's keys and values in L2. oneDNN's kernels
// ran these shapes (64 deep, or 64 wide) at about its bf16 rate, and the passes between them cost as much
// again.
#if defined(__x86_64__)
#define PROSPECT_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,fma")))

constexpr int64_t kRows = 4;   // queries a task: each tile of keys, or pair of value rows, loaded serves four
constexpr int64_t kTile = 16;  // keys a tile: one vector of scores

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// One head's operands in the layouts the products read, P = hd rounded up to 16 (zeros past hd add
// nothing), S16 = S rounded up to a whole tile:
//   qu [S][P]: the queries + 128, unsigned, as vpdpbusd multiplies unsigned bytes by signed ones;
//   kt [S16 / 16][P / 4][16][4]: a vector is 16 keys' next four dimensions; zero past S;
//   comp [S16]: 128 * each key's sum, which the +128 added to its scores;
//   kscale [S16]: the keys' scales; kbias [S16]: 0, or -inf for a padded key or one past S;
//   vp [S16 / 2][P][2]: a vector is 16 dimensions of two keys, vdpbf16ps's pairs; zero past S.
struct HeadLayout {
    uint8_t* qu;
    int8_t* kt;
    int32_t* comp;
    float *kscale, *kbias;
    uint16_t* vp;
};

// o's qu, kt and vp arrive filled as they are past hd and S (qu 128, kt and vp zero).
void lay_out_head(const Prepared& x, int64_t h, int64_t P, const HeadLayout& o) {
    const int64_t S = x.S, hd = x.hd, groups = P / 4, S16 = round_up(S, kTile);
    const int8_t* q8 = x.q8.data_ptr<int8_t>() + h * S * hd;
    const int8_t* k8 = x.k8.data_ptr<int8_t>() + h * S * hd;
    const auto* vb = reinterpret_cast<const uint16_t*>(x.vb.data_ptr<at::BFloat16>()) + h * S * hd;
    const float* ks = x.ks.data_ptr<float>() + h * S;
    const float* bias = x.bias.defined() ? x.bias.data_ptr<float>() + h / x.heads * S : nullptr;
    for (int64_t j = 0; j < S16; ++j) {
        const bool real = j < S;
        o.kscale[j] = real ? ks[j] : 0.0f;
        o.kbias[j] = !real ? -std::numeric_limits<float>::infinity() : bias ? bias[j] : 0.0f;
        o.comp[j] = 0;
        if (!real) continue;
        const int8_t* k = k8 + j * hd;
        int8_t row[kMaxHeadDim] = {};
        int32_t sum = 0;
        for (int64_t d = 0; d < hd; ++d) {
            o.qu[j * P + d] = static_cast<uint8_t>(q8[j * hd + d]) ^ 0x80;  // + 128
            row[d] = k[d];
            sum += k[d];
        }
        o.comp[j] = 128 * sum;
        int8_t* tile = o.kt + (j / kTile * groups * kTile + j % kTile) * 4;
        for (int64_t g = 0; g < groups; ++g) std::memcpy(tile + g * kTile * 4, row + 4 * g, 4);
    }
    for (int64_t j = 0; j < S; j += 2) {  // value rows in pairs, a missing second row zero
        const uint16_t* a = vb + j * hd;
        const uint16_t* b = j + 1 < S ? a + hd : nullptr;
        uint16_t* out = o.vp + j / 2 * P * 2;
        for (int64_t d = 0; d < hd; ++d) {
            out[2 * d] = a[d];
            out[2 * d + 1] = b ? b[d] : 0;
        }
    }
}

// The scores of kRows queries (q: their qu rows) against NT tiles of keys from key j, as floats (the int32
// sum less comp, times kscale, plus kbias) into s (rows `stride` apart), and each query's largest so far
// into top. Two tiles make eight sums in flight, each vpdpbusd waiting on its own last; Groups (of four
// dimensions) fixed at compile time keeps the sums in registers.
template <int Groups, int NT>
PROSPECT_VNNI_TARGET inline void score_tiles(const uint8_t* const* q, const HeadLayout& l, int64_t j, float* s,
                                             int64_t stride, Vec16f* top) {
    __m512i acc[NT][kRows];
    for (auto& row : acc) {
        for (auto& a : row) a = _mm512_setzero_si512();
    }
    const int8_t* tile = l.kt + j / kTile * Groups * kTile * 4;
#pragma GCC unroll 16
    for (int64_t g = 0; g < Groups; ++g) {
        __m512i k[NT];
        for (int t = 0; t < NT; ++t) k[t] = _mm512_loadu_si512(tile + (t * Groups + g) * kTile * 4);
        for (int64_t i = 0; i < kRows; ++i) {
            int32_t four;
            std::memcpy(&four, q[i] + 4 * g, sizeof four);
            const __m512i a = _mm512_set1_epi32(four);
            for (int t = 0; t < NT; ++t) acc[t][i] = _mm512_dpbusd_epi32(acc[t][i], a, k[t]);
        }
    }
    using I = decltype(Vec16f{} < Vec16f{});
    for (int t = 0; t < NT; ++t) {
        const int64_t at = j + t * kTile;
        const I c = loadv<I>(l.comp + at);
        const Vec16f scale = loadv<Vec16f>(l.kscale + at), bias = loadv<Vec16f>(l.kbias + at);
        for (int64_t i = 0; i < kRows; ++i) {
            const Vec16f v = __builtin_convertvector(std::bit_cast<I>(acc[t][i]) - c, Vec16f) * scale + bias;
            storev(s + i * stride + at, v);
            top[i] = v > top[i] ? v : top[i];
        }
    }
}

// A row of n scores (a multiple of 16) -> the softmax's numerators exp(f (s - max)), cut to bf16 into p; 0
// below e^-87, so padded keys weigh exactly 0. Returns 1 / the sum of the cut weights (0 if none), by which
// the weighted sum is divided after, as flash attention does: cut rather than rounded, each weight is up
// to an ulp low, but the sum is of the same weights, so that bias divides out. f > 0.
PROSPECT_VNNI_TARGET inline float weigh_row(const float* s, int64_t n, float f, Vec16f top, uint16_t* p) {
    using U = decltype(Vec16f{} < Vec16f{});
    const float m = lanes_max(top);
    const float shift = m == -std::numeric_limits<float>::infinity() ? 0.0f : m * f;
    Vec16f sum{};
    for (int64_t j = 0; j < n; j += 16) {
        const Vec16f t = loadv<Vec16f>(s + j) * f - shift;
        const U b = std::bit_cast<U>(t < -87.0f ? Vec16f{} : exp_approx<4>(t)) & ~0xFFFF;
        sum += std::bit_cast<Vec16f>(b);
        store_high_halves(p + j, b);
    }
    const float total = lanes_sum(sum);
    return total > 0 ? 1.0f / total : 0.0f;
}

// Rows i < n of out (out_stride apart), its first `cols` columns: inv[i] times the sum over the key pairs
// u < pairs of row i's two weights in p (rows `stride` apart) times vp's two value rows. NV: P / 16.
template <int NV>
PROSPECT_VNNI_TARGET inline void weigh_values(const uint16_t* p, int64_t stride, int64_t pairs, const uint16_t* vp,
                                              int64_t cols, const float* inv, int64_t n, float* out,
                                              int64_t out_stride) {
    constexpr int64_t P = NV * 16;
    __m512 acc[kRows][NV];
    for (auto& row : acc) {
        for (auto& a : row) a = _mm512_setzero_ps();
    }
    for (int64_t u = 0; u < pairs; ++u) {
        __m512i v[NV];
        for (int c = 0; c < NV; ++c) v[c] = _mm512_loadu_si512(vp + (u * P + c * 16) * 2);
        for (int64_t i = 0; i < kRows; ++i) {
            uint32_t w;
            std::memcpy(&w, p + i * stride + 2 * u, sizeof w);
            const auto b = (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
            for (int c = 0; c < NV; ++c) acc[i][c] = _mm512_dpbf16_ps(acc[i][c], (__m512bh)v[c], b);
        }
    }
    for (int64_t i = 0; i < n; ++i) {
        for (int c = 0; c < NV && c * 16 < cols; ++c) {
            const int64_t left = cols - c * 16;
            const auto mask = static_cast<__mmask16>(left >= 16 ? 0xFFFF : (1u << left) - 1);
            _mm512_mask_storeu_ps(out + i * out_stride + c * 16, mask, acc[i][c] * inv[i]);
        }
    }
}

// One task: queries rows[0..kRows) (n real) of a head laid out in l, over S16 keys; f: each query's scale
// times the softmax's; out as weigh_values. scores, weights: scratch [kRows, S16].
template <int Groups>
PROSPECT_VNNI_TARGET void attend_block(const uint8_t* const* rows, const float* f, int64_t n, const HeadLayout& l,
                                       int64_t S16, int64_t hd, float* scores, uint16_t* weights, float* out,
                                       int64_t out_stride) {
    Vec16f top[kRows];
    for (auto& t : top) t = Vec16f{} - std::numeric_limits<float>::infinity();
    int64_t j = 0;
    for (; j + kTile < S16; j += 2 * kTile) score_tiles<Groups, 2>(rows, l, j, scores, S16, top);
    if (j < S16) score_tiles<Groups, 1>(rows, l, j, scores, S16, top);
    float inv[kRows];
    for (int64_t i = 0; i < kRows; ++i) inv[i] = weigh_row(scores + i * S16, S16, f[i], top[i], weights + i * S16);
    weigh_values<Groups / 4>(weights, S16, S16 / 2, l.vp, hd, inv, n, out, out_stride);
}

void products_fused(const Prepared& x, double scale, float* res) {
    const int64_t NH = x.NH(), S = x.S, P = round_up(x.hd, 16), S16 = round_up(S, kTile);
    // Made filled as the layouts are past hd and S (lay_out_head writes the rest): queries 128, keys and
    // values zero.
    std::vector<uint8_t> qu(NH * S * P, 128);
    std::vector<int8_t> kt(NH * S16 * P);
    std::vector<int32_t> comp(NH * S16);
    std::vector<float> kscale(NH * S16), kbias(NH * S16);
    std::vector<uint16_t> vp(NH * S16 * P);
    const auto layout = [&](int64_t h) {
        return HeadLayout{qu.data() + h * S * P,   kt.data() + h * S16 * P, comp.data() + h * S16,
                          kscale.data() + h * S16, kbias.data() + h * S16,  vp.data() + h * S16 * P};
    };
    aten_for(NH, 1, [&](int64_t h0, int64_t h1) {
        for (int64_t h = h0; h < h1; ++h) lay_out_head(x, h, P, layout(h));
    });
    const auto attend = P == 64   ? attend_block<16>
                        : P == 48 ? attend_block<12>
                        : P == 32 ? attend_block<8>
                                  : attend_block<4>;
    const float* qs = x.qs.data_ptr<float>();
    const int64_t blocks = (S + kRows - 1) / kRows;
    aten_for(NH * blocks, 8, [&](int64_t t0, int64_t t1) {
        thread_local std::vector<float> scores;
        thread_local std::vector<uint16_t> weights;
        scores.resize(static_cast<size_t>(kRows * S16));
        weights.resize(static_cast<size_t>(kRows * S16));
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t h = t / blocks, r0 = t % blocks * kRows, n = std::min(kRows, S - r0);
            const HeadLayout l = layout(h);
            const uint8_t* rows[kRows];
            float f[kRows];
            for (int64_t i = 0; i < kRows; ++i) {
                const int64_t r = r0 + std::min(i, n - 1);  // a short block repeats its last query, unused
                rows[i] = l.qu + r * P;
                f[i] = qs[h * S + r] * static_cast<float>(scale);
            }
            attend(rows, f, n, l, S16, x.hd, scores.data(), weights.data(), res + x.out_offset(h, r0), x.heads * x.hd);
        }
    });
}
#endif

}  // namespace

bool quantized_attention_fused() {
#if defined(__x86_64__)
    static const bool cpu = [] {
        __builtin_cpu_init();
        return cpu_has_bf16_dot() && __builtin_cpu_supports("avx512vnni");
    }();
    return cpu;
#else
    return false;
#endif
}

at::Tensor quantized_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& key_mask, double scale, bool fused) {
    TORCH_CHECK_VALUE(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                      "quantized_attention expected q, k, v of one shape [N, heads, S, hd], got ", q.sizes(), ", ",
                      k.sizes(), ", ", v.sizes());
    TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                          q.is_cpu() && k.is_cpu() && v.is_cpu(),
                      "quantized_attention expected fp32 q, k, v on the CPU, got ", q.scalar_type(), ", ",
                      k.scalar_type(), ", ", v.scalar_type(), " on ", q.device());
    TORCH_CHECK_VALUE(scale > 0, "quantized_attention expected scale > 0, got ", scale);
    const int64_t N = q.size(0), S = q.size(2);
    TORCH_CHECK_VALUE(
        !key_mask || (key_mask->scalar_type() == at::kBool && key_mask->sizes() == at::IntArrayRef{N, 1, 1, S}),
        "quantized_attention expected key_mask bool [", N, ", 1, 1, ", S, "] (true: a key to attend to), got ",
        key_mask ? key_mask->scalar_type() : at::kBool, " ", key_mask ? key_mask->sizes() : at::IntArrayRef{});
    TORCH_CHECK_VALUE(!fused || quantized_attention_fused(),
                      "quantized_attention: fused=True expected a CPU with AVX512_VNNI and AVX512_BF16; this one "
                      "lacks them");
    const bool fits = q.size(3) <= kMaxHeadDim;  // the fused kernels hold a row's sums in registers
    const Prepared x = prepare(q, k, v, key_mask);
    auto result = at::empty({N, S, q.size(1), q.size(3)}, q.options());
#if defined(__x86_64__)
    if (fused && fits) {
        products_fused(x, scale, result.data_ptr<float>());
        return result;
    }
#endif
    products_aten(x, scale, result.data_ptr<float>());
    return result;
}

}  // namespace prospect
