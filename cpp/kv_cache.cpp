#include "kv_cache.h"

#include "kv_compact.h"
#include "rope.h"

#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <unordered_set>

namespace prospect {

namespace {

constexpr const char* SPAN_KIND_NAMES[] = {"system", "user", "assistant", "frame", "summary", "other"};

}  // namespace

const char* span_kind_name(SpanKind kind) { return SPAN_KIND_NAMES[static_cast<int>(kind)]; }

SpanKind span_kind_from_name(const std::string& name) {
    for (int i = 0; i <= static_cast<int>(SpanKind::OTHER); ++i) {
        if (name == SPAN_KIND_NAMES[i]) return static_cast<SpanKind>(i);
    }
    TORCH_CHECK_VALUE(false, "kind expected one of system, user, assistant, frame, summary, other; got '", name, "'");
}

PositionMode position_mode_from_name(const std::string& name) {
    if (name == "keep") return PositionMode::KEEP;
    if (name == "shift") return PositionMode::SHIFT;
    if (name == "length") return PositionMode::LENGTH;
    TORCH_CHECK_VALUE(false, "position_mode expected 'shift', 'keep' or 'length', got '", name, "'");
}

KVCache::KVCache(int64_t num_layers, int64_t num_kv_heads, int64_t head_dim, int64_t capacity, at::ScalarType dtype,
                 at::Device device, int64_t batch, double rope_theta)
    : L_(num_layers), H_(num_kv_heads), D_(head_dim), B_(batch), capacity_(capacity), rope_theta_(rope_theta) {
    TORCH_CHECK_VALUE(num_layers > 0, "KVCache: num_layers expected > 0, got ", num_layers);
    TORCH_CHECK_VALUE(num_kv_heads > 0, "KVCache: num_kv_heads expected > 0, got ", num_kv_heads);
    TORCH_CHECK_VALUE(head_dim > 0 && head_dim % 2 == 0, "KVCache: head_dim expected a positive even number, got ",
                      head_dim);
    TORCH_CHECK_VALUE(capacity > 0, "KVCache: capacity expected > 0, got ", capacity);
    TORCH_CHECK_VALUE(batch > 0, "KVCache: batch expected > 0, got ", batch);
    TORCH_CHECK_VALUE(rope_theta > 0, "KVCache: rope_theta expected > 0, got ", rope_theta);
    TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble,
                     "KVCache: dtype expected float32, float16, bfloat16 or float64 ",
                     "(what RoPE re-rotation supports), got ", dtype);
    // "cpu:7" would silently mean the one CPU; "meta" holds no data to cut.
    TORCH_CHECK_VALUE((device.is_cpu() && (!device.has_index() || device.index() == 0)) || device.is_cuda(),
                      "KVCache: device expected 'cpu' or 'cuda[:N]', got '", device.str(), "'");
    storage_ = at::zeros({L_, 2, B_, H_, capacity_, D_}, at::TensorOptions().dtype(dtype).device(device));
}

KVCache::UseGuard::UseGuard(const KVCache& c) : c_(c) {
    std::thread::id expected{};
    const auto me = std::this_thread::get_id();
    if (!c.owner_.compare_exchange_strong(expected, me)) {
        TORCH_CHECK(expected == me, "KVCache is in use by another thread: one stream per cache at a time "
                                    "(give each thread its own cache)");
        nested_ = true;
    }
}

KVCache::UseGuard::~UseGuard() {
    if (!nested_) c_.owner_.store(std::thread::id{});
}

KVCache::KVCache(KVCache&& o) noexcept
    : L_(o.L_), H_(o.H_), D_(o.D_), B_(o.B_), capacity_(o.capacity_), rope_theta_(o.rope_theta_),
      storage_(std::move(o.storage_)), spans_(std::move(o.spans_)), length_(o.length_), written_(o.written_),
      next_position_(o.next_position_), next_span_id_(o.next_span_id_) {}

void KVCache::check_layer(int64_t layer, const char* who) const {
    TORCH_CHECK_INDEX(layer >= 0 && layer < L_, who, ": layer expected in [0, ", L_, "), got ", layer);
}

void KVCache::check_kv(const at::Tensor& t, const char* who, const char* arg, int64_t tokens) const {
    TORCH_CHECK_TYPE(t.defined(), who, ": ", arg, " expected a tensor, got None");
    TORCH_CHECK_VALUE(
        t.dim() == 4 && t.size(0) == B_ && t.size(1) == H_ && t.size(3) == D_ && (tokens < 0 || t.size(2) == tokens),
        who, ": ", arg, " expected shape [", B_, ", ", H_, ", ", tokens < 0 ? "T" : std::to_string(tokens), ", ", D_,
        "] (batch, kv heads, tokens, head_dim), got ", t.sizes());
    TORCH_CHECK_TYPE(t.scalar_type() == dtype(), who, ": ", arg, " expected dtype ", dtype(), ", got ",
                     t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == device(), who, ": ", arg, " expected device ", device(), ", got ", t.device());
}

int64_t KVCache::append(const std::vector<at::Tensor>& keys, const std::vector<at::Tensor>& values, SpanKind kind,
                        std::optional<int64_t> frame_index) {
    UseGuard g(*this);
    TORCH_CHECK_VALUE(static_cast<int64_t>(keys.size()) == L_, "KVCache.append: keys expected one tensor per layer (",
                      L_, "), got ", keys.size());
    TORCH_CHECK_VALUE(static_cast<int64_t>(values.size()) == L_,
                      "KVCache.append: values expected one tensor per layer (", L_, "), got ", values.size());
    TORCH_CHECK_VALUE(written_ == 0, "KVCache.append: ", written_, " tokens were written but not committed");
    const int64_t T = keys[0].defined() && keys[0].dim() == 4 ? keys[0].size(2) : -1;
    for (int64_t l = 0; l < L_; ++l) {
        const std::string k = "keys[" + std::to_string(l) + "]", v = "values[" + std::to_string(l) + "]";
        check_kv(keys[l], "KVCache.append", k.c_str(), T);
        check_kv(values[l], "KVCache.append", v.c_str(), T);
    }
    TORCH_CHECK_VALUE(T > 0, "KVCache.append: keys expected at least one token, got 0");
    TORCH_CHECK_VALUE(length_ + T <= capacity_, "KVCache.append: ", T, " tokens at length ", length_,
                      " exceed capacity ", capacity_);
    for (int64_t l = 0; l < L_; ++l) write(l, keys[l], values[l]);
    return commit(T, kind, frame_index);
}

void KVCache::write(int64_t layer, const at::Tensor& keys, const at::Tensor& values) {
    UseGuard g(*this);
    check_layer(layer, "KVCache.write");
    check_kv(keys, "KVCache.write", "keys", -1);
    check_kv(values, "KVCache.write", "values", keys.size(2));
    const int64_t T = keys.size(2);
    TORCH_CHECK_VALUE(written_ == 0 || written_ == T, "KVCache.write: every layer expected the same ", written_,
                      " new tokens before commit, got ", T);
    TORCH_CHECK_VALUE(length_ + T <= capacity_, "KVCache.write: ", T, " tokens at length ", length_,
                      " exceed capacity ", capacity_);
    c10::InferenceMode guard;  // in place even on tensors made under torch.inference_mode()
    key_buffer(layer).narrow(2, length_, T).copy_(keys);
    value_buffer(layer).narrow(2, length_, T).copy_(values);
    written_ = T;
}

void KVCache::check_written(int64_t tokens, const char* who) const {
    // Committing slots nobody wrote would make stale data from an earlier stream visible.
    TORCH_CHECK_VALUE(written_ > 0 && tokens == written_, who, ": tokens expected the ", written_,
                      " tokens written since the last commit (write() every layer first), got ", tokens);
}

void KVCache::note_written(int64_t tokens) {
    TORCH_CHECK_VALUE(tokens > 0 && length_ + tokens <= capacity_, "KVCache.note_written: tokens expected in [1, ",
                      capacity_ - length_, "], got ", tokens);
    written_ = tokens;
}

int64_t KVCache::commit(int64_t tokens, SpanKind kind, std::optional<int64_t> frame_index) {
    UseGuard g(*this);
    check_written(tokens, "KVCache.commit");
    spans_.push_back({next_span_id_++, kind, frame_index, length_, length_ + tokens, next_position_, false});
    length_ += tokens;
    next_position_ += tokens;
    written_ = 0;
    return spans_.back().id;
}

void KVCache::commit_extend(int64_t tokens) {
    UseGuard g(*this);
    TORCH_CHECK_VALUE(!spans_.empty(), "KVCache.commit_extend: the cache has no span to extend");
    check_written(tokens, "KVCache.commit_extend");
    spans_.back().end += tokens;
    length_ += tokens;
    next_position_ += tokens;
    written_ = 0;
}

at::Tensor KVCache::key_buffer(int64_t layer) const {
    check_layer(layer, "KVCache.keys");
    return storage_.select(0, layer).select(0, 0);  // [B, Hkv, capacity, D]
}

at::Tensor KVCache::value_buffer(int64_t layer) const {
    check_layer(layer, "KVCache.values");
    return storage_.select(0, layer).select(0, 1);
}

at::Tensor KVCache::keys(int64_t layer) const { return key_buffer(layer).narrow(2, 0, length_); }
at::Tensor KVCache::values(int64_t layer) const { return value_buffer(layer).narrow(2, 0, length_); }

const Span& KVCache::span(int64_t span_id) const {
    for (const auto& s : spans_) {
        if (s.id == span_id) return s;
    }
    TORCH_CHECK_INDEX(false, "span_id ", span_id, " is not a live span of this cache");
}

void KVCache::pin(int64_t span_id, bool pinned) {
    UseGuard g(*this);
    const_cast<Span&>(span(span_id)).pinned = pinned;
}

int64_t KVCache::keep_only(const std::vector<size_t>& keep, PositionMode mode) {
    std::vector<Span> pieces;
    pieces.reserve(keep.size());
    for (size_t i : keep) pieces.push_back(spans_[i]);
    return keep_pieces(std::move(pieces), mode);
}

int64_t KVCache::keep_pieces(std::vector<Span> kept, PositionMode mode) {
    UseGuard g(*this);
    c10::InferenceMode guard;
    const int64_t before = length_;
    std::vector<std::pair<int64_t, int64_t>> ranges;
    ranges.reserve(kept.size());
    for (const auto& s : kept) ranges.emplace_back(s.start, s.end);

    // All layers' keys and values at once: [1, L*2*B*Hkv, capacity, D] (storage is contiguous).
    kv_compact_(storage_.view({1, L_ * 2 * B_ * H_, capacity_, D_}), kv_compact_plan(ranges));

    int64_t cursor = 0;
    for (auto& s : kept) {
        s.end = cursor + s.size();
        s.start = cursor;
        cursor = s.end;
    }

    if (mode == PositionMode::SHIFT) {
        // Re-rotate runs of adjacent survivors that move by the same delta.
        size_t i = 0;
        while (i < kept.size()) {
            const int64_t delta = kept[i].start - kept[i].first_position;
            size_t j = i + 1;
            while (j < kept.size() && kept[j].start - kept[j].first_position == delta) ++j;
            if (delta != 0) {
                const int64_t start = kept[i].start, len = kept[j - 1].end - start;
                for (int64_t l = 0; l < L_; ++l) {
                    rope_shift_(key_buffer(l).narrow(2, start, len), delta, rope_theta_);
                }
            }
            i = j;
        }
        for (auto& s : kept) s.first_position = s.start;
        next_position_ = cursor;
    } else if (mode == PositionMode::LENGTH) {
        next_position_ = cursor;
    }
    spans_ = std::move(kept);
    length_ = cursor;
    return before - length_;
}

int64_t KVCache::drop_all(bool keep_pinned, PositionMode mode) {
    std::vector<size_t> keep;
    if (keep_pinned) {
        for (size_t i = 0; i < spans_.size(); ++i) {
            if (spans_[i].pinned) keep.push_back(i);
        }
    }
    return keep_only(keep, mode);
}

int64_t KVCache::drop_middle(int64_t keep_last_tokens, PositionMode mode) {
    TORCH_CHECK_VALUE(keep_last_tokens >= 0, "KVCache.drop_middle: keep_last_tokens expected >= 0, got ",
                      keep_last_tokens);
    // Newest unpinned spans, whole, while they fit; stop at the first that does not.
    std::vector<bool> kept(spans_.size(), false);
    int64_t budget = keep_last_tokens;
    for (size_t i = spans_.size(); i-- > 0;) {
        if (spans_[i].pinned) continue;
        if (spans_[i].size() > budget) break;
        budget -= spans_[i].size();
        kept[i] = true;
    }
    std::vector<size_t> keep;
    for (size_t i = 0; i < spans_.size(); ++i) {
        if (kept[i] || spans_[i].pinned) keep.push_back(i);
    }
    return keep_only(keep, mode);
}

int64_t KVCache::drop_spans(const std::vector<int64_t>& span_ids, PositionMode mode) {
    std::unordered_set<int64_t> drop;
    for (int64_t id : span_ids) {
        span(id);  // throws for an unknown id before anything moves
        drop.insert(id);
    }
    std::vector<size_t> keep;
    for (size_t i = 0; i < spans_.size(); ++i) {
        if (!drop.count(spans_[i].id)) keep.push_back(i);
    }
    return keep_only(keep, mode);
}

int64_t KVCache::drop_range(int64_t start, int64_t end, PositionMode mode) {
    TORCH_CHECK_VALUE(0 <= start && start <= end && end <= length_,
                      "KVCache.drop_range: expected 0 <= start <= end <= ", length_, " (the cache length), got start ",
                      start, ", end ", end);
    if (start == end) return 0;  // nothing to cut: no span is split, no position moves
    std::vector<Span> pieces;
    for (const auto& s : spans_) {
        if (s.end <= start || s.start >= end) {
            pieces.push_back(s);
            continue;
        }
        if (s.start < start) {  // the head of a span the range cuts
            Span head = s;
            head.end = start;
            pieces.push_back(head);
        }
        if (s.end > end) {  // its tail: a new span if the head survived too
            Span tail = s;
            tail.first_position = s.first_position + (end - s.start);
            tail.start = end;
            if (s.start < start) tail.id = next_span_id_++;
            pieces.push_back(tail);
        }
    }
    return keep_pieces(std::move(pieces), mode);
}

int64_t KVCache::truncate(int64_t length) {
    UseGuard g(*this);
    TORCH_CHECK_VALUE(length >= 0 && length <= length_, "KVCache.truncate: length expected in [0, ", length_, "], got ",
                      length);
    const int64_t dropped = length_ - length;
    if (dropped == 0) return 0;
    // Spans tile [0, length_): the one holding slot `length` gives its position.
    for (const auto& s : spans_) {
        if (s.start <= length && length < s.end) next_position_ = s.first_position + (length - s.start);
    }
    while (!spans_.empty() && spans_.back().start >= length) spans_.pop_back();
    if (!spans_.empty() && spans_.back().end > length) spans_.back().end = length;
    length_ = length;
    written_ = 0;
    return dropped;
}

int64_t KVCache::nbytes() const { return L_ * 2 * B_ * H_ * length_ * D_ * storage_.element_size(); }
int64_t KVCache::capacity_bytes() const { return storage_.numel() * storage_.element_size(); }

}  // namespace prospect
