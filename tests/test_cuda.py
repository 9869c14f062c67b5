"""Everything on a CUDA device: cache surgery in place (KVCache, a model's cache, tuples, DynamicCache),
joint_embed, engine parity (transformers, and our own CPU run), CUDA-graph decoding against the eager
loop, the StreamRunner with every strategy, and the server.

Every test is marked cuda: conftest skips them where torch sees no CUDA device. They run in one short
pass on the GPU machine, so each one is small and says, when it fails, what differed and where.
"""

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, DynamicCache

import engine_fixtures
import prospect_core
import prospect_core as pc
from engine_fixtures import CONFIGS, frame_ids, joint_embed_case, pixels, reference_greedy
from prospect_core import prompt
from prospect_core.config import SamplingParams
from prospect_core.context_strategies import ContextStrategyFactory
from prospect_core.engine import Engine
from prospect_core.frames import FramePreprocessor
from prospect_core.runners import StreamRunner
from stream_fixtures import video

pytestmark = pytest.mark.cuda

THETA = 100000.0  # the tiny preset's rope_theta
MODES = ["keep", "shift"]
EOU = prompt.EOU


@pytest.fixture(scope="module", autouse=True)
def _ieee_fp32():
    """fp32 means fp32 here: torch lets cuDNN convolutions (the vision tower's patch embedding) run in TF32
    by default, which alone is ~1e-3 off the CPU. The legacy flags: setting torch >= 2.9's fp32_precision
    on some operators only makes a later read of these flags raise. Set back after the module."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- helpers ----------------------------------------------------------------------------------------


def storage_ptr(cache):
    s = cache.storage  # a property; called if it ever becomes a method
    return (s() if callable(s) else s).data_ptr()


def ledger(cache):
    return [(s.id, s.kind, s.frame_index, s.start, s.end, s.first_position, s.pinned) for s in cache.spans]


def close(got, want, rtol, atol, what):
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def assert_same_cache(got, want, what, rtol=0.0, atol=0.0, keys_rtol=None, keys_atol=None):
    """Same length, positions, span ledger; keys within (keys_rtol, keys_atol), values within (rtol, atol)."""
    assert (got.length, got.next_position) == (want.length, want.next_position), (
        f"{what}: (length, next_position) {(got.length, got.next_position)} != {(want.length, want.next_position)}"
    )
    assert ledger(got) == ledger(want), f"{what}: spans differ\n  got  {ledger(got)}\n  want {ledger(want)}"
    kr = rtol if keys_rtol is None else keys_rtol
    ka = atol if keys_atol is None else keys_atol
    for layer in range(got.num_layers):
        close(got.keys(layer), want.keys(layer), kr, ka, f"{what}: layer {layer} keys")
        close(got.values(layer), want.values(layer), rtol, atol, f"{what}: layer {layer} values")


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def assert_same_tokens(got, want, what):
    assert list(got) == list(want), (
        f"{what}: tokens differ at index {first_diff(got, want)} ({len(got)} vs {len(want)} tokens)\n"
        f"  got  {list(got)}\n  want {list(want)}"
    )


def cpu_copy(cache):
    """A CPU KVCache with the same spans (ids, kinds, frames, pins, positions) and the same bytes."""
    c = pc.KVCache(
        cache.num_layers,
        cache.num_kv_heads,
        cache.head_dim,
        cache.capacity,
        dtype=cache.dtype,
        device="cpu",
        batch=cache.batch,
        rope_theta=cache.rope_theta,
    )
    layers = range(cache.num_layers)
    for s in cache.spans:
        keys = [cache.keys(layer)[:, :, s.start : s.end].cpu() for layer in layers]
        values = [cache.values(layer)[:, :, s.start : s.end].cpu() for layer in layers]
        sid = c.append(keys, values, kind=s.kind, frame_index=s.frame_index)
        if s.pinned:
            c.pin(sid)
    assert ledger(c) == ledger(cache), "the CPU copy must start from the same span ledger"
    return c


# Re-rotated keys, CUDA vs CPU: the CPU takes its angles in float64; a GPU kernel may take them in fp32
# (delta * inv_freq ~ 1000 rad, so ~3e-5 rad off), and bf16 may round the other way. A wrong delta or slot
# is off by O(|k|), far outside these.
SHIFT_TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (1.6e-2, 1e-3)}


def key_tol(dtype, mode):
    """Keys are moved bit for bit unless shifted."""
    rtol, atol = SHIFT_TOL[dtype] if mode == "shift" else (0.0, 0.0)
    return dict(keys_rtol=rtol, keys_atol=atol)


def surgery_peak(cache, op):
    """Runs op(cache) on a CUDA cache; returns (op's result, bytes allocated on the GPU beyond what was before)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = op(cache)
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - before


def assert_small(extra, cache, what):
    limit = 0.01 * cache.capacity_bytes()
    assert extra <= limit, (
        f"{what}: surgery allocated {extra / 2**20:.3f} MiB on the GPU, more than 1% "
        f"({limit / 2**20:.3f} MiB) of the {cache.capacity_bytes() / 2**20:.0f} MiB cache"
    )


# ---- 1. KVCache surgery on CUDA: in place, no big temporaries, as on the CPU ---------------------------

# 24 layers x 8 kv heads x 2048 slots x head_dim 64 in bf16: a 96 MiB cache, so 1% is about 1 MiB.
KV_L, KV_H, KV_D, KV_CAP = 24, 8, 64, 2048


def kv_layout():
    """(kind, tokens, frame_index, pinned) per span: a pinned anchor, 24 frames with short replies, and a
    pinned user turn in the middle (drop_all(keep_pinned=True) and drop_middle must move it down)."""
    spans = [("system", 32, None, True), ("user", 24, None, True)]
    for f in range(24):
        spans += [("frame", 64, f, False), ("assistant", 12, f, False)]
        if f == 9:
            spans.append(("user", 8, None, True))
    return spans


KV_TOKENS = sum(n for _, n, _, _ in kv_layout())  # 1888


@pytest.fixture(scope="module")
def kv_data():
    """Random keys and values [L, 2, 1, H, T, D] in bf16 for every token of kv_layout, on the GPU and a CPU copy."""
    g = torch.Generator(device="cuda").manual_seed(0)
    gpu = torch.randn(KV_L, 2, 1, KV_H, KV_TOKENS, KV_D, device="cuda", dtype=torch.bfloat16, generator=g)
    return gpu, gpu.cpu()


def fill(cache, data):
    t = 0
    for kind, n, frame, pinned in kv_layout():
        keys = [data[layer, 0, :, :, t : t + n] for layer in range(KV_L)]
        values = [data[layer, 1, :, :, t : t + n] for layer in range(KV_L)]
        sid = cache.append(keys, values, kind=kind, frame_index=frame)
        if pinned:
            cache.pin(sid)
        t += n


def _span_ids(cache, pred):
    return [s.id for s in cache.spans if pred(s)]


def _split_range(cache):
    s = next(s for s in cache.spans if s.kind == "frame" and s.frame_index == 20)
    return s.start + 10, s.start + 20  # inside one frame: the span is split in two


# What each surgery moves on the GPU (the C++ compaction has three paths: gap >= moved length, one copy;
# gap >= 256 tokens, chunks of the gap; a short gap, through a bounce buffer).
KV_OPS = {
    # 700 tokens of whole newest spans, the pinned anchor and the pinned middle turn: large gaps
    "drop_middle": lambda c, m: c.drop_middle(700, position_mode=m),
    # a 12-token reply (short gap, a long tail moves), then four frames with replies (304 tokens, chunked)
    "drop_spans": lambda c, m: c.drop_spans(
        _span_ids(c, lambda s: s.kind == "assistant" and s.frame_index == 3)
        + _span_ids(c, lambda s: s.frame_index in (15, 16, 17, 18)),
        position_mode=m,
    ),
    # token-exact, crossing spans: a 400-token gap, 788 tokens move in chunks
    "drop_range_cross": lambda c, m: c.drop_range(700, 1100, position_mode=m),
    # 10 tokens inside one frame: that span becomes two (a new id), the rest moves through the bounce path
    "drop_range_split": lambda c, m: c.drop_range(*_split_range(c), position_mode=m),
    "drop_all_keep_pinned": lambda c, m: c.drop_all(keep_pinned=True, position_mode=m),
    "drop_all": lambda c, m: c.drop_all(position_mode=m),
    "truncate": lambda c, m: c.truncate(1000),  # the rollback: no position_mode
}
KV_CASES = [(op, m) for op in KV_OPS if op != "truncate" for m in MODES] + [("truncate", None)]


@pytest.mark.parametrize("op, mode", KV_CASES, ids=[f"{o}-{m}" if m else o for o, m in KV_CASES])
def test_kv_cache_surgery_in_place_on_cuda(kv_data, op, mode):
    gpu_data, cpu_data = kv_data
    gpu = pc.KVCache(KV_L, KV_H, KV_D, KV_CAP, dtype=torch.bfloat16, device="cuda", rope_theta=THETA)
    cpu = pc.KVCache(KV_L, KV_H, KV_D, KV_CAP, dtype=torch.bfloat16, device="cpu", rope_theta=THETA)
    fill(gpu, gpu_data)
    fill(cpu, cpu_data)
    assert gpu.device.type == "cuda" and gpu.capacity_bytes() >= 64 * 2**20
    assert ledger(gpu) == ledger(cpu) and gpu.length == KV_TOKENS
    ptr, key_ptr, value_ptr = storage_ptr(gpu), gpu.key_buffer(5).data_ptr(), gpu.value_buffer(5).data_ptr()

    dropped, extra = surgery_peak(gpu, lambda c: KV_OPS[op](c, mode))
    want_dropped = KV_OPS[op](cpu, mode)
    what = f"{op} ({mode})"
    assert dropped == want_dropped > 0, f"{what}: dropped {dropped} tokens on CUDA, {want_dropped} on the CPU"
    assert storage_ptr(gpu) == ptr, f"{what}: the storage was reallocated"
    assert (gpu.key_buffer(5).data_ptr(), gpu.value_buffer(5).data_ptr()) == (key_ptr, value_ptr), (
        f"{what}: views moved"
    )
    assert_small(extra, gpu, what)
    # Moves are copies (exact); shift re-rotates keys in fp32 and casts back (a bf16 ulp apart at most).
    assert_same_cache(gpu, cpu, what, **key_tol(torch.bfloat16, mode))

    # Still a cache: the next append lands after the kept tokens, as on the CPU.
    new = gpu_data[:, :, :, :, :5]
    gpu.append(list(new[:, 0]), list(new[:, 1]), kind="user")
    cpu.append(list(new[:, 0].cpu()), list(new[:, 1].cpu()), kind="user")
    assert_same_cache(gpu, cpu, what + ", then an append", **key_tol(torch.bfloat16, mode))
    assert storage_ptr(gpu) == ptr


# A model's own cache: 24 layers, 8 kv heads of 64 (fp32, 192 MiB at 2048 slots) on a text model small
# enough to load in a second.
WIDE = {
    "text_config.num_hidden_layers": 24,
    "text_config.num_attention_heads": 8,
    "text_config.num_key_value_heads": 8,
    "text_config.head_dim": 64,
}


@pytest.fixture(scope="module")
def wide_models(tmp_path_factory):
    path = prospect_core.make_model(tmp_path_factory.mktemp("wide"), "tiny", overrides=WIDE)
    return prospect_core.load_model(path, device="cuda"), prospect_core.load_model(path)


@torch.no_grad()
@pytest.mark.parametrize("mode", MODES)
def test_model_cache_surgery_in_place_on_cuda(wide_models, mode):
    gm, cm = wide_models
    cache = gm.make_cache(2048)
    assert cache.device.type == "cuda" and cache.dtype == torch.float32 and cache.num_layers == 24
    assert cache.capacity_bytes() >= 64 * 2**20
    hidden = gm.config["text_config"]["hidden_size"]
    g = torch.Generator().manual_seed(1)

    def emb(n):
        return torch.randn(1, n, hidden, generator=g)

    for kind, n, frame in [("system", 24, None), ("user", 16, None)]:
        gm.prefill(emb(n).cuda(), cache, kind, frame)
        cache.pin(cache.spans[-1].id)
    for f in range(20):
        gm.prefill(emb(64).cuda(), cache, "frame", f)
        gm.prefill(emb(12).cuda(), cache, "assistant", f)
    cpu = cpu_copy(cache)
    ptr = storage_ptr(cache)

    surgeries = [
        ("drop_middle", lambda c: c.drop_middle(600, position_mode=mode)),
        ("drop_range", lambda c: c.drop_range(100, 400, position_mode=mode)),  # then a token-exact cut
        ("drop_spans", lambda c: c.drop_spans([c.spans[3].id], position_mode=mode)),  # a short gap
    ]
    for name, op in surgeries:
        what = f"model cache {name} ({mode})"
        dropped, extra = surgery_peak(cache, op)
        assert dropped == op(cpu) > 0, what
        assert storage_ptr(cache) == ptr, f"{what}: the storage was reallocated"
        assert_small(extra, cache, what)
        assert_same_cache(cache, cpu, what, **key_tol(torch.float32, mode))
    if mode == "keep":
        assert cache.next_position > cache.length  # positions kept counting past what was dropped
    else:
        assert cache.next_position == cache.length

    # The model reads the cut cache as the CPU model reads the CPU copy.
    x = emb(3)
    got = gm.forward(x.cuda(), cache, "user")
    want = cm.forward(x, cpu, "user")
    err = (got.cpu() - want).abs().max().item()
    assert err < 1e-4, f"logits after surgery ({mode}): CUDA vs CPU max abs diff {err:.2e}"
    assert ledger(cache) == ledger(cpu) and storage_ptr(cache) == ptr


# ---- 2. Surgery on transformers caches holding CUDA tensors: tuples and DynamicCache ------------------


def legacy(n_layers, T, dtype, H=4, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        (torch.randn(1, H, T, D, generator=g).to(dtype), torch.randn(1, H, T, D, generator=g).to(dtype))
        for _ in range(n_layers)
    )


# (keep_first, keep_last) of 1200 tokens: the tail moves by a gap of 950 (one copy), 350 (chunks) or 10 (bounce).
TUPLE_CUTS = {"one_copy": (50, 200), "chunked": (50, 800), "bounce": (50, 1140)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cut", list(TUPLE_CUTS))
def test_tuple_drop_middle_in_place_on_cuda(cut, mode, dtype):
    T = 1200
    keep_first, keep_last = TUPLE_CUTS[cut]
    cpu = legacy(3, T, dtype)
    gpu = tuple((k.cuda(), v.cuda()) for k, v in cpu)
    ptrs = [(k.data_ptr(), v.data_ptr()) for k, v in gpu]
    kept = [
        (
            torch.cat([k[:, :, :keep_first], k[:, :, T - keep_last :]], 2),
            torch.cat([v[:, :, :keep_first], v[:, :, T - keep_last :]], 2),
        )
        for k, v in cpu
    ]
    want = pc.drop_middle(cpu, keep_first, keep_last, position_mode=mode, rope_theta=THETA)
    got = pc.drop_middle(gpu, keep_first, keep_last, position_mode=mode, rope_theta=THETA)
    assert isinstance(got, tuple) and len(got) == 3
    what = f"tuple {cut} ({mode}, {dtype})"
    for layer, ((k, v), (wk, wv), (kk, kv), ptr) in enumerate(zip(got, want, kept, ptrs)):
        assert k.is_cuda and k.shape == (1, 4, keep_first + keep_last, 64), f"{what}: layer {layer} {k.shape}"
        assert (k.data_ptr(), v.data_ptr()) == ptr, f"{what}: layer {layer} is not a view of the caller's tensors"
        close(v, kv, 0, 0, f"{what}: layer {layer} values")  # values are only moved
        close(v, wv, 0, 0, f"{what}: layer {layer} values vs the CPU")
        if mode == "keep":
            close(k, kk, 0, 0, f"{what}: layer {layer} keys")
        else:
            close(k[:, :, :keep_first], kk[:, :, :keep_first], 0, 0, f"{what}: layer {layer} kept head")
            close(k, wk, *SHIFT_TOL[dtype], f"{what}: layer {layer} keys vs the CPU")


def tiny_llama():
    torch.manual_seed(0)
    return engine_fixtures.tiny_llama(THETA, max_positions=1024).cuda()


@torch.no_grad()
@pytest.mark.parametrize("mode", MODES)
def test_dynamic_cache_surgery_in_place_on_cuda(mode):
    model = tiny_llama()
    g = torch.Generator().manual_seed(3)
    cache = DynamicCache()
    model(torch.randint(0, 97, (1, 300), generator=g).cuda(), past_key_values=cache, use_cache=True)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    ptrs = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    assert all(layer.keys.is_cuda for layer in cache.layers)

    want = pc.drop_middle(tuple((k.cpu(), v.cpu()) for k, v in before), 20, 100, position_mode=mode, rope_theta=THETA)
    out = pc.drop_middle(cache, 20, 100, position_mode=mode, rope_theta=THETA)
    assert out is cache and cache.get_seq_length() == 120
    for i, (layer, (wk, wv), ptr) in enumerate(zip(cache.layers, want, ptrs)):
        assert (layer.keys.data_ptr(), layer.values.data_ptr()) == ptr, f"DynamicCache layer {i} ({mode}): not in place"
        tol = SHIFT_TOL[torch.float32] if mode == "shift" else (0, 0)
        close(layer.keys, wk, *tol, f"DynamicCache layer {i} keys ({mode})")
        close(layer.values, wv, 0, 0, f"DynamicCache layer {i} values ({mode})")

    # transformers goes on with the cut cache as with one built from the kept keys and values.
    kept = DynamicCache(ddp_cache_data=[(k.cuda(), v.cuda()) for k, v in want])
    nxt = torch.randint(0, 97, (1, 5), generator=g).cuda()
    got = model(nxt, past_key_values=cache, use_cache=True).logits
    ref = model(nxt, past_key_values=kept, use_cache=True).logits
    close(got, ref, 1e-4, 1e-4, f"logits on the cut DynamicCache ({mode})")

    assert pc.drop_all(cache) is cache and cache.get_seq_length() == 0
    ids = torch.randint(0, 97, (1, 6), generator=g).cuda()
    close(model(ids, past_key_values=cache, use_cache=True).logits, model(ids).logits, 1e-4, 1e-4, "after drop_all")


@torch.no_grad()
def test_drop_middle_strategy_on_a_cuda_dynamic_cache():
    """The strategy a transformers loop calls (handle_overflow), on CUDA tensors: in place, as on the CPU."""
    model = tiny_llama()
    cache = DynamicCache()
    model(torch.randint(0, 97, (1, 200)).cuda(), past_key_values=cache, use_cache=True)
    snapshot = tuple((layer.keys.cpu(), layer.values.cpu()) for layer in cache.layers)
    ptrs = [layer.keys.data_ptr() for layer in cache.layers]
    s = ContextStrategyFactory.create_strategy(
        "drop_middle", max_seq_len=256, reserved_seq_len=16, last_keep_len=64, position_mode="shift"
    )
    out, msg = s.handle_overflow(cache, None, keep_first=10, rope_theta=THETA)
    assert out is cache and msg is None and cache.get_seq_length() == 74
    want = pc.drop_middle(snapshot, 10, 64, position_mode="shift", rope_theta=THETA)
    for i, (layer, (wk, wv), ptr) in enumerate(zip(cache.layers, want, ptrs)):
        assert layer.keys.data_ptr() == ptr, f"layer {i}: not in place"
        close(layer.keys, wk, *SHIFT_TOL[torch.float32], f"strategy layer {i} keys")
        close(layer.values, wv, 0, 0, f"strategy layer {i} values")


def test_kv_cache_views_and_conversions_on_cuda():
    kv = pc.KVCache(2, 2, 16, 64, device="cuda", rope_theta=THETA)
    data = [torch.randn(1, 2, 10, 16, device="cuda") for _ in range(4)]
    kv.append(data[:2], data[2:], kind="frame", frame_index=0)
    legacy_views = kv.to_legacy()
    assert legacy_views[1][0].data_ptr() == kv.keys(1).data_ptr() and legacy_views[1][0].is_cuda
    dyn = kv.to_dynamic_cache()
    assert dyn.layers[0].keys.data_ptr() == kv.keys(0).data_ptr() and dyn.get_seq_length() == 10
    back = pc.KVCache.from_past_key_values(dyn, capacity=32, rope_theta=THETA)
    assert back.device.type == "cuda" and back.length == 10 and back.capacity == 32
    for layer in range(2):
        close(back.keys(layer), kv.keys(layer), 0, 0, "from_past_key_values keys")
        close(back.values(layer), kv.values(layer), 0, 0, "from_past_key_values values")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_shift_in_place_on_cuda(dtype):
    base = torch.randn(1, 4, 300, 64).to(dtype)
    cpu, gpu = base.clone(), base.cuda()
    view = gpu[:, :, 50:250]  # strided, as surgery passes a slice of a buffer
    ptr = view.data_ptr()
    assert pc.rope_shift_(view, -37, THETA).data_ptr() == ptr
    pc.rope_shift_(cpu[:, :, 50:250], -37, THETA)
    delta = torch.arange(200) - 100  # one delta per token
    pc.rope_shift_(gpu[:, :, 50:250], delta.cuda(), THETA)
    pc.rope_shift_(cpu[:, :, 50:250], delta, THETA)
    close(gpu[:, :, :50], base[:, :, :50], 0, 0, "rope_shift_ touched tokens before the view")
    close(gpu[:, :, 250:], base[:, :, 250:], 0, 0, "rope_shift_ touched tokens after the view")
    close(gpu, cpu, *SHIFT_TOL[dtype], f"rope_shift_ on CUDA vs CPU ({dtype})")


# ---- 3. joint_embed on CUDA -------------------------------------------------------------------------

IMG = 7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_joint_embed_on_cuda_equals_cpu(dtype):
    ids, text, feats = joint_embed_case(dtype, IMG)
    want = pc.joint_embed(ids, text, feats, IMG)
    g_ids, g_text, g_feats = ids.cuda(), text.cuda(), feats.cuda()
    got = pc.joint_embed(g_ids, g_text, g_feats, IMG)
    assert got.is_cuda and got.dtype == dtype and got.shape == text.shape
    close(got, want, 0, 0, f"joint_embed on CUDA ({dtype})")
    # A new tensor: the caller's text embeddings are left as they were.
    assert got.data_ptr() != g_text.data_ptr()
    close(g_text, text, 0, 0, "text_embeds after joint_embed")
    close(g_feats, feats, 0, 0, "image_features after joint_embed")
    # Text only: a copy of the text embeddings.
    plain = pc.joint_embed(g_ids[:, 8:20], g_text[:, 8:20], torch.zeros(0, 4, 16, dtype=dtype, device="cuda"), IMG)
    close(plain, text[:, 8:20], 0, 0, "text-only joint_embed")


def test_joint_embed_cuda_errors():
    ids = torch.full((1, 6), IMG)
    with pytest.raises(ValueError, match="tensors expected on one device"):
        pc.joint_embed(ids, torch.randn(1, 6, 8, device="cuda"), torch.randn(1, 6, 8, device="cuda"), IMG)
    with pytest.raises(ValueError, match=r"6 image tokens \(id 7\) but image_features hold 4 rows"):
        pc.joint_embed(ids.cuda(), torch.randn(1, 6, 8, device="cuda"), torch.randn(1, 4, 8, device="cuda"), IMG)


@torch.no_grad()
def test_model_joint_embed_on_cuda(tiny_model):
    gm = prospect_core.load_model(tiny_model, device="cuda")
    cm = prospect_core.load_model(tiny_model)
    ids, pv = frame_ids(gm, 2), pixels(gm, 2)
    from_cpu_inputs = gm.joint_embed(ids, pv)  # inputs are moved to the model's device
    from_cuda_inputs = gm.joint_embed(ids.cuda(), pv.cuda())
    assert from_cuda_inputs.is_cuda
    close(from_cpu_inputs, from_cuda_inputs, 0, 0, "model.joint_embed with CPU vs CUDA inputs")
    close(from_cuda_inputs, cm.joint_embed(ids, pv), 1e-4, 1e-5, "model.joint_embed CUDA vs CPU")


# ---- 4. The engine on CUDA: against transformers, and against our own CPU run --------------------------


def ref_image_features(ref, pv, mask=None):
    out = ref.model.get_image_features(pv, mask)
    return torch.cat(list(getattr(out, "pooler_output", out)))


def rel(a, b):
    return ((a.float().cpu() - b.float().cpu()).abs().max() / b.float().cpu().abs().max()).item()


def max_abs(a, b):
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


@pytest.fixture(scope="module", params=list(CONFIGS))
def cuda_pair(request, tiny_model, tmp_path_factory):
    """(our CUDA model, our CPU model, transformers on CUDA), fp32, for both test shapes."""
    overrides = CONFIGS[request.param]
    path = (
        tiny_model
        if not overrides
        else prospect_core.make_model(tmp_path_factory.mktemp(request.param), "tiny", overrides=overrides)
    )
    ref = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).cuda().eval()
    return prospect_core.load_model(path, device="cuda"), prospect_core.load_model(path), ref


@torch.no_grad()
def test_cuda_vision_and_logits_match_transformers_and_cpu(cuda_pair):
    ours, cpu, ref = cuda_pair
    assert ours.device.type == "cuda" and ours.dtype == torch.float32
    pv = pixels(ours, 3)
    feats = ours.image_features(pv.cuda())
    assert feats.is_cuda
    want = ref_image_features(ref, pv.cuda())
    assert rel(feats.reshape(want.shape), want) < 1e-4, (
        f"vision features vs transformers: {rel(feats.reshape(want.shape), want):.2e}"
    )
    assert rel(feats, cpu.image_features(pv)) < 1e-4, (
        f"vision features vs CPU: {rel(feats, cpu.image_features(pv)):.2e}"
    )

    for n_images in (0, 1, 2):
        ids = frame_ids(ours, n_images, text=(69, 70, 71, 72))
        pvn = pixels(ours, n_images) if n_images else None
        g_pv = pvn.cuda() if n_images else None
        got = ours.forward(ours.joint_embed(ids.cuda(), g_pv), ours.make_cache(ids.shape[1]))
        assert got.is_cuda
        want = ref(input_ids=ids.cuda(), pixel_values=g_pv).logits
        on_cpu = cpu.forward(cpu.joint_embed(ids, pvn), cpu.make_cache(ids.shape[1]))
        e_ref, e_cpu = max_abs(got, want), max_abs(got, on_cpu)
        assert e_ref < 1e-4, f"{n_images} images: logits vs transformers on CUDA, max abs diff {e_ref:.2e}"
        assert e_cpu < 1e-4, f"{n_images} images: logits vs our CPU run, max abs diff {e_cpu:.2e}"

    # Five frames with the cache carried across them (the masked prefill path on a non-empty cache).
    cache, dyn = ours.make_cache(512), DynamicCache()
    for f in range(5):
        ids = frame_ids(ours, 1, text=(100 + f, 131))
        pvf = pixels(ours, 1, seed=f).cuda()
        got = ours.forward(ours.joint_embed(ids.cuda(), pvf), cache, span_kind="frame", frame_index=f)
        want = ref(input_ids=ids.cuda(), pixel_values=pvf, past_key_values=dyn, use_cache=True).logits
        assert max_abs(got, want) < 1e-4, f"frame {f} of a carried stream: max abs diff {max_abs(got, want):.2e}"
    assert cache.length == dyn.get_seq_length()


@torch.no_grad()
def test_cuda_greedy_matches_transformers_and_cpu(cuda_pair):
    ours, cpu, ref = cuda_pair
    ids = torch.tensor([[20, 21, 22, 23, 24, 25]])
    want, scores = reference_greedy(ref, ids.cuda(), 32)
    got = ours.greedy_generate(ours.embed_tokens(ids.cuda()), ours.make_cache(64), 32, []).tokens
    on_cpu = cpu.greedy_generate(cpu.embed_tokens(ids), cpu.make_cache(64), 32, []).tokens
    assert_same_tokens(got, on_cpu, "greedy fp32, CUDA vs our CPU")
    assert len(got) == 32
    i = first_diff(got, want)
    if i < 32:  # allowed only where transformers itself has a near-tie
        top2 = scores[i][0].topk(2).values
        margin = (top2[0] - top2[1]).item()
        assert margin < 1e-4, f"token {i}: ours {got[i]} != transformers {want[i]} with a margin of {margin:.2e}"


@torch.no_grad()
def test_cuda_bf16_logits_and_greedy_match_transformers(tiny_model):
    ours = prospect_core.load_model(tiny_model, dtype="bfloat16", device="cuda")
    ref = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.bfloat16).cuda().eval()
    ids = frame_ids(ours, 1)
    pv = pixels(ours, 1, dtype=torch.bfloat16).cuda()
    got = ours.forward(ours.joint_embed(ids.cuda(), pv), ours.make_cache(ids.shape[1]))
    want = ref(input_ids=ids.cuda(), pixel_values=pv).logits
    assert got.dtype == torch.bfloat16 and got.is_cuda
    # The tolerance of the CPU bf16 parity test (tests/test_engine.py): a few bf16 ulps at this scale.
    assert max_abs(got, want) <= 0.0625, f"bf16 logits vs transformers on CUDA: max abs diff {max_abs(got, want):.3e}"
    text = torch.tensor([[40, 41, 42, 43]])
    g, scores = reference_greedy(ref, text.cuda(), 8)
    mine = ours.greedy_generate(ours.embed_tokens(text.cuda()), ours.make_cache(16), 8, []).tokens
    i = first_diff(mine, g)
    if i < 8:  # only where logits 0.0625 apart could swap transformers' top two
        top2 = scores[i][0].float().topk(2).values
        margin = (top2[0] - top2[1]).item()
        assert margin < 0.125, f"bf16 token {i}: ours {mine} vs transformers {g}, margin {margin:.3e}"


# ---- 5. CUDA-graph decoding against the eager loop ----------------------------------------------------

DTYPES = ["float32", "bfloat16"]


@pytest.fixture(scope="module")
def cuda_models(tiny_model):
    return {dt: prospect_core.load_model(tiny_model, dtype=dt, device="cuda") for dt in DTYPES}


def cache_tol(dtype):
    """Graph vs eager on one device: the same math, perhaps other kernels."""
    return dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)


def gen(model, embeds, cache, n, stops=(), graph=True, **kw):
    return model.greedy_generate(embeds, cache, n, list(stops), cuda_graph=graph, **kw)


def check_steps(res, graph, what):
    """graph_steps: 0 on the eager path; on the graph path most decode steps are replays."""
    n = len(res.tokens)
    if not graph:
        assert res.graph_steps == 0, f"{what}: the eager run reports graph_steps={res.graph_steps}"
        return
    flag = f"has_cuda_graphs={pc._C.has_cuda_graphs}"
    assert 0 <= res.graph_steps <= n, f"{what}: graph_steps={res.graph_steps} for {n} tokens ({flag})"
    if n >= 8:
        assert res.graph_steps > 0, f"{what}: no decode step replayed a CUDA graph over {n} tokens ({flag})"
    if n >= 30:
        assert res.graph_steps >= n // 2, f"{what}: only {res.graph_steps} of {n} steps were graph replays ({flag})"


def frame_embeds(model, seed):
    ids = frame_ids(model, 1, text=(60 + seed, 61, 62)).cuda()
    return model.joint_embed(ids, pixels(model, 1, seed=seed).cuda())


def text_embeds(model, first, n=6):
    return model.embed_tokens(torch.arange(first, first + n).view(1, -1).cuda())


def pick_stop(tokens):
    """(i, token): the latest token that first appears at i, so a stop on it ends the reply mid-way."""
    firsts = [i for i, t in enumerate(tokens[:-1]) if t not in tokens[:i]]
    i = firsts[-1]
    return i, tokens[i]


def test_build_flags_and_cpu_decoding_is_eager(tiny_model):
    assert isinstance(pc._C.has_cuda_graphs, bool) and isinstance(pc._C.has_cuda_kernels, bool)
    assert pc._C.has_cuda_graphs, "prospect_core._C.has_cuda_graphs is False on a CUDA machine: built without graphs"
    cpu = prospect_core.load_model(tiny_model)
    e = cpu.embed_tokens(torch.tensor([[50, 51, 52]]))
    a = cpu.greedy_generate(e, cpu.make_cache(64), 12, [], cuda_graph=True)
    b = cpu.greedy_generate(e, cpu.make_cache(64), 12, [], cuda_graph=False)
    assert a.graph_steps == 0 and b.graph_steps == 0, (a.graph_steps, b.graph_steps)
    assert_same_tokens(a.tokens, b.tokens, "CPU with cuda_graph=True vs False")


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_decode_equals_eager(cuda_models, dtype):
    m = cuda_models[dtype]
    e = frame_embeds(m, 0)
    T = e.shape[1]
    runs = {}
    for graph in (True, False):
        cache = m.make_cache(256)
        ptr = storage_ptr(cache)
        res = gen(m, e, cache, 40, graph=graph, span_kind="frame", frame_index=0, silence=(3, 1.0))
        assert storage_ptr(cache) == ptr, f"graph={graph}: the storage was reallocated"
        check_steps(res, graph, f"{dtype} 40 tokens, graph={graph}")
        runs[graph] = res, cache
    (g, gc), (e_, ec) = runs[True], runs[False]
    assert_same_tokens(g.tokens, e_.tokens, f"{dtype}: graph vs eager, 40 tokens")
    assert len(e_.tokens) == 40 and ec.length == T + 40
    assert g.silence_prob == pytest.approx(e_.silence_prob, rel=1e-3, abs=1e-6)
    assert [s.kind for s in ec.spans] == ["frame", "assistant"]
    assert_same_cache(gc, ec, f"{dtype}: cache after 40 tokens, graph vs eager", **cache_tol(dtype))

    # With a stop token that turns up mid-way: it ends the reply the same way in both.
    i, stop = pick_stop(e_.tokens)
    stopped = {}
    for graph in (True, False):
        cache = m.make_cache(256)
        res = gen(m, e, cache, 40, stops=[stop], graph=graph, span_kind="frame", frame_index=0)
        check_steps(res, graph, f"{dtype} stop token, graph={graph}")
        stopped[graph] = res, cache
    assert_same_tokens(stopped[False][0].tokens, e_.tokens[:i], f"{dtype}: eager with stop token {stop}")
    assert_same_tokens(stopped[True][0].tokens, stopped[False][0].tokens, f"{dtype}: graph vs eager with a stop")
    assert_same_cache(stopped[True][1], stopped[False][1], f"{dtype}: cache after a stop", **cache_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_variants_equal_eager(tiny_model, monkeypatch, dtype):
    # PROSPECT_CUDA_KERNELS=0 captures the step from ATen ops instead of the fused kernels, and
    # PROSPECT_CUDA_GEMV=1 takes the products from prospect's gemv kernel instead of cuBLAS: each
    # variant decodes the same tokens as the eager path.
    m = prospect_core.load_model(tiny_model, dtype=dtype, device="cuda")
    e = frame_embeds(m, 2)
    runs = {}
    for variant, kernels, gemv in (("kernels", "1", "0"), ("aten", "0", "0"), ("gemv", "1", "1")):
        monkeypatch.setenv("PROSPECT_CUDA_KERNELS", kernels)
        monkeypatch.setenv("PROSPECT_CUDA_GEMV", gemv)
        model = prospect_core.load_model(tiny_model, dtype=dtype, device="cuda")  # graphs are per model
        cache = model.make_cache(256)
        res = gen(model, e, cache, 40, graph=True)
        check_steps(res, True, f"{dtype} {variant}")
        runs[variant] = res, cache
    eager_cache = m.make_cache(256)
    eager = gen(m, e, eager_cache, 40, graph=False)
    for variant, (res, cache) in runs.items():
        assert_same_tokens(res.tokens, eager.tokens, f"{dtype}: graph from {variant} vs eager")
        assert_same_cache(cache, eager_cache, f"{dtype}: cache, graph from {variant} vs eager", **cache_tol(dtype))


def test_graph_decode_sampled_equals_eager(cuda_models):
    m = cuda_models["float32"]
    e = text_embeds(m, 80)
    a = gen(m, e, m.make_cache(64), 20, graph=True, temperature=0.9, top_p=0.95, seed=5)
    b = gen(m, e, m.make_cache(64), 20, graph=False, temperature=0.9, top_p=0.95, seed=5)
    check_steps(b, False, "sampled, eager")
    assert_same_tokens(a.tokens, b.tokens, "sampled (seed 5), cuda_graph=True vs False")


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_decode_rolls_back_like_eager(cuda_models, dtype):
    """keep_generated_in_cache=False: the reply leaves the cache in both paths; the next turn agrees."""
    m = cuda_models[dtype]
    sys_e, q1, q2 = text_embeds(m, 30, 10), frame_embeds(m, 1), text_embeds(m, 90, 5)
    out = {}
    for graph in (True, False):
        cache = m.make_cache(200)
        m.prefill(sys_e, cache, "system")
        cache.pin(cache.spans[0].id)
        before = ledger(cache)
        r1 = gen(m, q1, cache, 30, graph=graph, keep_generated_in_cache=False, span_kind="frame", frame_index=1)
        end = 10 + q1.shape[1]
        assert (cache.length, cache.next_position) == (end, end), f"graph={graph}: not rolled back to the input"
        assert ledger(cache)[:1] == before and [s.kind for s in cache.spans] == ["system", "frame"]
        assert cache.spans[-1].end == end
        check_steps(r1, graph, f"{dtype} rollback, graph={graph}")
        r2 = gen(m, q2, cache, 30, graph=graph, span_kind="user")
        out[graph] = r1, r2, cache
    assert_same_tokens(out[True][0].tokens, out[False][0].tokens, f"{dtype}: rolled-back reply")
    assert_same_tokens(out[True][1].tokens, out[False][1].tokens, f"{dtype}: the reply after a rollback")
    assert_same_cache(out[True][2], out[False][2], f"{dtype}: after rollback and a reply", **cache_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_graph_decode_across_surgery(cuda_models, dtype, mode):
    """Generate, cut the cache in place, generate again: graph and eager twins stay identical."""
    m = cuda_models[dtype]
    caches = {graph: m.make_cache(400) for graph in (True, False)}
    ptrs = {graph: storage_ptr(c) for graph, c in caches.items()}
    for c in caches.values():
        m.prefill(text_embeds(m, 30, 12), c, "system")
        c.pin(c.spans[0].id)
    plan = [
        ("frame", 0),
        ("user", 1),
        ("frame", 2),
        ("drop_middle", None),
        ("frame", 3),
        ("frame", 4),
        ("drop_range", None),
        ("frame", 5),
        ("drop_spans", None),
        ("user", 6),
    ]
    for step, arg in plan:
        what = f"{dtype} {mode}: {step} {arg if arg is not None else ''}"
        if step == "drop_middle":
            n = {g: c.drop_middle(60, position_mode=mode) for g, c in caches.items()}
        elif step == "drop_range":
            n = {g: c.drop_range(20, 50, position_mode=mode) for g, c in caches.items()}
        elif step == "drop_spans":
            n = {g: c.drop_spans([c.spans[1].id], position_mode=mode) for g, c in caches.items()}
        else:
            e = frame_embeds(m, arg) if step == "frame" else text_embeds(m, 100 + 7 * arg)
            res = {}
            for graph, c in caches.items():
                res[graph] = gen(m, e, c, 24, graph=graph, span_kind=step, frame_index=arg)
                check_steps(res[graph], graph, f"{what}, graph={graph}")
            if dtype == "bfloat16" and list(res[True].tokens) != list(res[False].tokens):
                # bf16: the fused attention and norms sum in another order than the eager kernels, and a
                # near-tie can flip (seen once on an H200, keep mode, frame 5, token 12). From there the
                # twins hold different text, so the comparison ends; fp32 must match to the end.
                assert first_diff(res[True].tokens, res[False].tokens) >= 1, what
                assert len(res[True].tokens) == len(res[False].tokens), what
                return
            assert_same_tokens(res[True].tokens, res[False].tokens, what)
            n = None
        if n is not None:
            assert n[True] == n[False] > 0, f"{what}: dropped {n}"
            if mode == "keep":
                assert caches[False].next_position > caches[False].length
        assert_same_cache(caches[True], caches[False], what, **cache_tol(dtype))
    assert {g: storage_ptr(c) for g, c in caches.items()} == ptrs, "graph decoding reallocated a cache"


def test_graph_decode_with_several_caches(cuda_models):
    """One model, caches of other capacities used in turn: each graph run matches its eager twin."""
    m = cuda_models["float32"]
    caps = {"a": 160, "b": 512, "c": 97}
    caches = {(name, graph): m.make_cache(cap) for name, cap in caps.items() for graph in (True, False)}
    order = [("a", 0), ("b", 1), ("a", 2), ("c", 3), ("b", 4), ("a", 5)]
    for name, seed in order:
        e = text_embeds(m, 200 + 5 * seed, 4)
        res = {graph: gen(m, e, caches[name, graph], 16, graph=graph) for graph in (True, False)}
        what = f"cache {name} (capacity {caps[name]}), turn {seed}"
        check_steps(res[True], True, what)
        check_steps(res[False], False, what)
        assert_same_tokens(res[True].tokens, res[False].tokens, what)
        assert_same_cache(caches[name, True], caches[name, False], what, **cache_tol("float32"))


def test_graph_decode_on_token_stop(cuda_models):
    m = cuda_models["float32"]
    e = frame_embeds(m, 2)
    out = {}
    for graph in (True, False):
        seen = []
        cache = m.make_cache(128)
        res = gen(m, e, cache, 40, graph=graph, on_token=lambda t, seen=seen: seen.append(t) or len(seen) < 7)
        assert res.tokens == seen and len(seen) == 7, f"graph={graph}: on_token saw {seen}, returned {res.tokens}"
        out[graph] = res, cache
    assert_same_tokens(out[True][0].tokens, out[False][0].tokens, "on_token stop after 7")
    assert_same_cache(out[True][1], out[False][1], "cache after an on_token stop", **cache_tol("float32"))
    streamed = []
    full = gen(m, e, m.make_cache(128), 20, graph=True, on_token=streamed.append)  # None: go on
    assert full.tokens == streamed and len(streamed) == 20


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_decode_stops_at_capacity(cuda_models, dtype):
    m = cuda_models[dtype]
    e = frame_embeds(m, 3)
    T = e.shape[1]
    out = {}
    for graph in (True, False):
        cache = m.make_cache(T + 9)  # room for 9 reply tokens, 40 asked
        ptr = storage_ptr(cache)
        res = gen(m, e, cache, 40, graph=graph)
        assert cache.length == cache.capacity, f"graph={graph}: length {cache.length} of {cache.capacity}"
        assert cache.next_position == cache.capacity and storage_ptr(cache) == ptr
        assert len(res.tokens) == 10, f"graph={graph}: {len(res.tokens)} tokens (9 fed + the last, unfed)"
        check_steps(res, graph, f"{dtype} capacity, graph={graph}")
        out[graph] = res, cache
    assert_same_tokens(out[True][0].tokens, out[False][0].tokens, f"{dtype}: reply cut by capacity")
    assert_same_cache(out[True][1], out[False][1], f"{dtype}: full cache", **cache_tol(dtype))


def test_graph_decode_stops_at_max_position(cuda_models):
    """A keep-mode cache whose positions reach max_position_embeddings: the reply ends there in both paths."""
    m = cuda_models["float32"]
    max_pos = m.config["text_config"]["max_position_embeddings"]
    g = torch.Generator().manual_seed(4)
    out = {}
    for graph in (True, False):
        cache = m.make_cache(4200)
        for n in (4096, max_pos - 4096 - 16):  # positions run on past what drop_all(keep) removes
            m.prefill(m.embed_tokens(torch.randint(60, 500, (1, n), generator=g).cuda()), cache, "frame")
            cache.drop_all(position_mode="keep")
        assert cache.length == 0 and cache.next_position == max_pos - 16
        res = gen(m, text_embeds(m, 70, 6), cache, 40, graph=graph)
        assert cache.next_position == max_pos, f"graph={graph}: next_position {cache.next_position}"
        assert len(res.tokens) == 11, f"graph={graph}: {len(res.tokens)} tokens for 10 positions left"
        check_steps(res, graph, f"max position, graph={graph}")
        out[graph] = res, cache
        g.manual_seed(4)
    assert_same_tokens(out[True][0].tokens, out[False][0].tokens, "reply cut by max_position_embeddings")
    assert_same_cache(out[True][1], out[False][1], "cache at the last position", **cache_tol("float32"))


def test_graph_decode_from_several_threads(cuda_models):
    """One model, four threads, a cache each, graph decoding at once: the tokens of sequential eager runs.
    And a cache mid-generation (held in on_token) refuses another thread."""
    import threading

    m = cuda_models["float32"]
    embeds = [frame_embeds(m, 10 + k) for k in range(4)]
    want = [gen(m, e, m.make_cache(128), 24, graph=False).tokens for e in embeds]
    got, errors = [None] * 4, []

    def work(k):
        try:
            for _ in range(2):
                got[k] = gen(m, embeds[k], m.make_cache(128), 24, graph=True).tokens
        except Exception as e:  # reported below, with the thread it came from
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for k in range(4):
        assert_same_tokens(got[k], want[k], f"thread {k}")

    cache = m.make_cache(128)
    started, release = threading.Event(), threading.Event()

    def hold(tok):
        started.set()
        release.wait(30)
        return False

    t = threading.Thread(target=lambda: gen(m, embeds[0], cache, 24, graph=True, on_token=hold))
    t.start()
    try:
        assert started.wait(30)
        with pytest.raises(RuntimeError, match="in use by another thread"):
            cache.drop_all()
    finally:
        release.set()
        t.join(30)
    assert [s.kind for s in cache.spans] == ["user", "assistant"] and len(cache.spans[1]) == 1


# ---- 6. The StreamRunner on CUDA, every strategy, against the same stream on the CPU -------------------

RUNNER_STRATEGIES = {
    "none": None,
    "drop_all": None,
    "drop_middle": {"last_keep_len": 128},
    "summarize_and_drop": {"summary_max_length": 24},
}


@pytest.fixture(scope="module")
def cuda_engine(tiny_model):
    return Engine(tiny_model, device="cuda")


def stream_runner(eng, strategy):
    return StreamRunner(
        eng,
        context_strategy_type=strategy,
        context_strategy_config=RUNNER_STRATEGIES[strategy],
        talk_policy="every_frame",
        max_seq_len=384,
        reserved_seq_len=48,
        max_new_tokens=12,
    )


FRAME_KEYS = (
    "frame_index",
    "talked",
    "text",
    "strategy_applied",
    "cache_len_before",
    "cache_len_peak",
    "cache_len_after",
)


@pytest.mark.parametrize("strategy", list(RUNNER_STRATEGIES))
def test_runner_streams_50_frames_on_cuda_as_on_cpu(cuda_engine, engine, strategy):
    data = video(50)
    gpu = stream_runner(cuda_engine, strategy)
    assert gpu.cache.device.type == "cuda"
    ptr = storage_ptr(gpu.cache)
    a = gpu.run_inference_on_video(data)
    frames, totals = a["frames"], a["totals"]
    assert totals["frames_processed"] == len(frames) == 50
    assert storage_ptr(gpu.cache) == ptr, "the runner's cache was reallocated"
    for f in frames:
        assert f["cache_len_peak"] <= gpu.max_seq_len, f"frame {f['frame_index']}: {f['cache_len_peak']} tokens"
        if strategy != "none" and f["cache_len_peak"] > gpu.strategy.ctxlen_to_reduce:
            assert f["strategy_applied"] == strategy and f["cache_len_after"] < f["cache_len_peak"], f
    compressions = totals["cache_compressions"]
    assert compressions == sum(f["strategy_applied"] is not None for f in frames)
    if strategy == "none":
        assert compressions == 0
    else:
        assert compressions >= 2, f"{strategy}: {compressions} compressions in 50 frames of a 384-token context"
    if strategy == "summarize_and_drop":
        assert len(a["summaries"]) == compressions
    assert len(a["predictions"]) == 50 and all(isinstance(p["text"], str) for p in a["predictions"])

    # The same stream in fp32 on the CPU says the same things and compresses at the same frames.
    b = stream_runner(engine, strategy).run_inference_on_video(data)
    for fa, fb in zip(frames, b["frames"]):
        got, want = [fa[k] for k in FRAME_KEYS], [fb[k] for k in FRAME_KEYS]
        assert got == want, (
            f"{strategy}: frame {fa['frame_index']} differs from the CPU run\n  cuda {got}\n  cpu  {want}"
        )
    assert [s["text"] for s in a["summaries"]] == [s["text"] for s in b["summaries"]]
    assert a["predictions"] == b["predictions"]


# ---- 7. The server on CUDA ---------------------------------------------------------------------------


def _image(seed, w=72, h=48):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _data_url(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _reference(eng, text, max_tokens, features=None):
    """The engine's own greedy reply to a prompt written out by hand (as tests/test_server.py)."""
    ids = eng.ids(text)
    cache = eng.backend.make_cache(ids.shape[1] + max_tokens)
    greedy = SamplingParams(max_new_tokens=max_tokens)
    r = eng.backend.generate(eng.backend.embed(ids, features), cache, greedy, [eng.eou_id])
    return eng.tokenizer.decode(r.tokens, skip_special_tokens=True).lstrip()


def test_server_chat_and_session_on_cuda(cuda_engine, engine):
    from prospect_core.server import start_in_thread

    srv = start_in_thread(cuda_engine)
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            health = http.get("/health").json()
            assert health["device"].startswith("cuda") and health["model_loaded"], health
            assert cuda_engine.backend.model.device.type == "cuda"

            r = http.post(
                "/v1/chat/completions",
                json={"model": "tiny", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 24},
            )
            assert r.status_code == 200, r.text
            msg = r.json()["choices"][0]["message"]
            assert msg["role"] == "assistant" and msg["content"], msg
            want = _reference(engine, f"<|im_start|>User: Go on.{EOU}\nAssistant:", 24)  # our CPU fp32 engine
            assert msg["content"] == want, f"CUDA reply {msg['content']!r} != CPU reply {want!r}"

            img = _image(1)
            r = http.post(
                "/v1/chat/completions",
                json={
                    "model": "tiny",
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": _data_url(img)}},
                                {"type": "text", "text": "What is this?"},
                            ],
                        }
                    ],
                    "max_tokens": 10,
                },
            )
            assert r.status_code == 200, r.text
            pv, mask = FramePreprocessor(engine.processor)(img)[:2]
            image_text = (
                "<fake_token_around_image><global-img>"
                + "<image>" * engine.backend.image_seq_len
                + "<fake_token_around_image>"
            )
            want = _reference(
                engine,
                f"<|im_start|>User:{image_text}What is this?{EOU}\nAssistant:",
                10,
                engine.backend.image_features(pv, mask),
            )
            assert r.json()["choices"][0]["message"]["content"] == want

            r = http.post("/v1/sessions", json={"context_strategy": "drop_middle", "talk_policy": "every_frame"})
            assert r.status_code == 200, r.text
            sid = r.json()["id"]
            r = http.post(
                f"/v1/sessions/{sid}/frames",
                json={
                    "frames": [{"time": t, "image_url": _data_url(_image(k))} for k, t in enumerate([0.5, 1.0, 1.5])]
                },
            )
            assert r.status_code == 200, r.text
            res = r.json()["results"]
            assert [x["frame_index"] for x in res] == [0, 1, 2] and all(x["talked"] for x in res), res
            assert all(b["cache_length"] > a["cache_length"] for a, b in zip(res, res[1:]))
            assert srv.app.state.sessions.get(sid).runner.cache.device.type == "cuda"
    finally:
        srv.stop()
