// Video frames to SmolVLM2 pixel_values, as transformers' SmolVLM2 video
// processor makes them: resize the longest edge to `longest_edge` (aspect kept,
// the short side rounded up to even), resize to image_size x image_size, then
// rescale by 1/255 and normalise. Resizing is separable and antialiased (the
// kernel widens when shrinking), with uint8 rounding after each pass.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <string>
#include <utility>

namespace prospect {

enum class ResampleFilter : int8_t {
    BICUBIC,  // Keys cubic, a = -0.5
    LANCZOS,  // Lanczos, a = 3
};

ResampleFilter resample_filter_from_name(const std::string& name);  // throws ValueError

// img [H, W, C] uint8 -> [out_h, out_w, C] uint8.
at::Tensor resize_antialias(const at::Tensor& img, int64_t out_h, int64_t out_w, ResampleFilter filter);

// The processor's first resize: longest edge to `longest_edge`, the other side
// int(scaled) and then rounded up to an even number.
std::pair<int64_t, int64_t> longest_edge_size(int64_t h, int64_t w, int64_t longest_edge);

// img [H, W, 3] uint8 RGB -> pixel_values [1, 1, 3, image_size, image_size] float32.
at::Tensor preprocess_frame(const at::Tensor& img, int64_t longest_edge, int64_t image_size, std::array<double, 3> mean,
                            std::array<double, 3> std, ResampleFilter filter);

}  // namespace prospect
