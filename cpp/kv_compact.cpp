#include "kv_compact.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstring>

namespace prospect {

namespace {

// Bounce buffer size for short moves on non-memmove paths, in tokens.
constexpr int64_t BOUNCE_TOKENS = 256;

void move_memmove(const at::Tensor& t, const TokenMove& m) {
    // [B, H, T, D] with rows of D contiguous and consecutive along T.
    const int64_t B = t.size(0), H = t.size(1), D = t.size(3);
    const int64_t es = t.element_size();
    const int64_t sb = t.stride(0) * es, sh = t.stride(1) * es, st = t.stride(2) * es;
    auto* base = static_cast<char*>(t.data_ptr());
    const size_t bytes = static_cast<size_t>(m.len * D * es);
    at::parallel_for(0, B * H, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
            char* row = base + (r / H) * sb + (r % H) * sh;
            std::memmove(row + m.dst * st, row + m.src * st, bytes);
        }
    });
}

void move_chunked(const at::Tensor& t, const TokenMove& m, at::Tensor& bounce) {
    const int64_t gap = m.src - m.dst;
    if (gap >= m.len) {
        t.narrow(2, m.dst, m.len).copy_(t.narrow(2, m.src, m.len));
        return;
    }
    if (gap >= BOUNCE_TOKENS) {
        // Chunks of `gap` tokens: each destination ends where its source begins.
        for (int64_t off = 0; off < m.len; off += gap) {
            const int64_t n = std::min(gap, m.len - off);
            t.narrow(2, m.dst + off, n).copy_(t.narrow(2, m.src + off, n));
        }
        return;
    }
    // A short gap would mean many tiny copies: go through a bounce buffer of up to BOUNCE_TOKENS
    // tokens for a group of rows, at most 1/256 of the tensor (surgery must stay in place).
    const int64_t B = t.size(0), H = t.size(1), row = t.size(3) * t.element_size();
    const int64_t budget = std::max<int64_t>(t.numel() * t.element_size() / 256, 16 << 10);
    const int64_t n = std::clamp<int64_t>(budget / (B * row), 1, std::min(BOUNCE_TOKENS, m.len));
    const int64_t g = std::clamp<int64_t>(budget / (B * n * row), 1, H);
    if (!bounce.defined() || bounce.size(1) < g || bounce.size(2) < n) {
        bounce = at::empty({B, g, n, t.size(3)}, t.options());
    }
    for (int64_t h0 = 0; h0 < H; h0 += g) {
        const int64_t gh = std::min(g, H - h0);
        auto rows = t.narrow(1, h0, gh);
        for (int64_t off = 0; off < m.len; off += n) {
            const int64_t c = std::min(n, m.len - off);
            auto b = bounce.narrow(1, 0, gh).narrow(2, 0, c);
            b.copy_(rows.narrow(2, m.src + off, c));
            rows.narrow(2, m.dst + off, c).copy_(b);
        }
    }
}

}  // namespace

std::vector<TokenMove> kv_compact_plan(const std::vector<std::pair<int64_t, int64_t>>& kept) {
    std::vector<TokenMove> moves;
    int64_t cursor = 0;
    for (const auto& [start, end] : kept) {
        const int64_t len = end - start;
        if (len <= 0) continue;
        if (start != cursor) {
            if (!moves.empty() && moves.back().src + moves.back().len == start &&
                moves.back().dst + moves.back().len == cursor) {
                moves.back().len += len;
            } else {
                moves.push_back({start, cursor, len});
            }
        }
        cursor += len;
    }
    return moves;
}

void check_kv_compact(const at::Tensor& t) {
    TORCH_CHECK_TYPE(t.defined(), "kv_compact_: tensor expected, got None");
    TORCH_CHECK_VALUE(t.dim() == 4, "kv_compact_: tensor expected [B, H, T, D], got shape ", t.sizes());
    TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes,
                      "kv_compact_: tensor expected elements that do not overlap, got an expanded view with strides ",
                      t.strides());
}

void kv_compact_(const at::Tensor& t, const std::vector<TokenMove>& moves) {
    check_kv_compact(t);
    const int64_t T = t.size(2);
    int64_t last_src = -1;
    for (const auto& m : moves) {
        TORCH_CHECK_VALUE(m.len >= 0 && m.dst >= 0 && m.dst <= m.src && m.src + m.len <= T,
                          "kv_compact_: move {src=", m.src, ", dst=", m.dst, ", len=", m.len,
                          "} expected 0 <= dst <= src and src + len <= ", T);
        TORCH_CHECK_VALUE(m.src > last_src, "kv_compact_: moves expected sorted by src");
        last_src = m.src;
    }
    const bool rows_packed = t.is_cpu() && t.stride(3) == 1 && t.stride(2) == t.size(3);
    c10::InferenceMode guard;
    at::Tensor bounce;
    for (const auto& m : moves) {
        if (m.len == 0 || m.src == m.dst) continue;
        if (rows_packed) {
            move_memmove(t, m);
        } else {
            move_chunked(t, m, bounce);
        }
    }
}

}  // namespace prospect
