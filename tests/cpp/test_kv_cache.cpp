// KVCache, in-place compaction and RoPE shifts on small caches with known contents.
#include <gtest/gtest.h>

#include "joint_embed.h"
#include "kv_cache.h"
#include "kv_compact.h"
#include "rope.h"

#include <ATen/ATen.h>

#include <vector>

using namespace prospect;

namespace {

constexpr int64_t L = 2, H = 2, D = 4;

// Every element of token slot t encodes (layer, kv, head, t-th appended token, d):
// value = 1000 * tag + 100 * layer + 10 * kv + head + d / 10, tag = the token's
// original index, so a kept token can be recognised wherever it moves.
at::Tensor tokens(int64_t layer, int64_t kv, int64_t first_tag, int64_t n) {
    auto t = at::empty({1, H, n, D}, at::kFloat);
    auto a = t.accessor<float, 4>();
    for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < n; ++i)
            for (int64_t d = 0; d < D; ++d)
                a[0][h][i][d] = 1000.f * (first_tag + i) + 100.f * layer + 10.f * kv + h + d / 10.f;
    return t;
}

int64_t append_tagged(KVCache& c, int64_t first_tag, int64_t n, SpanKind kind = SpanKind::FRAME) {
    std::vector<at::Tensor> k, v;
    for (int64_t l = 0; l < L; ++l) {
        k.push_back(tokens(l, 0, first_tag, n));
        v.push_back(tokens(l, 1, first_tag, n));
    }
    return c.append(k, v, kind);
}

// Checks that the cache holds exactly the tokens with these tags, in order.
void expect_tags(const KVCache& c, const std::vector<int64_t>& tags) {
    ASSERT_EQ(c.length(), static_cast<int64_t>(tags.size()));
    for (int64_t l = 0; l < L; ++l) {
        auto k = c.keys(l), v = c.values(l);
        for (size_t i = 0; i < tags.size(); ++i) {
            EXPECT_TRUE(at::equal(k.narrow(2, i, 1), tokens(l, 0, tags[i], 1))) << "layer " << l << " key slot " << i;
            EXPECT_TRUE(at::equal(v.narrow(2, i, 1), tokens(l, 1, tags[i], 1))) << "layer " << l << " value slot " << i;
        }
    }
}

std::vector<int64_t> range(int64_t a, int64_t b) {
    std::vector<int64_t> r;
    for (int64_t i = a; i < b; ++i) r.push_back(i);
    return r;
}

std::vector<int64_t> concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

}  // namespace

TEST(KVCache, AppendWritesInPlaceAndRecordsSpans) {
    KVCache c(L, H, D, 32);
    void* ptr = c.storage().data_ptr();
    const int64_t a = append_tagged(c, 0, 3, SpanKind::SYSTEM);
    const int64_t b = append_tagged(c, 3, 5);
    EXPECT_EQ(a, 0);
    EXPECT_EQ(b, 1);
    expect_tags(c, range(0, 8));
    ASSERT_EQ(c.spans().size(), 2u);
    EXPECT_EQ(c.spans()[1].start, 3);
    EXPECT_EQ(c.spans()[1].end, 8);
    EXPECT_EQ(c.spans()[1].first_position, 3);
    EXPECT_EQ(c.next_position(), 8);
    EXPECT_EQ(c.keys(0).data_ptr(), ptr);
    EXPECT_EQ(c.nbytes(), L * 2 * H * 8 * D * 4);
    EXPECT_EQ(c.capacity_bytes(), L * 2 * H * 32 * D * 4);
}

TEST(KVCache, AppendPastCapacityThrowsAndLeavesCacheIntact) {
    KVCache c(L, H, D, 8);
    append_tagged(c, 0, 6);
    EXPECT_THROW(append_tagged(c, 6, 3), c10::ValueError);
    expect_tags(c, range(0, 6));
    EXPECT_EQ(c.spans().size(), 1u);
    append_tagged(c, 6, 2);
    expect_tags(c, range(0, 8));
}

TEST(KVCache, AppendRejectsWrongShapeDtypeAndLayerCount) {
    KVCache c(L, H, D, 8);
    std::vector<at::Tensor> k = {tokens(0, 0, 0, 2), tokens(1, 0, 0, 2)};
    std::vector<at::Tensor> v = {tokens(0, 1, 0, 2), tokens(1, 1, 0, 2)};
    auto bad = k;
    bad[1] = at::zeros({1, H + 1, 2, D});
    EXPECT_THROW(c.append(bad, v), c10::ValueError);
    bad[1] = tokens(1, 0, 0, 2).to(at::kDouble);
    EXPECT_THROW(c.append(bad, v), c10::TypeError);
    EXPECT_THROW(c.append({k[0]}, v), c10::ValueError);
    EXPECT_EQ(c.length(), 0);
    c.append(k, v);
    EXPECT_EQ(c.length(), 2);
}

TEST(KVCache, DropMiddleKeepsPinnedAndNewestWholeSpans) {
    KVCache c(L, H, D, 64);
    void* ptr = c.storage().data_ptr();
    const int64_t sys = append_tagged(c, 0, 4, SpanKind::SYSTEM);
    c.pin(sys);
    for (int64_t f = 0; f < 5; ++f) append_tagged(c, 4 + 6 * f, 6);  // frames of 6 tokens: tags 4..33
    // 13 tokens fit two whole frames (12), not a third; never half a frame.
    const int64_t dropped = c.drop_middle(13, PositionMode::KEEP);
    EXPECT_EQ(dropped, 18);
    expect_tags(c, concat(range(0, 4), range(22, 34)));
    ASSERT_EQ(c.spans().size(), 3u);
    EXPECT_TRUE(c.spans()[0].pinned);
    EXPECT_EQ(c.spans()[1].start, 4);
    EXPECT_EQ(c.spans()[1].first_position, 22);  // keep mode: positions unchanged
    EXPECT_EQ(c.next_position(), 34);
    EXPECT_EQ(c.storage().data_ptr(), ptr);
    EXPECT_EQ(c.keys(0).data_ptr(), ptr);
}

TEST(KVCache, DropSpansRemovesExactlyThoseSpans) {
    KVCache c(L, H, D, 64);
    std::vector<int64_t> ids;
    for (int64_t s = 0; s < 6; ++s) ids.push_back(append_tagged(c, 5 * s, 5));
    c.drop_spans({ids[1], ids[2], ids[4]}, PositionMode::KEEP);
    expect_tags(c, concat(concat(range(0, 5), range(15, 20)), range(25, 30)));
    std::vector<int64_t> live;
    for (const auto& s : c.spans()) live.push_back(s.id);
    EXPECT_EQ(live, (std::vector<int64_t>{ids[0], ids[3], ids[5]}));
    // Span ids are never reused.
    EXPECT_EQ(append_tagged(c, 30, 1), 6);
    EXPECT_THROW(c.drop_spans({ids[1]}), c10::IndexError);
    EXPECT_EQ(c.length(), 16);
}

TEST(KVCache, DropAllWithAndWithoutPinned) {
    KVCache c(L, H, D, 64);
    append_tagged(c, 0, 3);
    const int64_t anchor = append_tagged(c, 3, 4, SpanKind::USER);
    append_tagged(c, 7, 5);
    c.pin(anchor);
    c.drop_all(/*keep_pinned=*/true, PositionMode::KEEP);
    expect_tags(c, range(3, 7));
    EXPECT_EQ(c.spans().size(), 1u);
    c.drop_all();
    EXPECT_EQ(c.length(), 0);
    EXPECT_EQ(c.next_position(), 0);
    EXPECT_TRUE(c.spans().empty());
}

TEST(KVCache, ShiftModeRerotatesKeysAndLeavesValues) {
    KVCache c(L, H, D, 64, at::kFloat, at::kCPU, 1, 10000.0);
    const int64_t sys = append_tagged(c, 0, 2, SpanKind::SYSTEM);
    c.pin(sys);
    for (int64_t f = 0; f < 4; ++f) append_tagged(c, 2 + 3 * f, 3);  // tags 2..13
    c.drop_middle(6, PositionMode::SHIFT);                           // keeps tags 8..13 at slots 2..7
    EXPECT_EQ(c.length(), 8);
    EXPECT_EQ(c.next_position(), 8);
    for (const auto& s : c.spans()) EXPECT_EQ(s.first_position, s.start);
    for (int64_t l = 0; l < L; ++l) {
        auto expected = tokens(l, 0, 8, 6);
        rope_shift_(expected, -6, 10000.0);
        EXPECT_TRUE(at::allclose(c.keys(l).narrow(2, 2, 6), expected, 1e-6, 1e-5));
        EXPECT_TRUE(at::equal(c.keys(l).narrow(2, 0, 2), tokens(l, 0, 0, 2)));  // pinned: delta 0
        EXPECT_TRUE(at::equal(c.values(l).narrow(2, 2, 6), tokens(l, 1, 8, 6)));
    }
}

TEST(KVCache, TruncateRollsBackPositions) {
    KVCache c(L, H, D, 64);
    append_tagged(c, 0, 4);
    append_tagged(c, 4, 4, SpanKind::ASSISTANT);
    c.truncate(6);
    expect_tags(c, range(0, 6));
    EXPECT_EQ(c.spans().back().end, 6);
    EXPECT_EQ(c.next_position(), 6);
    c.truncate(4);
    EXPECT_EQ(c.spans().size(), 1u);
    EXPECT_THROW(c.truncate(5), c10::ValueError);
    append_tagged(c, 100, 1);
    EXPECT_EQ(c.spans().back().first_position, 4);
}

TEST(KVCache, DropRangeCutsInsideSpansTokenExact) {
    KVCache c(L, H, D, 64);
    append_tagged(c, 0, 4, SpanKind::SYSTEM);
    const int64_t long_span = append_tagged(c, 4, 10);  // slots 4..13, cut in its middle below
    append_tagged(c, 14, 3, SpanKind::ASSISTANT);
    EXPECT_EQ(c.drop_range(6, 9, PositionMode::LENGTH), 3);
    expect_tags(c, concat(range(0, 6), range(9, 17)));
    ASSERT_EQ(c.spans().size(), 4u);  // the frame split in two; the tail got a new id
    EXPECT_EQ(c.spans()[1].id, long_span);
    EXPECT_NE(c.spans()[2].id, long_span);
    EXPECT_EQ(c.spans()[2].first_position, 9);             // "length": the kept keys keep their positions ...
    EXPECT_EQ(c.next_position(), 14);                      // ... and the next token takes position = length
    EXPECT_EQ(c.drop_range(2, 8, PositionMode::KEEP), 6);  // across a span boundary, removing a whole piece
    expect_tags(c, concat(range(0, 2), range(11, 17)));
    EXPECT_EQ(c.next_position(), 14);                        // "keep": positions go on counting
    EXPECT_EQ(c.drop_range(4, 4, PositionMode::LENGTH), 0);  // an empty range changes nothing
    EXPECT_EQ(c.spans().size(), 3u);
    EXPECT_EQ(c.next_position(), 14);
    EXPECT_THROW(c.drop_range(3, 99), c10::ValueError);
    expect_tags(c, concat(range(0, 2), range(11, 17)));  // a refused cut moves nothing
}

TEST(KVCache, EngineWriteCommitAndExtend) {
    KVCache c(L, H, D, 16);
    for (int64_t l = 0; l < L; ++l) c.write(l, tokens(l, 0, 0, 3), tokens(l, 1, 0, 3));
    EXPECT_EQ(c.length(), 0);  // written, not yet visible
    const int64_t id = c.commit(3, SpanKind::USER);
    for (int64_t l = 0; l < L; ++l) c.write(l, tokens(l, 0, 3, 1), tokens(l, 1, 3, 1));
    c.commit(1, SpanKind::ASSISTANT);
    for (int64_t l = 0; l < L; ++l) c.write(l, tokens(l, 0, 4, 1), tokens(l, 1, 4, 1));
    c.commit_extend(1);
    expect_tags(c, range(0, 5));
    EXPECT_EQ(c.spans().size(), 2u);
    EXPECT_EQ(c.spans()[0].id, id);
    EXPECT_EQ(c.spans()[1].end, 5);
    EXPECT_THROW(c.write(L, tokens(0, 0, 0, 1), tokens(0, 1, 0, 1)), c10::IndexError);
}

TEST(KVCache, CommitNeedsWhatWasWritten) {
    KVCache c(L, H, D, 16);
    for (int64_t l = 0; l < L; ++l) c.write(l, tokens(l, 0, 0, 4), tokens(l, 1, 0, 4));
    c.commit(4, SpanKind::USER);
    c.truncate(1);                                               // slots 1..3 keep stale data
    EXPECT_THROW(c.commit(2, SpanKind::USER), c10::ValueError);  // nothing written
    EXPECT_THROW(c.commit_extend(1), c10::ValueError);
    for (int64_t l = 0; l < L; ++l) c.write(l, tokens(l, 0, 1, 2), tokens(l, 1, 1, 2));
    EXPECT_THROW(c.commit(3, SpanKind::USER), c10::ValueError);  // more than was written
    EXPECT_EQ(c.length(), 1);
    c.commit(2, SpanKind::USER);
    expect_tags(c, range(0, 3));
}

TEST(KVCache, RefusesDtypesAndDevicesItCannotServe) {
    EXPECT_THROW(KVCache(L, H, D, 8, at::kFloat8_e4m3fn), c10::TypeError);
    EXPECT_THROW(KVCache(L, H, D, 8, at::kInt), c10::TypeError);
    EXPECT_THROW(KVCache(L, H, D, 8, at::kFloat, at::Device("meta")), c10::ValueError);
    EXPECT_THROW(KVCache(L, H, D, 8, at::kFloat, at::Device("cpu:7")), c10::ValueError);
}

TEST(Rope, RefusesOverlappingKeysBeforeTouchingThem) {
    auto row = at::arange(8, at::kFloat).view({1, 1, 1, 8});
    auto keys = row.expand({1, 2, 3, 8});
    EXPECT_THROW(rope_shift_(keys, 3, 10000.0), c10::ValueError);
    EXPECT_TRUE(at::equal(row.view({8}), at::arange(8, at::kFloat)));
    EXPECT_THROW(check_kv_compact(keys), c10::ValueError);
    EXPECT_THROW(rope_shift_(at::zeros({2, 8}).to(at::kFloat8_e5m2), 1, 10000.0), c10::TypeError);
}

TEST(KvCompact, OverlappingMovesMatchReference) {
    // A gap of 1 with long blocks: source and destination overlap heavily.
    for (bool contiguous : {true, false}) {
        auto base = at::arange(2 * 3 * 600 * 4, at::kFloat).reshape({2, 3, 600, 4});
        auto t = contiguous ? base.clone() : base.clone().transpose(0, 1).contiguous().transpose(0, 1);
        auto ref = at::cat({t.narrow(2, 0, 10), t.narrow(2, 11, 400), t.narrow(2, 500, 100)}, 2);
        kv_compact_(t, kv_compact_plan({{0, 10}, {11, 411}, {500, 600}}));
        EXPECT_TRUE(at::equal(t.narrow(2, 0, 510), ref)) << "contiguous=" << contiguous;
    }
}

TEST(Rope, ShiftComposesToRotationAtSum) {
    // Rotation at p via shift from 0 (identity rotation), then by d, equals rotation at p + d.
    auto raw = at::randn({1, 2, 5, 8}, at::kDouble).to(at::kFloat);
    auto a = raw.clone(), b = raw.clone();
    rope_shift_(a, 37, 100000.0);
    rope_shift_(a, 1200, 100000.0);
    rope_shift_(b, 1237, 100000.0);
    EXPECT_TRUE(at::allclose(a, b, 1e-5, 1e-5));
    rope_shift_(a, -1237, 100000.0);
    EXPECT_TRUE(at::allclose(a, raw, 1e-5, 1e-5));
}

TEST(JointEmbed, CountMismatchNamesBothCounts) {
    auto ids = at::tensor({1, 9, 9, 2}, at::kLong).reshape({1, 4});
    auto text = at::zeros({1, 4, 3});
    try {
        joint_embed(ids, text, at::ones({1, 3, 3}), 9);
        FAIL() << "expected ValueError";
    } catch (const c10::ValueError& e) {
        EXPECT_NE(std::string(e.what_without_backtrace()).find("2 image tokens"), std::string::npos);
        EXPECT_NE(std::string(e.what_without_backtrace()).find("3 rows"), std::string::npos);
    }
    auto out = joint_embed(ids, text, at::ones({1, 2, 3}), 9);
    EXPECT_TRUE(at::equal(out.select(1, 1), at::ones({1, 3})));
    EXPECT_TRUE(at::equal(out.select(1, 0), at::zeros({1, 3})));
}
