#include "frame_preprocess.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <vector>

namespace prospect {

namespace {

double bicubic(double x) {
    constexpr double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

double sinc(double x) {
    if (x == 0.0) return 1.0;
    x *= M_PI;
    return std::sin(x) / x;
}

double lanczos(double x) { return (x > -3.0 && x < 3.0) ? sinc(x) * sinc(x / 3.0) : 0.0; }

// For each output index: the first input index and the normalised weights.
struct Taps {
    std::vector<int64_t> first;
    std::vector<int64_t> count;
    std::vector<double> weights;  // [out, max_count]
    int64_t max_count = 0;
};

Taps make_taps(int64_t in, int64_t out, ResampleFilter filter) {
    const double support_1 = filter == ResampleFilter::BICUBIC ? 2.0 : 3.0;
    const double scale = static_cast<double>(in) / static_cast<double>(out);
    const double filterscale = std::max(scale, 1.0);  // widen the kernel when shrinking: antialiasing
    const double support = support_1 * filterscale;
    Taps t;
    t.max_count = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
    t.first.resize(out);
    t.count.resize(out);
    t.weights.assign(out * t.max_count, 0.0);
    for (int64_t i = 0; i < out; ++i) {
        const double center = (i + 0.5) * scale;
        int64_t lo = static_cast<int64_t>(center - support + 0.5);
        int64_t hi = static_cast<int64_t>(center + support + 0.5);
        lo = std::max<int64_t>(lo, 0);
        hi = std::min<int64_t>(hi, in);
        const int64_t n = std::min(hi - lo, t.max_count);
        double total = 0;
        for (int64_t k = 0; k < n; ++k) {
            const double x = (k + lo - center + 0.5) / filterscale;
            const double w = filter == ResampleFilter::BICUBIC ? bicubic(x) : lanczos(x);
            t.weights[i * t.max_count + k] = w;
            total += w;
        }
        if (total != 0) {
            for (int64_t k = 0; k < n; ++k) t.weights[i * t.max_count + k] /= total;
        }
        t.first[i] = lo;
        t.count[i] = n;
    }
    return t;
}

inline uint8_t clip8(float v) {
    v = v < 0.f ? 0.f : (v > 255.f ? 255.f : v);
    return static_cast<uint8_t>(v + 0.5f);
}

// Vertical pass: each output row is a weighted sum of whole input rows (contiguous, vectorisable).
at::Tensor pass_vertical(const at::Tensor& src, int64_t out_h, ResampleFilter filter) {
    const int64_t H = src.size(0), W = src.size(1), C = src.size(2), rowlen = W * C;
    const auto t = make_taps(H, out_h, filter);
    const std::vector<float> wf(t.weights.begin(), t.weights.end());
    auto dst = at::empty({out_h, W, C}, src.options());
    const uint8_t* s = src.data_ptr<uint8_t>();
    uint8_t* d = dst.data_ptr<uint8_t>();
    at::parallel_for(0, out_h, 8, [&](int64_t y0, int64_t y1) {
        std::vector<float> acc(rowlen);
        for (int64_t y = y0; y < y1; ++y) {
            std::fill(acc.begin(), acc.end(), 0.f);
            const float* w = wf.data() + y * t.max_count;
            for (int64_t k = 0; k < t.count[y]; ++k) {
                const uint8_t* row = s + (t.first[y] + k) * rowlen;
                const float wk = w[k];
                float* a = acc.data();
                for (int64_t i = 0; i < rowlen; ++i) a[i] += wk * row[i];
            }
            uint8_t* o = d + y * rowlen;
            for (int64_t i = 0; i < rowlen; ++i) o[i] = clip8(acc[i]);
        }
    });
    return dst;
}

// Horizontal pass: each row is unpacked into one float plane per channel, so every output
// pixel is a dot product over contiguous floats.
at::Tensor pass_horizontal(const at::Tensor& src, int64_t out_w, ResampleFilter filter) {
    const int64_t H = src.size(0), W = src.size(1), C = src.size(2);
    const auto t = make_taps(W, out_w, filter);
    const std::vector<float> wf(t.weights.begin(), t.weights.end());
    auto dst = at::empty({H, out_w, C}, src.options());
    const uint8_t* s = src.data_ptr<uint8_t>();
    uint8_t* d = dst.data_ptr<uint8_t>();
    at::parallel_for(0, H, 16, [&](int64_t y0, int64_t y1) {
        std::vector<float> plane(C * W);
        for (int64_t y = y0; y < y1; ++y) {
            const uint8_t* row = s + y * W * C;
            for (int64_t x = 0; x < W; ++x)
                for (int64_t c = 0; c < C; ++c) plane[c * W + x] = row[x * C + c];
            for (int64_t c = 0; c < C; ++c) {
                const float* pc = plane.data() + c * W;
                for (int64_t xo = 0; xo < out_w; ++xo) {
                    const float* w = wf.data() + xo * t.max_count;
                    const float* p = pc + t.first[xo];
                    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;  // four partial sums: lets the loop vectorise
                    int64_t k = 0, n = t.count[xo];
                    for (; k + 4 <= n; k += 4) {
                        a0 += w[k] * p[k];
                        a1 += w[k + 1] * p[k + 1];
                        a2 += w[k + 2] * p[k + 2];
                        a3 += w[k + 3] * p[k + 3];
                    }
                    for (; k < n; ++k) a0 += w[k] * p[k];
                    d[(y * out_w + xo) * C + c] = clip8((a0 + a1) + (a2 + a3));
                }
            }
        }
    });
    return dst;
}

}  // namespace

ResampleFilter resample_filter_from_name(const std::string& name) {
    if (name == "bicubic") return ResampleFilter::BICUBIC;
    if (name == "lanczos") return ResampleFilter::LANCZOS;
    TORCH_CHECK_VALUE(false, "resample expected 'lanczos' or 'bicubic', got '", name, "'");
}

at::Tensor resize_antialias(const at::Tensor& img, int64_t out_h, int64_t out_w, ResampleFilter filter) {
    TORCH_CHECK_VALUE(img.dim() == 3 && img.size(0) > 0 && img.size(1) > 0 && img.size(2) > 0,
                      "resize: image expected [H, W, C] with H, W, C > 0, got shape ", img.sizes());
    TORCH_CHECK_TYPE(img.scalar_type() == at::kByte, "resize: image expected uint8, got ", img.scalar_type());
    TORCH_CHECK_VALUE(out_h > 0 && out_w > 0, "resize: output size expected > 0, got ", out_h, "x", out_w);
    auto x = img.cpu().contiguous();
    // Horizontal first, then vertical, each rounding to uint8, as PIL and torchvision do.
    if (out_w != x.size(1)) x = pass_horizontal(x, out_w, filter);
    if (out_h != x.size(0)) x = pass_vertical(x, out_h, filter);
    return x;
}

std::pair<int64_t, int64_t> longest_edge_size(int64_t h, int64_t w, int64_t longest_edge) {
    const double aspect = static_cast<double>(w) / static_cast<double>(h);
    int64_t oh, ow;
    if (w >= h) {
        ow = longest_edge;
        oh = static_cast<int64_t>(ow / aspect);
        if (oh % 2 != 0) ++oh;
    } else {
        oh = longest_edge;
        ow = static_cast<int64_t>(oh * aspect);
        if (ow % 2 != 0) ++ow;
    }
    return {std::max<int64_t>(oh, 1), std::max<int64_t>(ow, 1)};
}

at::Tensor preprocess_frame(const at::Tensor& img, int64_t longest_edge, int64_t image_size, std::array<double, 3> mean,
                            std::array<double, 3> std, ResampleFilter filter) {
    TORCH_CHECK_VALUE(img.dim() == 3 && img.size(2) == 3, "preprocess_frame: frame expected [H, W, 3], got shape ",
                      img.sizes());
    TORCH_CHECK_TYPE(img.scalar_type() == at::kByte, "preprocess_frame: frame expected uint8, got ", img.scalar_type());
    TORCH_CHECK_VALUE(img.size(0) > 0 && img.size(1) > 0, "preprocess_frame: frame expected a non-empty image, got ",
                      img.sizes());
    TORCH_CHECK_VALUE(longest_edge > 0 && image_size > 0, "preprocess_frame: sizes expected > 0, got longest_edge ",
                      longest_edge, ", image_size ", image_size);
    for (int c = 0; c < 3; ++c) TORCH_CHECK_VALUE(std[c] != 0, "preprocess_frame: std expected non-zero values");
    const auto [h1, w1] = longest_edge_size(img.size(0), img.size(1), longest_edge);
    auto x = resize_antialias(img, h1, w1, filter);
    x = resize_antialias(x, image_size, image_size, filter);
    // Rescale and normalise in one pass, HWC uint8 -> CHW float.
    auto out = at::empty({1, 1, 3, image_size, image_size}, at::kFloat);
    const int64_t n = image_size * image_size;
    const uint8_t* src = x.data_ptr<uint8_t>();
    float* dst = out.data_ptr<float>();
    for (int c = 0; c < 3; ++c) {
        const float scale = static_cast<float>(1.0 / (255.0 * std[c])), bias = static_cast<float>(-mean[c] / std[c]);
        float* o = dst + c * n;
        for (int64_t i = 0; i < n; ++i) o[i] = src[i * 3 + c] * scale + bias;
    }
    return out;
}

}  // namespace prospect
