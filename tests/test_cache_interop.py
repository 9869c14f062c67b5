"""Surgery on the caches transformers users hold: tuples and DynamicCache."""

import pytest
import torch
from transformers import DynamicCache

import engine_fixtures
import prospect_core as pc
from rope_reference import rotate

THETA = 10000.0


def legacy(n_layers=2, T=20, H=2, D=8):
    return tuple((torch.randn(1, H, T, D), torch.randn(1, H, T, D)) for _ in range(n_layers))


def test_tuple_drop_middle_keep_returns_exact_tokens():
    pkv = legacy()
    expect = [(torch.cat([k[:, :, :3], k[:, :, 14:]], 2), torch.cat([v[:, :, :3], v[:, :, 14:]], 2)) for k, v in pkv]
    out = pc.drop_middle(pkv, keep_first=3, keep_last=6, position_mode="keep")
    assert isinstance(out, tuple) and len(out) == 2
    for (k, v), (ek, ev) in zip(out, expect):
        assert torch.equal(k, ek) and torch.equal(v, ev)
    # In place: the returned tensors view the caller's storage, nothing was allocated for the cache.
    assert out[0][0].data_ptr() == pkv[0][0].data_ptr()


def test_tuple_drop_middle_shift_rerotates_tail():
    pkv = legacy(T=30, D=16)
    expect = [torch.cat([k[:, :, :4], rotate(k[:, :, 22:], -18, THETA)], 2) for k, _ in pkv]
    out = pc.drop_middle(pkv, 4, 8, rope_theta=THETA)
    for (k, _), ek in zip(out, expect):
        torch.testing.assert_close(k, ek, rtol=1e-5, atol=1e-6)


def test_short_cache_is_left_alone_and_drop_all_empties():
    pkv = legacy(T=5)
    out = pc.drop_middle(pkv, 3, 3, rope_theta=THETA)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(out, pkv))
    empty = pc.drop_all(pkv)
    assert isinstance(empty, tuple) and all(k.shape[2] == 0 and v.shape[2] == 0 for k, v in empty)


def tiny_llama():
    return engine_fixtures.tiny_llama(THETA)


@torch.no_grad()
def test_dynamic_cache_in_place_and_next_forward_matches_kept_kv():
    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 40))
    cache = DynamicCache()
    model(ids, past_key_values=cache, use_cache=True)
    full = [(l.keys.clone(), l.values.clone()) for l in cache.layers]

    out = pc.drop_middle(cache, keep_first=6, keep_last=10, rope_theta=THETA)
    assert out is cache  # same object, modified in place
    assert cache.get_seq_length() == 16

    # The kept keys and values, built independently: first 6 as they were, last 10 moved from 30..39 to 6..15.
    kept = DynamicCache(
        ddp_cache_data=[
            (torch.cat([k[:, :, :6], rotate(k[:, :, 30:], -24, THETA)], 2), torch.cat([v[:, :, :6], v[:, :, 30:]], 2))
            for k, v in full
        ]
    )
    nxt = torch.randint(0, 97, (1, 5))
    got = model(nxt, past_key_values=cache, use_cache=True).logits
    ref = model(nxt, past_key_values=kept, use_cache=True).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_original_pipeline_failure_runs_to_the_end():
    """The original drop_middle returned a tuple; the next frame's forward then failed with
    "'tuple' object has no attribute 'get_seq_length'". Compress, then keep streaming."""
    model = tiny_llama()
    cache = DynamicCache()
    lengths = []
    for _frame in range(12):
        model(torch.randint(0, 97, (1, 9)), past_key_values=cache, use_cache=True)
        if cache.get_seq_length() > 40:
            cache = pc.drop_middle(cache, keep_first=5, keep_last=18, rope_theta=THETA)
        lengths.append(cache.get_seq_length())
    assert max(lengths) <= 41 and lengths[-1] > 0
    assert isinstance(cache, DynamicCache)
    # And generate() accepts it afterwards (it takes the whole sequence and feeds what the cache lacks).
    n = cache.get_seq_length()
    out = model.generate(
        torch.randint(0, 97, (1, n + 3)), past_key_values=cache, max_new_tokens=4, do_sample=False, min_new_tokens=4
    )
    assert out.shape[1] == n + 3 + 4 and cache.get_seq_length() == n + 3 + 3


@torch.no_grad()
def test_dynamic_cache_drop_all_then_forward():
    model = tiny_llama()
    cache = DynamicCache()
    model(torch.randint(0, 97, (1, 8)), past_key_values=cache, use_cache=True)
    assert pc.drop_all(cache) is cache and cache.get_seq_length() == 0
    ids = torch.randint(0, 97, (1, 6))
    got = model(ids, past_key_values=cache, use_cache=True).logits
    ref = model(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


class OldDynamicCache:
    """The transformers 4.4x layout: key_cache / value_cache lists."""

    def __init__(self, pkv):
        self.key_cache = [k for k, _ in pkv]
        self.value_cache = [v for _, v in pkv]


def test_key_cache_layout():
    pkv = legacy(T=12)
    old = OldDynamicCache(pkv)
    expect = [torch.cat([k[:, :, :2], k[:, :, 8:]], 2) for k, _ in pkv]
    assert pc.drop_middle(old, 2, 4, position_mode="keep") is old
    assert all(torch.equal(a, b) for a, b in zip(old.key_cache, expect))


@torch.no_grad()
def test_kv_cache_round_trips_with_transformers():
    model = tiny_llama()
    cache = DynamicCache()
    ids = torch.randint(0, 97, (1, 12))
    model(ids, past_key_values=cache, use_cache=True)
    kv = pc.KVCache.from_past_key_values(cache, capacity=64, rope_theta=THETA)
    assert kv.length == 12 and kv.capacity == 64 and kv.num_kv_heads == 2 and kv.head_dim == 16
    assert [s.kind for s in kv.spans] == ["other"]
    legacy_views = kv.to_legacy()
    assert legacy_views[1][0].data_ptr() == kv.keys(1).data_ptr()
    dyn = kv.to_dynamic_cache()
    assert dyn.layers[0].keys.data_ptr() == kv.keys(0).data_ptr()  # views, no copy
    nxt = torch.randint(0, 97, (1, 3))
    torch.testing.assert_close(model(nxt, past_key_values=dyn).logits, model(nxt, past_key_values=cache).logits)


@pytest.mark.parametrize(
    "call, exc, fragment",
    [
        (lambda: pc.drop_middle(42, 1, 1), TypeError, "past_key_values expected a tuple of \\(key, value\\)"),
        (
            lambda: pc.drop_middle(((torch.zeros(1, 2, 3, 4),),), 1, 1),
            TypeError,
            "layer 0 expected a \\(key, value\\) pair",
        ),
        (lambda: pc.drop_middle(((torch.zeros(1, 2, 3, 4), "v"),), 1, 1), TypeError, "layer 0 value expected a tensor"),
        (lambda: pc.drop_middle(legacy(), -1, 1, rope_theta=THETA), ValueError, "keep_first expected >= 0, got -1"),
        (lambda: pc.drop_middle(legacy(), 1, -2, rope_theta=THETA), ValueError, "keep_last expected >= 0, got -2"),
        (lambda: pc.drop_middle(legacy(), 1, 1), ValueError, "rope_theta expected the model's rope_theta"),
        (lambda: pc.drop_middle(legacy(), 1, 1, position_mode="sideways"), ValueError, "position_mode expected"),
        (
            lambda: pc.drop_middle(((torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 5, 4)),), 1, 1, position_mode="keep"),
            ValueError,
            "equal T",
        ),
        (lambda: pc.KVCache.from_past_key_values(legacy(T=8), capacity=4), ValueError, "capacity expected >= the 8"),
    ],
)
def test_errors(call, exc, fragment):
    with pytest.raises(exc, match=fragment):
        call()
