// Large products in int8, for the vision tower: a 512 px frame is 1,024 patches through 12 layers,
// about 176 GFLOP of products, compute-bound. int8 dot products (vpmaddubsw on AVX2, VNNI or AMX
// where present) do two to four times the work of fp32 FMAs per cycle. The GEMM is oneDNN's, reached
// through ATen's onednn::qlinear_* operators: weights int8 per output row, symmetric; activations
// int8 per row (per patch), symmetric, scaled on every call. oneDNN takes one activation scale per
// tensor, so rows go in with scale 1 (as uint8, zero point 128) and each row's scale is applied to
// its results after, in the pass that adds the bias. Without VNNI, oneDNN multiplies with
// vpmaddubsw, whose int16 pair sums saturate past 32767: there weights keep 7 bits (|q| <= 63), so
// 2 * 255 * 63 fits.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace prospect {

struct Int8Gemm {
    at::Tensor packed;  // int8 [in, out] in oneDNN's layout
    at::Tensor scale;   // fp32 [out]: weight = scale * int8
    at::Tensor zero;    // int64 [out], zeros (symmetric)
    at::Tensor bias;    // fp32 [out], or undefined
    int64_t in = 0, out = 0;

    bool defined() const { return packed.defined(); }
    int64_t nbytes() const { return in * out + out * 4; }  // the int8 weight and its scales (bias not counted)
};

// Whether this libtorch has the oneDNN operators (x86 and ARM wheels do).
bool int8_gemm_available();

// The largest |quantized weight| on this CPU: 127 with VNNI (or not x86), else 63.
int int8_gemm_weight_max();

// w fp32 [out, in] (and bias [out] or undefined) -> int8, packed for inputs of about `rows` rows.
// Throws ValueError if the operators are missing or w is not fp32 2-D on the CPU.
Int8Gemm pack_int8_gemm(const at::Tensor& w, const at::Tensor& bias, int64_t rows);

// x fp32 [M, in] on the CPU -> x w^T + bias, fp32 [M, out].
at::Tensor int8_gemm(const at::Tensor& x, const Int8Gemm& g);
// x fp32 [M, in] on the CPU -> gelu_tanh(x w^T + bias), fp32 [M, out]: the GELU in the pass that scales
// each row, while the row is in cache.
at::Tensor int8_gemm_gelu(const at::Tensor& x, const Int8Gemm& g);

// into [M, out] (fp32, contiguous) += x w^T + bias: a residual add in the same pass.
void int8_gemm_add(const at::Tensor& x, const Int8Gemm& g, at::Tensor& into);

}  // namespace prospect
