"""StreamRunner and the context strategies on long streams."""

import math

import pytest
import torch

from prospect_core import prompt
from prospect_core.context_strategies import BaseContextStrategy, ContextStrategyFactory
from prospect_core.runners import StreamRunner
from stream_fixtures import CONVERSATION, video

STRATEGY_CONFIG = {
    "none": None,
    "drop_all": None,
    "drop_middle": {"last_keep_len": 128},
    "summarize_and_drop": {"summary_max_length": 24},
}


def runner(tiny_model, strategy, backend="native", **kw):
    kw.setdefault("max_new_tokens", 12)
    kw.setdefault("max_seq_len", 512)
    kw.setdefault("reserved_seq_len", 64)
    return StreamRunner(
        tiny_model,
        context_strategy_type=strategy,
        backend=backend,
        context_strategy_config=STRATEGY_CONFIG[strategy],
        **kw,
    )


@pytest.mark.parametrize("strategy", list(STRATEGY_CONFIG))
def test_300_frame_stream_invariants(tiny_model, strategy):
    r = runner(tiny_model, strategy, talk_policy="every_frame")
    storage = r.cache.storage.data_ptr()
    out = r.run_inference_on_video(
        video(300, conversation=CONVERSATION + [{"role": "user", "time": 100.0, "content": "Am I done?"}])
    )
    frames, totals = out["frames"], out["totals"]
    assert totals["frames_processed"] == len(frames) == 300
    assert r.cache.storage.data_ptr() == storage  # never reallocated
    max_pos = r.backend.max_position_embeddings
    for f in frames:
        assert f["cache_len_peak"] <= r.max_seq_len  # the cache never overflows
        assert f["max_position"] <= max_pos  # shift mode keeps positions in the model's range
        if strategy != "none" and f["cache_len_peak"] > r.strategy.ctxlen_to_reduce:
            assert f["strategy_applied"] == strategy and f["cache_len_after"] < f["cache_len_peak"]
    compressions = totals["cache_compressions"]
    assert compressions == sum(f["strategy_applied"] is not None for f in frames)
    if strategy == "none":
        assert compressions == 0
    else:
        # Every frame appends at least its image tokens; the cache holds at most max_seq_len.
        assert compressions >= 300 * r.backend.image_seq_len // r.max_seq_len > 0
    assert totals["dialogues_generated"] == 300 == len(out["predictions"])
    assert totals["peak_cache_size"] == max(f["cache_len_peak"] for f in frames) <= r.max_seq_len
    if strategy == "summarize_and_drop":
        assert len(out["summaries"]) == compressions
    # Frame i carries time (i + 1) / fps.
    assert [f["time"] for f in frames[:3]] == [0.5, 1.0, 1.5]


@pytest.mark.slow
def test_2000_frame_stream_is_bounded(tiny_model):
    r = runner(tiny_model, "drop_middle", max_new_tokens=4)
    storage = r.cache.storage.data_ptr()
    peaks = [f["cache_len_peak"] for f in r.stream(video(2000))]
    assert len(peaks) == 2000 and max(peaks) <= r.max_seq_len
    assert r.cache.storage.data_ptr() == storage
    assert max(peaks[1000:]) <= max(peaks[:1000])  # attended length stays bounded: no growth late in the stream


def test_drop_middle_keeps_anchor_and_whole_recent_spans(tiny_model):
    r = runner(tiny_model, "drop_middle", talk_policy="annotations")
    applied = None
    for f in r.stream(video(80)):
        if f["strategy_applied"] and f["cache_len_after"] < f["cache_len_peak"]:
            applied = f
            break
    assert applied is not None
    spans = r.cache.spans
    assert [s.kind for s in spans[:2]] == ["system", "user"] and spans[0].pinned and spans[1].pinned
    recent = spans[2:]
    assert sum(len(s) for s in recent) <= 128
    assert all(s.kind in ("frame", "assistant", "user") for s in recent)
    frame_lens = {len(s) for s in recent if s.kind == "frame"}
    assert all(n >= r.backend.image_seq_len for n in frame_lens)  # whole frames only
    assert r.cache.next_position == r.cache.length  # shift mode: contiguous positions


def test_drop_middle_keep_mode_keeps_positions(tiny_model):
    r = StreamRunner(
        tiny_model,
        context_strategy_type="drop_middle",
        max_seq_len=512,
        reserved_seq_len=64,
        max_new_tokens=8,
        context_strategy_config={"last_keep_len": 128, "position_mode": "keep"},
    )
    frames = list(r.stream(video(60)))
    assert any(f["strategy_applied"] for f in frames)
    spans = r.cache.spans
    assert r.cache.next_position > r.cache.length  # positions kept counting past the dropped middle
    assert spans[-1].first_position - spans[-1].start == r.cache.next_position - r.cache.length


def test_drop_all_restarts_from_system_prompt(tiny_model):
    r = runner(tiny_model, "drop_all")
    for f in r.stream(video(60)):
        if f["strategy_applied"]:
            break
    nxt = next(iter(r.stream(video(1))))  # a fresh stream also starts from the system prompt
    assert nxt["cache_len_before"] == 0
    assert r.cache.spans[0].kind == "system" and r.cache.spans[0].pinned


@torch.no_grad()
def test_summarize_then_next_frame_equals_fresh_prefill(tiny_model):
    # A small ctxlen_to_reduce (96) so the compression comes after a frame, not before one.
    r = runner(tiny_model, "summarize_and_drop", talk_policy="annotations", max_seq_len=256, reserved_seq_len=160)
    conv = [{"role": "user", "time": 0.0, "content": "How do I make tea?"}]
    data = video(40, conversation=conv)
    it = r.stream(data)
    for f in it:
        if f["strategy_applied"] and f["cache_len_after"] < f["cache_len_peak"]:
            break
    else:
        pytest.fail("no compression happened after a frame")
    kinds = [s.kind for s in r.cache.spans]
    assert kinds == ["system", "summary"] and all(s.pinned for s in r.cache.spans)
    summary = r.strategy.summaries[-1]["text"]

    # The next frame on the runner's cache vs a fresh prefill of system + summary + that frame.
    i = f["frame_index"] + 1
    t = (i + 1) / data["fps"]
    pv, mask, _, _ = r.preprocess(data["frames"][i])
    be = r.backend
    feats = be.image_features(pv, mask)
    frame = r._ids(prompt.frame_turn(t, be.image_seq_len))[0]
    got = be.prefill(be.embed(frame.unsqueeze(0), feats), r.cache, "frame", i)
    fresh_ids = torch.cat(
        [r._ids(prompt.system_turn(r.system_prompt, first=True))[0], r._ids(prompt.summary_turn(summary))[0], frame]
    ).unsqueeze(0)
    fresh = be.prefill(be.embed(fresh_ids, feats), be.make_cache(256), "other")
    assert (got - fresh).abs().max().item() < 1e-4


def test_native_and_hf_backends_give_identical_turns(tiny_model):
    data = video(50)
    native = runner(tiny_model, "drop_middle", talk_policy="every_frame", max_seq_len=384, reserved_seq_len=48)
    hf = runner(
        tiny_model, "drop_middle", backend="hf", talk_policy="every_frame", max_seq_len=384, reserved_seq_len=48
    )
    calls = {"attn": 0, "vision": 0}
    hf.backend.model.model.text_model.layers[0].self_attn.register_forward_hook(
        lambda *a: calls.__setitem__("attn", calls["attn"] + 1)
    )
    hf.backend.model.model.vision_model.register_forward_hook(
        lambda *a: calls.__setitem__("vision", calls["vision"] + 1)
    )
    a = native.run_inference_on_video(data)
    b = hf.run_inference_on_video(data)
    assert a["totals"]["cache_compressions"] >= 2  # compressions, then more frames: the original crashed here
    assert [(p["frame_index"], p["text"]) for p in a["predictions"]] == [
        (p["frame_index"], p["text"]) for p in b["predictions"]
    ]
    assert len(a["predictions"]) == 50
    assert calls["vision"] == 50 and calls["attn"] > 50 * 2  # transformers' modules really ran
    assert [f["cache_len_after"] for f in a["frames"]] == [f["cache_len_after"] for f in b["frames"]]


def test_silence_threshold_policy(tiny_model):
    quiet = runner(tiny_model, "drop_middle", not_talk_threshold=0.0)  # any P(eou) > 0 means silence
    out = quiet.run_inference_on_video(video(10))
    assert out["totals"]["dialogues_generated"] == 0
    assert all(f["silence_prob"] is not None and not f["talked"] for f in out["frames"])
    # A silent frame leaves no "Assistant:" behind: the last span ends with the frame's own tokens.
    frame_ids = quiet._ids(prompt.frame_turn(5.0, quiet.backend.image_seq_len))[0]
    assert len(quiet.cache.spans[-1]) == len(frame_ids)
    talky = runner(tiny_model, "drop_middle", not_talk_threshold=1.0)
    assert talky.run_inference_on_video(video(10))["totals"]["dialogues_generated"] == 10


def test_annotations_policy_talks_at_reference_times(tiny_model):
    r = runner(tiny_model, "drop_middle", talk_policy="annotations")
    out = r.run_inference_on_video(video(24))
    want = sorted({math.floor(t["time"] * 2.0) for t in CONVERSATION if t["role"] == "assistant"})
    assert [p["frame_index"] for p in out["predictions"]] == want


def test_use_kv_cache_false_is_the_stateless_baseline(tiny_model):
    r = runner(tiny_model, "drop_middle", use_kv_cache=False)
    assert r.strategy.name == "none"
    frames = list(r.stream(video(12)))
    assert all(f["cache_len_before"] == 0 or f["strategy_applied"] is None for f in frames)
    assert frames[-1]["cache_len_peak"] > frames[0]["cache_len_peak"]  # the conversation so far grows


class KeepLastFrameOnly(BaseContextStrategy):
    name = "keep_last_frame"

    def handle_overflow(self, cache, last_msg, **context):
        frames = [s for s in cache.spans if s.kind == "frame"]
        cache.drop_spans([s.id for s in cache.spans if not s.pinned and s is not frames[-1]])
        return cache, last_msg


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_user_strategy_works_with_both_backends(tiny_model, backend):
    ContextStrategyFactory.register("keep_last_frame", KeepLastFrameOnly)
    r = StreamRunner(
        tiny_model,
        context_strategy_type="keep_last_frame",
        backend=backend,
        max_seq_len=384,
        reserved_seq_len=48,
        max_new_tokens=8,
    )
    frames = list(r.stream(video(40)))
    assert any(f["strategy_applied"] == "keep_last_frame" for f in frames)
    assert max(f["cache_len_peak"] for f in frames) <= 384


@torch.no_grad()
def test_strategy_inside_a_transformers_loop(tiny_model):
    from transformers import AutoModelForImageTextToText, DynamicCache

    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    t = model.config.text_config  # rope_parameters in transformers 5.x, rope_theta in 4.57
    theta = (getattr(t, "rope_parameters", None) or {}).get("rope_theta") or t.rope_theta
    s = ContextStrategyFactory.create_strategy("drop_middle", max_seq_len=96, reserved_seq_len=16, last_keep_len=32)
    cache = DynamicCache()
    for _step in range(20):
        model(input_ids=torch.randint(60, 500, (1, 9)), past_key_values=cache, use_cache=True)
        if s.should_reduce_cache(cache.get_seq_length()):
            cache, _ = s.handle_overflow(cache, None, keep_first=10, rope_theta=theta)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() <= 96


def test_prospect_cache_in_transformers_generate(tiny_model):
    from transformers import AutoModelForImageTextToText

    import prospect_core
    from prospect_core.hf import ProspectCache

    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    native = prospect_core.load_model(tiny_model)
    kv = native.make_cache(64)
    ptr = kv.storage.data_ptr()
    ids = torch.tensor([[60, 61, 62, 63]])
    out = model.generate(input_ids=ids, past_key_values=ProspectCache(kv), max_new_tokens=6, do_sample=False)
    ref = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref)
    assert kv.length == 4 + 5 and kv.storage.data_ptr() == ptr  # in place; the last token is not fed


@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        (
            {"context_strategy_type": "middle_out"},
            ValueError,
            "strategy_type expected one of .*drop_all, drop_middle.*got 'middle_out'",
        ),
        ({"torch_dtype": "int8"}, ValueError, "torch_dtype expected one of float32"),
        ({"backend": "onnx"}, ValueError, "backend expected one of native, hf"),
        ({"talk_policy": "always"}, ValueError, "talk_policy expected one of"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens expected an int >= 1"),
        ({"context_strategy_config": {"last_keep_len": -5}}, ValueError, "last_keep_len expected an int"),
        ({"context_strategy_config": {"keep_len": 5}}, ValueError, "unknown config keys \\['keep_len'\\]"),
        ({"reserved_seq_len": 5000}, ValueError, "reserved_seq_len expected an int in \\[0, max_seq_len=4096\\)"),
        ({"not_talk_threshold": 1.5}, ValueError, "not_talk_threshold expected a probability"),
    ],
)
def test_constructor_errors(tiny_model, kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        StreamRunner(tiny_model, **kwargs)


def test_video_data_errors(tiny_model):
    r = runner(tiny_model, "drop_middle")
    cases = [
        ([], TypeError, "video_data expected a dict"),
        ({"video_id": "x"}, ValueError, "expected 'frames'"),
        ({"frames": [], "fps": 0}, ValueError, "fps'\\] expected a positive number"),
        (
            {"frames": [], "conversation": [{"role": "bot", "time": 1, "content": "x"}]},
            ValueError,
            "\\['role'\\] expected system, user or assistant",
        ),
        (
            {"frames": [], "conversation": [{"role": "user", "time": -1, "content": "x"}]},
            ValueError,
            "\\['time'\\] expected seconds >= 0",
        ),
        ({"frames": [torch.zeros(4, 4)]}, ValueError, "frames'\\]\\[0\\] expected a 3-D image"),
        ({"frames": ["image.png"]}, TypeError, "frames'\\]\\[0\\] expected a PIL image"),
    ]
    for data, exc, fragment in cases:
        with pytest.raises(exc, match=fragment):
            r.run_inference_on_video(data)
    assert r.run_inference_on_video(video(3))["totals"]["frames_processed"] == 3  # still usable
