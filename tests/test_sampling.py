"""Sampling settings from the runner to the decode loop: top_p in the Python loop as in the C++ one,
RunnerConfig as the runner's one set of settings, and the typed records' dict form."""

import json

import pytest
import torch

import prospect_core
from prospect_core.config import FrameRecord, RunnerConfig, RunTotals, SamplingParams, TurnRecord
from prospect_core.runners import StreamRunner
from prospect_core.sampling import pick_token, python_generate
from stream_fixtures import video

# A small runner that answers every frame: the settings the runner tests below share.
SMALL_RUNNER = dict(
    max_seq_len=512,
    reserved_seq_len=64,
    max_new_tokens=6,
    talk_policy="every_frame",
    context_strategy_type="drop_all",
)


class PythonLoopOverNative:
    """The native model behind the Python decode loop's interface, so both loops run on the same logits."""

    def __init__(self, model):
        self.model = model

    def embed(self, ids, features=None):
        return self.model.embed_tokens(ids)

    def prefill(self, embeds, cache, kind, frame_index=None, extend=False):
        return self.model.prefill(embeds, cache, kind, frame_index)


def test_top_p_keeps_the_smallest_prefix_that_reaches_it():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    gen = torch.Generator().manual_seed(0)
    for top_p, kept in [(0.7, {1, 3}), (0.85, {1, 3, 2}), (0.4, {1}), (1.0, {0, 1, 2, 3})]:
        seen = {pick_token(logits, 1.0, top_p, gen) for _ in range(400)}
        assert seen == kept, top_p


def test_python_loop_samples_the_tokens_the_cpp_loop_samples(tiny_model):
    m = prospect_core.load_model(tiny_model)
    e = m.embed_tokens(torch.tensor([[50, 51, 52, 53]]))
    for top_p in (1.0, 0.9, 0.3):
        cpp = m.greedy_generate(e, m.make_cache(64), 16, [], temperature=1.5, top_p=top_p, seed=7).tokens
        sampling = SamplingParams(temperature=1.5, top_p=top_p, seed=7, max_new_tokens=16)
        py = python_generate(PythonLoopOverNative(m), e, m.make_cache(64), sampling, []).tokens
        assert py == cpp, top_p
    # The settings are checked once, in SamplingParams; the loop takes nothing else (no dict of keywords).
    with pytest.raises(TypeError, match="sampling expected a SamplingParams, got dict"):
        python_generate(PythonLoopOverNative(m), e, m.make_cache(64), {"top_p": 0.5}, [])


def test_runner_passes_top_p_to_the_engine(tiny_model):
    """top_p this small keeps only the likeliest token: any temperature, any seed, gives the greedy reply."""
    kw = SMALL_RUNNER
    greedy = StreamRunner(tiny_model, **kw).run_inference_on_video(video(3))
    narrow = StreamRunner(tiny_model, temperature=1.5, top_p=1e-9, seed=5, **kw).run_inference_on_video(video(3))
    wide = StreamRunner(tiny_model, temperature=1.5, seed=5, **kw).run_inference_on_video(video(3))
    texts = lambda out: [f["text"] for f in out["frames"]]  # noqa: E731
    assert texts(narrow) == texts(greedy) != texts(wide)


def test_runner_config_is_the_keyword_arguments(tiny_model):
    cfg = RunnerConfig(**SMALL_RUNNER)
    a = StreamRunner(tiny_model, config=cfg)
    b = StreamRunner(tiny_model, **SMALL_RUNNER)
    assert a.config == b.config and a.strategy.config() == b.strategy.config()
    with pytest.raises(TypeError, match="config expected a RunnerConfig"):
        StreamRunner(tiny_model, config={"max_seq_len": 512})


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"top_p": 0.0}, r"top_p expected a number in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p expected a number in \(0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens expected an int >= 1"),
        ({"talk_policy": "always"}, "talk_policy expected one of"),
    ],
)
def test_bad_settings_are_refused_before_anything_loads(kw, match):
    with pytest.raises(ValueError, match=match):
        RunnerConfig(**kw)
    with pytest.raises(ValueError, match=match):
        StreamRunner("/nonexistent/checkpoint", **kw)  # the settings fail first, not the path


def test_sampling_params_check_their_values():
    assert SamplingParams(temperature=0.7, top_p=0.9, seed=None).top_p == 0.9
    with pytest.raises(ValueError, match="temperature expected a number >= 0"):
        SamplingParams(temperature=-1)
    # Each value is checked once, here: a wrong type is a TypeError, a value out of range a ValueError, and
    # both name the argument, what it takes and what it got.
    cases = [
        ({"temperature": "0.7"}, TypeError, "temperature expected a number >= 0, got str"),
        ({"temperature": float("nan")}, ValueError, "temperature expected a number >= 0, got nan"),
        ({"top_p": True}, TypeError, r"top_p expected a number in \(0, 1\], got bool"),
        ({"max_new_tokens": 2.0}, TypeError, "max_new_tokens expected an int >= 0, got float"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens expected an int >= 0, got -1"),
        ({"seed": 1.5}, TypeError, "seed expected an int or None, got float"),
        ({"seed": 2**64}, ValueError, r"seed expected an int in \[0, 2\*\*64\), got 18446744073709551616"),
        ({"stop": ("a", 1)}, TypeError, "stop expected a tuple of strings"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            SamplingParams(**kw)
    assert SamplingParams(max_new_tokens=0).max_new_tokens == 0  # generate: the prompt only, no reply
    assert SamplingParams(stop=["x"]).stop == ("x",)


def test_records_read_as_dicts_and_write_the_same_json():
    f = FrameRecord(frame_index=3, time=2.0, cache_len_before=10, talked=True, text="hi", cache_len_after=40)
    assert f["talked"] and f.get("tokens") is None and "vision_ms" in f
    assert list(f) == [
        "frame_index",
        "time",
        "cache_len_before",
        "strategy_applied",
        "vision_ms",
        "decode_ms",
        "silence_prob",
        "prefill_ms",
        "talked",
        "text",
        "cache_len_peak",
        "max_position",
        "cache_len_after",
    ]
    assert json.loads(json.dumps(f.to_dict())) == dict(f)
    silent_turn = TurnRecord(frame_index=None, time=None, cache_len_before=0)
    assert "tokens" not in silent_turn and TurnRecord(0, 1.0, 0, tokens=[5])["tokens"] == [5]
    t = RunTotals.combine(
        [
            RunTotals(frames_processed=2, avg_cache_size=10.0, peak_cache_size=30),
            RunTotals(frames_processed=6, avg_cache_size=20.0, peak_cache_size=20),
        ]
    )
    assert (t.frames_processed, t.avg_cache_size, t.peak_cache_size) == (8, 17.5, 30)
