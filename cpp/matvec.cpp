#include "matvec.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace prospect {

namespace {

typedef float v8 __attribute__((vector_size(32), aligned(4)));  // unaligned loads are fine

// Built twice, for AVX2 + FMA and for the baseline ISA; the loader picks one at run time.
__attribute__((target_clones("arch=haswell", "default"))) void rows_dot(const float* w, const float* x, float* y,
                                                                        int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r) {
        const float* a = w + r * n;
        v8 s0 = {}, s1 = {}, s2 = {}, s3 = {};
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
            s0 += *reinterpret_cast<const v8*>(a + i) * *reinterpret_cast<const v8*>(x + i);
            s1 += *reinterpret_cast<const v8*>(a + i + 8) * *reinterpret_cast<const v8*>(x + i + 8);
            s2 += *reinterpret_cast<const v8*>(a + i + 16) * *reinterpret_cast<const v8*>(x + i + 16);
            s3 += *reinterpret_cast<const v8*>(a + i + 24) * *reinterpret_cast<const v8*>(x + i + 24);
        }
        v8 s = (s0 + s1) + (s2 + s3);
        float acc = 0;
        for (int k = 0; k < 8; ++k) acc += s[k];
        for (; i < n; ++i) acc += a[i] * x[i];
        y[r] = acc;
    }
}

}  // namespace

at::Tensor linear(const at::Tensor& x, const at::Tensor& w) {
    const int64_t n = w.size(1);
    if (!(x.is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat && x.numel() == n &&
          w.is_contiguous())) {
        return at::linear(x, w);
    }
    auto xc = x.contiguous();
    auto sizes = x.sizes().vec();
    sizes.back() = w.size(0);
    auto y = at::empty(sizes, x.options());
    const float* wp = w.data_ptr<float>();
    const float* xp = xc.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    // Threads only pay off once a chunk holds enough bytes to amortise waking them.
    const int64_t grain = std::max<int64_t>(64, (1 << 16) / std::max<int64_t>(n, 1));
    at::parallel_for(0, w.size(0), grain, [&](int64_t r0, int64_t r1) { rows_dot(wp + r0 * n, xp, yp + r0, r1 - r0, n); });
    return y;
}

}  // namespace prospect
