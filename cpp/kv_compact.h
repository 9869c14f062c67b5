// In-place moves of token blocks inside a preallocated [B, H, T, D] buffer.
//
// Compacting a cache moves kept blocks toward the front of the same storage.
// Source and destination overlap whenever a block moves by less than its
// length, and at::Tensor::copy_ refuses partial overlap, so the moves live here.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace prospect {

// Move `len` tokens from slot `src` to slot `dst` along dim 2 (dst <= src).
struct TokenMove {
    int64_t src;
    int64_t dst;
    int64_t len;
};

// Applies the moves in order. They must move leftward and be sorted by src, as
// a compaction's are, so no move overwrites a block that has yet to move.
// CPU tensors with contiguous [T, D] rows use memmove; anything else (CUDA,
// other strides) uses non-overlapping chunked copies through a small bounce
// buffer, so the extra memory stays a few MB whatever the cache size.
void kv_compact_(const at::Tensor& t, const std::vector<TokenMove>& moves);
// What kv_compact_ checks of the tensor, for callers that check every layer before moving any.
void check_kv_compact(const at::Tensor& t);

// The moves that turn the kept [start, end) ranges (sorted, disjoint) into one
// contiguous prefix; adjacent ranges merge into one move.
std::vector<TokenMove> kv_compact_plan(const std::vector<std::pair<int64_t, int64_t>>& kept);

}  // namespace prospect
