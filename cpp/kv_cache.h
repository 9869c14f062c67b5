// A preallocated KV cache with a span ledger, and in-place cache surgery.
//
// Storage is one tensor [L, 2, B, Hkv, capacity, D] allocated at construction;
// appends write into it and surgery moves data inside it, so keys(l) and
// values(l) always view the same memory. Every appended range of tokens is a
// span (a frame, a user turn, a reply, ...); surgery removes whole spans only,
// so a frame's image tokens are never cut in half.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace prospect {

enum class SpanKind : int8_t {
    SYSTEM,
    USER,
    ASSISTANT,
    FRAME,
    SUMMARY,
    OTHER,
};

// "keep": survivors keep their positions and next_position keeps counting.
// "shift": survivors are re-rotated to contiguous positions 0..length-1.
// "length": survivors keep their rotations, but the next token takes position
//   `length`, as transformers assigns positions from the cache length.
enum class PositionMode : int8_t {
    KEEP,
    SHIFT,
    LENGTH,
};

const char* span_kind_name(SpanKind kind);
SpanKind span_kind_from_name(const std::string& name);          // throws ValueError
PositionMode position_mode_from_name(const std::string& name);  // throws ValueError

struct Span {
    int64_t id;  // stable for the span's life, never reused
    SpanKind kind;
    std::optional<int64_t> frame_index;
    int64_t start;  // slots [start, end) in the cache
    int64_t end;
    int64_t first_position;  // RoPE position of the slot `start`
    bool pinned;

    int64_t size() const { return end - start; }
};

class KVCache {
public:
    // A cache serves one stream at a time. A thread that is running the model on it (which
    // releases the GIL) holds it; any call from another thread meanwhile raises RuntimeError
    // instead of racing. Different caches may be used from different threads at once.
    class UseGuard {
    public:
        explicit UseGuard(const KVCache& c);
        ~UseGuard();
        UseGuard(const UseGuard&) = delete;
        UseGuard& operator=(const UseGuard&) = delete;

    private:
        const KVCache& c_;
        bool nested_ = false;
    };

    KVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, int64_t capacity,
            at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU, int64_t batch = 1,
            double rope_theta = 10000.0);

    // One [B, Hkv, T, D] tensor per layer; keys already rotated at positions
    // next_position .. next_position + T - 1. Returns the new span's id.
    int64_t append(const std::vector<at::Tensor>& keys, const std::vector<at::Tensor>& values,
                   SpanKind kind = SpanKind::OTHER, std::optional<int64_t> frame_index = std::nullopt);

    // The engine's path: write one layer's T new tokens at slot `length`
    // (nothing is visible yet), then commit them as a span once all layers are written.
    void write(int64_t layer, const at::Tensor& keys, const at::Tensor& values);
    int64_t commit(int64_t tokens, SpanKind kind, std::optional<int64_t> frame_index = std::nullopt);
    // Grow the last span by `tokens` already written (decode steps of one reply).
    void commit_extend(int64_t tokens);
    // For an engine that writes all layers straight into storage(): `tokens` are now written.
    void note_written(int64_t tokens);
    // Forget tokens written but not committed (a forward pass that failed midway).
    void discard_pending() { written_ = 0; }

    // Views [B, Hkv, length, D] on the storage.
    at::Tensor keys(int64_t layer) const;
    at::Tensor values(int64_t layer) const;
    // Views [B, Hkv, capacity, D]: where the engine writes before commit.
    at::Tensor key_buffer(int64_t layer) const;
    at::Tensor value_buffer(int64_t layer) const;

    const std::vector<Span>& spans() const { return spans_; }
    const Span& span(int64_t span_id) const;  // throws IndexError
    void pin(int64_t span_id, bool pinned = true);

    // Surgery, in place. Each returns the number of tokens dropped.
    int64_t drop_all(bool keep_pinned = false, PositionMode mode = PositionMode::SHIFT);
    int64_t drop_middle(int64_t keep_last_tokens, PositionMode mode = PositionMode::SHIFT);
    int64_t drop_spans(const std::vector<int64_t>& span_ids, PositionMode mode = PositionMode::SHIFT);
    // Token-exact: drops slots [start, end). A span cut by the range is shortened, or split in two
    // (the second part gets a new id); the one place besides truncate where spans are cut.
    int64_t drop_range(int64_t start, int64_t end, PositionMode mode = PositionMode::SHIFT);
    // Rollback: cut from the end. The one operation that may shorten a span
    // (the last one kept), since a rollback removes the newest tokens.
    int64_t truncate(int64_t length);

    int64_t num_layers() const { return L_; }
    int64_t num_kv_heads() const { return H_; }
    int64_t head_dim() const { return D_; }
    int64_t batch() const { return B_; }
    int64_t capacity() const { return capacity_; }
    int64_t length() const { return length_; }
    int64_t next_position() const { return next_position_; }
    double rope_theta() const { return rope_theta_; }
    at::ScalarType dtype() const { return storage_.scalar_type(); }
    at::Device device() const { return storage_.device(); }
    const at::Tensor& storage() const { return storage_; }  // [L, 2, B, Hkv, capacity, D]

    KVCache(KVCache&& o) noexcept;
    KVCache(const KVCache&) = delete;
    KVCache& operator=(const KVCache&) = delete;

    int64_t nbytes() const;          // bytes of the filled part
    int64_t capacity_bytes() const;  // bytes allocated

private:
    void check_layer(int64_t layer, const char* who) const;
    void check_written(int64_t tokens, const char* who) const;
    void check_kv(const at::Tensor& t, const char* who, const char* arg, int64_t tokens) const;
    // Keeps the spans at the given ledger indices (ascending), compacts, re-rotates.
    int64_t keep_only(const std::vector<size_t>& keep, PositionMode mode);
    // Keeps these pieces of spans (ascending, disjoint slot ranges with their positions), compacts, re-rotates.
    int64_t keep_pieces(std::vector<Span> pieces, PositionMode mode);

    int64_t L_, H_, D_, B_, capacity_;
    double rope_theta_;
    at::Tensor storage_;
    std::vector<Span> spans_;
    int64_t length_ = 0;
    int64_t written_ = 0;  // tokens written past length_ by write(), not yet committed
    int64_t next_position_ = 0;
    int64_t next_span_id_ = 0;
    mutable std::atomic<std::thread::id> owner_{};
};

}  // namespace prospect
