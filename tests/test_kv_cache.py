"""KVCache from Python: zero-copy views, the span ledger, surgery, errors."""

import pytest
import torch

import prospect_core as pc
from rope_reference import rotate

L, H, D = 3, 2, 8


def tagged(n, first, layer, kv, dtype=torch.float32):
    """[1, H, n, D] whose every element names its token: 1000 * tag + 100 * layer + 10 * kv + h."""
    tag = torch.arange(first, first + n, dtype=torch.float64).view(1, 1, n, 1)
    h = torch.arange(H, dtype=torch.float64).view(1, H, 1, 1)
    return (1000 * tag + 100 * layer + 10 * kv + h + torch.zeros(1, H, n, D, dtype=torch.float64)).to(dtype)


def append(cache, first, n, kind="frame", frame_index=None):
    keys = [tagged(n, first, l, 0, cache.dtype).to(cache.device) for l in range(L)]
    values = [tagged(n, first, l, 1, cache.dtype).to(cache.device) for l in range(L)]
    return cache.append(keys, values, kind=kind, frame_index=frame_index)


def tags_of(cache):
    """The token tags the cache holds, checked identical across layers, keys and values."""
    v = cache.values(0)[0, 0, :, 0].double()
    tags = ((v - 10) / 1000).round().long().tolist()
    for l in range(L):
        expect = torch.cat([tagged(1, t, l, 1, cache.dtype) for t in tags], 2) if tags else cache.values(l)
        assert torch.equal(cache.values(l), expect)
    return tags


def test_views_share_storage_and_in_place_ops_reach_the_caller():
    c = pc.KVCache(L, H, D, 64)
    ptr = c.storage.data_ptr()
    append(c, 0, 4, kind="system")
    for f in range(5):
        append(c, 4 + 6 * f, 6, frame_index=f)
    keys_before = c.keys(0)
    assert keys_before.data_ptr() == ptr
    # Writing through the view writes the cache: no copy crossed the boundary.
    keys_before[0, 0, 0, 0] = -1.0
    assert c.storage[0, 0, 0, 0, 0, 0].item() == -1.0
    # A core operation moves data inside the caller's storage.
    values_view = c.values(0)
    c.drop_middle(12, position_mode="keep")
    assert c.storage.data_ptr() == ptr
    assert c.values(0).data_ptr() == values_view.data_ptr()
    assert torch.equal(values_view[:, :, :12], c.values(0)[:, :, :12])
    assert values_view[0, 0, 0, 0].item() == 1000 * 22 + 10


def test_append_records_spans_and_positions():
    c = pc.KVCache(L, H, D, 32)
    a = append(c, 0, 3, kind="system")
    b = append(c, 3, 5, kind="frame", frame_index=7)
    assert (a, b) == (0, 1)
    s = c.spans
    assert [x.kind for x in s] == ["system", "frame"]
    assert (s[1].start, s[1].end, s[1].first_position, s[1].frame_index) == (3, 8, 3, 7)
    assert s[0].frame_index is None and len(s[1]) == 5
    assert c.length == len(c) == 8 and c.next_position == 8
    assert c.nbytes() == L * 2 * H * 8 * D * 4
    assert c.capacity_bytes() == L * 2 * H * 32 * D * 4
    assert tags_of(c) == list(range(8))


def test_drop_middle_keeps_pinned_and_newest_whole_spans():
    c = pc.KVCache(L, H, D, 128)
    c.pin(append(c, 0, 4, kind="system"))
    append(c, 4, 2, kind="user")
    for f in range(6):
        append(c, 6 + 7 * f, 7, frame_index=f)  # frames of 7 tokens, tags 6..47
    dropped = c.drop_middle(20, position_mode="keep")  # 20 tokens hold two whole frames, not three
    assert dropped == 2 + 4 * 7
    assert tags_of(c) == list(range(4)) + list(range(34, 48))
    assert [x.frame_index for x in c.spans] == [None, 4, 5]
    assert [x.first_position for x in c.spans] == [0, 34, 41]
    assert c.next_position == 48


def test_drop_middle_shift_rerotates_to_contiguous_positions():
    theta = 100000.0
    c = pc.KVCache(L, H, D, 128, rope_theta=theta)
    c.pin(append(c, 0, 4, kind="system"))
    for f in range(5):
        append(c, 4 + 7 * f, 7, frame_index=f)  # tags 4..38
    c.drop_middle(14)
    assert [(x.start, x.first_position) for x in c.spans] == [(0, 0), (4, 4), (11, 11)]
    assert c.next_position == c.length == 18
    for l in range(L):
        kept = torch.cat([tagged(7, 25, l, 0), tagged(7, 32, l, 0)], 2)
        torch.testing.assert_close(c.keys(l)[:, :, 4:], rotate(kept, -21, theta), rtol=1e-5, atol=1e-3)
        assert torch.equal(c.keys(l)[:, :, :4], tagged(4, 0, l, 0))  # pinned prefix did not move
    assert tags_of(c) == list(range(4)) + list(range(25, 39))  # values are never rotated


def test_drop_spans_drop_all_truncate():
    c = pc.KVCache(L, H, D, 64)
    ids = [append(c, 5 * i, 5) for i in range(5)]
    c.drop_spans([ids[1], ids[3]], position_mode="keep")
    assert tags_of(c) == list(range(5)) + list(range(10, 15)) + list(range(20, 25))
    assert [x.id for x in c.spans] == [ids[0], ids[2], ids[4]]
    assert append(c, 100, 1) == 5  # ids are never reused
    c.truncate(12)
    assert tags_of(c) == list(range(5)) + list(range(10, 15)) + [20, 21]
    c.pin(ids[2])
    c.drop_all(keep_pinned=True)
    assert tags_of(c) == list(range(10, 15)) and c.next_position == 5
    c.drop_all()
    assert c.length == 0 and c.spans == [] and c.next_position == 0


def test_capacity_error_leaves_cache_usable():
    c = pc.KVCache(L, H, D, 10)
    append(c, 0, 8)
    with pytest.raises(ValueError, match="exceed capacity 10"):
        append(c, 8, 3)
    assert tags_of(c) == list(range(8))
    append(c, 8, 2)
    assert c.length == 10


@pytest.mark.parametrize(
    "call, exc, fragment",
    [
        (lambda: pc.KVCache(0, H, D, 8), ValueError, "num_layers expected > 0, got 0"),
        (lambda: pc.KVCache(L, H, 7, 8), ValueError, "head_dim expected a positive even number, got 7"),
        (lambda: pc.KVCache(L, H, D, -1), ValueError, "capacity expected > 0, got -1"),
        (lambda: pc.KVCache(L, H, D, 8, dtype="int8"), ValueError, "dtype expected float32, bfloat16"),
        (lambda: pc.KVCache(L, H, D, 8, dtype=torch.int32), TypeError, "dtype expected float32, float16"),
        (lambda: pc.KVCache(L, H, D, 8, dtype=torch.float8_e4m3fn), TypeError, "dtype expected float32, float16"),
        (lambda: pc.KVCache(L, H, D, 8, dtype=torch.float8_e5m2), TypeError, "got Float8_e5m2"),
        (lambda: pc.KVCache(L, H, D, 8, device="gpu"), ValueError, "device expected 'cpu', 'cuda'"),
        (lambda: pc.KVCache(L, H, D, 8, device="meta"), ValueError, "device expected 'cpu' or 'cuda.*got 'meta'"),
        (lambda: pc.KVCache(L, H, D, 8, device="cpu:7"), ValueError, "device expected 'cpu' or 'cuda.*got 'cpu:7'"),
        (lambda: pc.KVCache(L, H, D, 8, device=torch.device("meta")), ValueError, "got 'meta'"),
        (lambda: pc.KVCache(L, H, D, 8, rope_theta=0), ValueError, "rope_theta expected > 0"),
    ],
)
def test_constructor_errors(call, exc, fragment):
    with pytest.raises(exc, match=fragment):
        call()


def test_method_errors_name_argument_and_keep_cache_usable():
    c = pc.KVCache(L, H, D, 32)
    sid = append(c, 0, 4)
    good_k = [tagged(2, 4, l, 0) for l in range(L)]
    good_v = [tagged(2, 4, l, 1) for l in range(L)]
    cases = [
        (lambda: c.append(good_k[:2], good_v), ValueError, r"keys expected one tensor per layer \(3\), got 2"),
        (lambda: c.append(good_k, [torch.zeros(1, H, 2, D + 2)] * L), ValueError, r"values\[0\] expected shape"),
        (lambda: c.append([k.double() for k in good_k], good_v), TypeError, "expected dtype"),
        (lambda: c.append(good_k, good_v, kind="picture"), ValueError, "kind expected one of system"),
        (lambda: c.keys(3), IndexError, r"layer expected in \[0, 3\), got 3"),
        (lambda: c.pin(99), IndexError, "span_id 99 is not a live span"),
        (lambda: c.drop_middle(-1), ValueError, "keep_last_tokens expected >= 0"),
        (
            lambda: c.drop_middle(4, position_mode="slide"),
            ValueError,
            "position_mode expected 'shift', 'keep' or 'length'",
        ),
        (lambda: c.drop_spans([sid, 42]), IndexError, "span_id 42"),
        (lambda: c.truncate(9), ValueError, r"length expected in \[0, 4\], got 9"),
    ]
    for call, exc, fragment in cases:
        with pytest.raises(exc, match=fragment):
            call()
        assert tags_of(c) == [0, 1, 2, 3]
    append(c, 4, 2)
    assert tags_of(c) == list(range(6))


def test_bf16_and_fp16_caches():
    for dtype in (torch.bfloat16, torch.float16):
        c = pc.KVCache(L, H, D, 64, dtype=dtype)
        for f in range(4):
            append(c, 8 * f, 8)
        c.drop_middle(16)
        assert c.dtype == dtype and c.keys(0).dtype == dtype
        assert c.length == 16


@pytest.mark.cuda
def test_cuda_cache_matches_cpu():
    cpu = pc.KVCache(L, H, D, 64)
    gpu = pc.KVCache(L, H, D, 64, device="cuda")
    for c in (cpu, gpu):
        c.pin(append(c, 0, 3, kind="system"))
        for f in range(6):
            append(c, 3 + 5 * f, 5)
        c.drop_middle(10)
    assert gpu.keys(0).is_cuda
    for l in range(L):
        torch.testing.assert_close(gpu.keys(l).cpu(), cpu.keys(l), rtol=1e-5, atol=1e-3)
        assert torch.equal(gpu.values(l).cpu(), cpu.values(l))


def test_dtype_names_come_from_the_one_python_table(monkeypatch):
    # _C reads a dtype name through prospect_core.model.DTYPE_NAMES: a name added there is taken, one
    # that is not there (an old C++ alias) is refused with the table's message.
    from prospect_core import model

    assert pc.KVCache(2, 2, 4, 8, dtype="float64").dtype == torch.float64
    with pytest.raises(ValueError, match="KVCache: dtype expected float32, bfloat16, float16 or float64, got 'bf16'"):
        pc.KVCache(2, 2, 4, 8, dtype="bf16")
    monkeypatch.setitem(model.DTYPE_NAMES, "brain16", torch.bfloat16)
    assert pc.KVCache(2, 2, 4, 8, dtype="brain16").dtype == torch.bfloat16
