#include "decode_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>

namespace prospect::cuda_kernels {

namespace {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
    return __float2half(x);
}

// x rounded to T and back: what a tensor of dtype T holds after an op.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
    return to_f(from_f<T>(x));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block; every thread gets the result. blockDim.x is a multiple of 32, at most 1024.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // part may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < warps ? part[lane] : 0.f;
    return warp_sum(v);
}

Status status() {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

constexpr int kThreads = 256;

template <typename T>
__global__ void add_rms_norm_kernel(T* x, const T* delta, const T* w, T* out, int n, float eps) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = to_f(x[i]);
        if (delta) {
            v = round_to<T>(v + to_f(delta[i]));
            x[i] = from_f<T>(v);
        }
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = from_f<T>(to_f(w[i]) * round_to<T>(to_f(x[i]) * r));
}

template <typename T>
__global__ void rope_write_kv_kernel(RopeKvArgs a) {
    const int hd = a.head_dim, half = hd / 2;
    const int64_t len = a.state[1];
    const float pos = static_cast<float>(a.state[2]);
    T* qkv = static_cast<T*>(a.qkv);
    T* keys = static_cast<T*>(a.keys);
    T* values = static_cast<T*>(a.values);
    // One thread per (head, pair): q heads first, then k heads; v heads are copied.
    const int pairs = (a.heads + a.kv_heads) * half;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < pairs + a.kv_heads * hd; t += gridDim.x * blockDim.x) {
        if (t >= pairs) {
            const int v = t - pairs, h = v / hd, d = v % hd;
            values[(h * a.capacity + len) * hd + d] = qkv[(a.heads + a.kv_heads + h) * hd + d];
            continue;
        }
        const int h = t / half, j = t % half;
        T* row = qkv + h * hd;
        const float f = pos * a.inv_freq[j];
        const float c = round_to<T>(cosf(f)), s = round_to<T>(sinf(f));
        const float x1 = to_f(row[j]), x2 = to_f(row[j + half]);
        // q*cos + rotate_half(q)*sin, each product rounded: rotate_half(x) = [-x2, x1].
        const T y1 = from_f<T>(round_to<T>(x1 * c) + round_to<T>(-x2 * s));
        const T y2 = from_f<T>(round_to<T>(x2 * c) + round_to<T>(x1 * s));
        if (h < a.heads) {
            row[j] = y1;
            row[j + half] = y2;
        } else {
            T* k = keys + ((h - a.heads) * a.capacity + len) * hd;
            k[j] = y1;
            k[j + half] = y2;
        }
    }
}

constexpr int kMaxLanes = 8;  // head_dim up to 256

// One block per (head, split of `chunk` keys): an online softmax per warp, merged in shared memory.
template <typename T>
__global__ void attention_partial_kernel(AttentionArgs a, int splits) {
    const int head = blockIdx.x, split = blockIdx.y, hd = a.head_dim;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int64_t n = a.state[1] + 1;
    const int64_t start = static_cast<int64_t>(split) * a.chunk;
    const int64_t end = min(start + a.chunk, n);
    const int kvh = head / (a.heads / a.kv_heads);
    const T* q = static_cast<const T*>(a.q) + head * hd;
    const T* K = static_cast<const T*>(a.keys) + kvh * a.capacity * hd;
    const T* V = static_cast<const T*>(a.values) + kvh * a.capacity * hd;

    float qr[kMaxLanes], acc[kMaxLanes];
#pragma unroll
    for (int i = 0; i < kMaxLanes; ++i) {
        const int d = lane + 32 * i;
        qr[i] = d < hd ? to_f(q[d]) : 0.f;
        acc[i] = 0.f;
    }
    float m = -FLT_MAX, l = 0.f;
    for (int64_t j = start + warp; j < end; j += warps) {
        const T* k = K + j * hd;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < kMaxLanes; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) s += qr[i] * to_f(k[d]);
        }
        s = warp_sum(s) * a.scale;
        const float m2 = fmaxf(m, s), c = expf(m - m2), p = expf(s - m2);
        l = l * c + p;
        const T* v = V + j * hd;
#pragma unroll
        for (int i = 0; i < kMaxLanes; ++i) {
            const int d = lane + 32 * i;
            if (d < hd) acc[i] = acc[i] * c + p * to_f(v[d]);
        }
        m = m2;
    }

    __shared__ float sm[32], sl[32];
    extern __shared__ float sacc[];  // [warps, hd]
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < kMaxLanes; ++i) {
        const int d = lane + 32 * i;
        if (d < hd) sacc[warp * hd + d] = acc[i];
    }
    __syncthreads();
    float M = -FLT_MAX;
    for (int w = 0; w < warps; ++w)
        if (sl[w] > 0.f) M = fmaxf(M, sm[w]);
    float* out = a.partial + (static_cast<int64_t>(head) * splits + split) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.f;
        for (int w = 0; w < warps; ++w)
            if (sl[w] > 0.f) sum += sacc[w * hd + d] * expf(sm[w] - M);
        out[2 + d] = sum;
    }
    if (threadIdx.x == 0) {
        float L = 0.f;
        for (int w = 0; w < warps; ++w)
            if (sl[w] > 0.f) L += sl[w] * expf(sm[w] - M);
        out[0] = M;
        out[1] = L;
    }
}

// One block per head: merges the splits' partial softmaxes.
template <typename T>
__global__ void attention_merge_kernel(AttentionArgs a, int splits) {
    const int head = blockIdx.x, hd = a.head_dim;
    const float* part = a.partial + static_cast<int64_t>(head) * splits * (hd + 2);
    const int64_t n = a.state[1] + 1;
    const int used = static_cast<int>((n + a.chunk - 1) / a.chunk);
    float M = -FLT_MAX;
    for (int s = 0; s < used; ++s)
        if (part[s * (hd + 2) + 1] > 0.f) M = fmaxf(M, part[s * (hd + 2)]);
    float L = 0.f;
    for (int s = 0; s < used; ++s) {
        const float* p = part + s * (hd + 2);
        if (p[1] > 0.f) L += p[1] * expf(p[0] - M);
    }
    T* out = static_cast<T*>(a.out) + head * hd;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.f;
        for (int s = 0; s < used; ++s) {
            const float* p = part + s * (hd + 2);
            if (p[1] > 0.f) sum += p[2 + d] * expf(p[0] - M);
        }
        out[d] = from_f<T>(sum / L);
    }
}

template <typename T>
__global__ void silu_mul_kernel(const T* gu, T* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float g = to_f(gu[i]);
        out[i] = from_f<T>(round_to<T>(g / (1.f + expf(-g))) * to_f(gu[n + i]));
    }
}

template <typename T>
__global__ void argmax_advance_kernel(const T* logits, int64_t n, int64_t* state) {
    float best = -INFINITY;
    int64_t idx = n;  // no index yet
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = to_f(logits[i]);
        if (v > best || (idx == n && v == best) || (v != v && best == best)) {  // NaN counts as the maximum
            best = v;
            idx = i;
        }
    }
    __shared__ float sv[1024];
    __shared__ int64_t si[1024];
    sv[threadIdx.x] = best;
    si[threadIdx.x] = idx;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if (threadIdx.x < o) {
            const float v = sv[threadIdx.x + o];
            const int64_t j = si[threadIdx.x + o];
            const float b = sv[threadIdx.x];
            const bool nan_v = v != v, nan_b = b != b;
            const bool take = (nan_v && !nan_b) || (nan_v == nan_b && (v > b || (v == b && j < si[threadIdx.x])));
            if (take) {
                sv[threadIdx.x] = v;
                si[threadIdx.x] = j;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        state[0] = si[0] < n ? si[0] : 0;
        state[1] += 1;
        state[2] += 1;
    }
}

template <typename T>
__global__ void rope_shift_kernel(RopeShiftArgs a) {
    const int64_t h = a.head_dim / 2, total = a.batch * a.heads * a.tokens * h;
    T* keys = static_cast<T*>(a.keys);
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = idx % h, r = idx / h, t = r % a.tokens, bh = r / a.tokens;
        T* x = keys + (bh / a.heads) * a.stride_b + (bh % a.heads) * a.stride_h + t * a.stride_t;
        const int64_t row = a.per_token ? t * h : 0;
        const float c = a.cos[row + i], s = a.sin[row + i];
        const float x1 = to_f(x[i]), x2 = to_f(x[i + h]);
        x[i] = from_f<T>(x1 * c - x2 * s);
        x[i + h] = from_f<T>(x2 * c + x1 * s);
    }
}

constexpr int kGemvMaxK = 12288;  // x in shared memory as fp32: 48 KiB

template <typename T>
__global__ void gemv_kernel(const T* w, const T* x, T* y, int n, int k) {
    constexpr int kVec = 16 / sizeof(T);
    __shared__ float xs[kGemvMaxK];
    for (int i = threadIdx.x; i < k; i += blockDim.x) xs[i] = to_f(x[i]);
    __syncthreads();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    for (int row = blockIdx.x * warps + warp; row < n; row += gridDim.x * warps) {
        const T* wr = w + static_cast<int64_t>(row) * k;
        float acc = 0.f;
#pragma unroll 4
        for (int c = lane * kVec; c < k; c += 32 * kVec) {
            const uint4 v = __ldg(reinterpret_cast<const uint4*>(wr + c));
            const T* e = reinterpret_cast<const T*>(&v);
#pragma unroll
            for (int j = 0; j < kVec; ++j) acc += to_f(e[j]) * xs[c + j];
        }
        acc = warp_sum(acc);
        if (lane == 0) y[row] = from_f<T>(acc);
    }
}

template <typename F>
Status dispatch(Dtype dtype, F&& f) {
    switch (dtype) {
        case Dtype::F32: f(float{}); break;
        case Dtype::BF16: f(__nv_bfloat16{}); break;
        case Dtype::F16: f(__half{}); break;
    }
    return status();
}

int splits_of(int64_t capacity, int chunk) { return static_cast<int>((capacity + chunk - 1) / chunk); }

}  // namespace

Status add_rms_norm(Dtype dtype, void* x, const void* delta, const void* w, void* out, int n, float eps, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        add_rms_norm_kernel<T><<<1, 1024, 0, static_cast<cudaStream_t>(stream)>>>(
            static_cast<T*>(x), static_cast<const T*>(delta), static_cast<const T*>(w), static_cast<T*>(out), n, eps);
    });
}

Status rope_write_kv(Dtype dtype, const RopeKvArgs& a, void* stream) {
    const int work = (a.heads + a.kv_heads) * (a.head_dim / 2) + a.kv_heads * a.head_dim;
    const int blocks = (work + kThreads - 1) / kThreads;
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        rope_write_kv_kernel<T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
    });
}

int64_t attention_scratch(int heads, int head_dim, int64_t capacity, int chunk) {
    return static_cast<int64_t>(heads) * splits_of(capacity, chunk) * (head_dim + 2);
}

Status attention(Dtype dtype, const AttentionArgs& a, void* stream) {
    if (a.head_dim > 32 * kMaxLanes || a.heads % a.kv_heads != 0) return "attention: unsupported head shape";
    const int splits = splits_of(a.capacity, a.chunk);
    constexpr int kWarps = 4;
    const size_t shared = sizeof(float) * kWarps * a.head_dim;
    auto s = static_cast<cudaStream_t>(stream);
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        attention_partial_kernel<T><<<dim3(a.heads, splits), 32 * kWarps, shared, s>>>(a, splits);
        attention_merge_kernel<T><<<a.heads, 128, 0, s>>>(a, splits);
    });
}

Status silu_mul(Dtype dtype, const void* gate_up, void* out, int n, void* stream) {
    const int blocks = (n + kThreads - 1) / kThreads;
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        silu_mul_kernel<T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(gate_up),
                                                                                       static_cast<T*>(out), n);
    });
}

Status argmax_advance(Dtype dtype, const void* logits, int64_t n, int64_t* state, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        argmax_advance_kernel<T>
            <<<1, 1024, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(logits), n, state);
    });
}

bool gemv_fits(Dtype dtype, int k) {
    const int vec = dtype == Dtype::F32 ? 4 : 8;
    return k % vec == 0 && k <= kGemvMaxK;
}

Status gemv(Dtype dtype, const void* w, const void* x, void* y, int n, int k, int blocks, void* stream) {
    if (!gemv_fits(dtype, k)) return "gemv: unsupported k";
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        gemv_kernel<T><<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(
            static_cast<const T*>(w), static_cast<const T*>(x), static_cast<T*>(y), n, k);
    });
}

Status rope_shift(Dtype dtype, const RopeShiftArgs& a, void* stream) {
    const int64_t total = a.batch * a.heads * a.tokens * (a.head_dim / 2);
    if (total == 0) return nullptr;
    const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        rope_shift_kernel<T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
    });
}

}  // namespace prospect::cuda_kernels
