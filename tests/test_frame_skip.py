"""Opt-in frame skipping (RunnerConfig.skip_threshold): a frame nearly the last kept one skips the vision
encoder, the append and the talk decision; frames with turns are never skipped; the totals count skips."""

import numpy as np
import pytest

from prospect_core.config import RunnerConfig
from prospect_core.frames import frame_change, thumbnail
from stream_fixtures import CONVERSATION, small_runner, video


def still_video(n_frames, conversation=()):
    """One random frame repeated with a little noise (a fixed camera), then a different scene at the end."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (48, 64, 3)).astype(np.int16)
    frames = [np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(n_frames - 1)]
    frames.append(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return {"video_id": "still", "frames": frames, "fps": 2.0, "conversation": list(conversation)}


def test_frame_change_measures_the_thumbnails():
    a = np.zeros((40, 40, 3), np.uint8)
    b = np.full((40, 40, 3), 255, np.uint8)
    assert frame_change(thumbnail(a, "a"), thumbnail(a.copy(), "a")) == 0.0
    assert frame_change(thumbnail(a, "a"), thumbnail(b, "b")) == pytest.approx(1.0)
    half = a.copy()
    half[:, :20] = 255
    assert frame_change(thumbnail(a, "a"), thumbnail(half, "half")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="frame expected 3 colour channels"):
        thumbnail(np.zeros((4, 4, 2), np.uint8), "frame")


def test_still_frames_are_skipped_and_counted(tiny_model):
    runner = small_runner(tiny_model, skip_threshold=0.02, talk_policy="every_frame")
    out = runner.run_inference_on_video(still_video(8))
    skipped = [f["skipped"] for f in out["frames"]]
    assert skipped == [False] + [True] * 6 + [False]  # the new scene at the end is kept
    assert out["totals"]["frames_skipped"] == 6 and out["totals"]["frames_processed"] == 8
    for f in out["frames"][1:7]:
        assert f["cache_len_before"] == f["cache_len_after"] and not f["talked"] and f["vision_ms"] == 0.0
    assert all(p["frame_index"] in (0, 7) for p in out["predictions"])


def test_frames_with_turns_are_never_skipped(tiny_model):
    turns = [t for t in CONVERSATION if t["role"] == "user"]  # at 0.5 s and 9.0 s: frames 1 and 18
    runner = small_runner(tiny_model, skip_threshold=0.05)
    out = runner.run_inference_on_video(still_video(20, turns))
    kept = [f["frame_index"] for f in out["frames"] if not f["skipped"]]
    assert kept == [0, 1, 18, 19]


def test_changing_frames_and_threshold_zero_skip_nothing(tiny_model):
    runner = small_runner(tiny_model, skip_threshold=0.05)
    assert runner.run_inference_on_video(video(5))["totals"]["frames_skipped"] == 0  # random frames: ~0.1 apart
    runner = small_runner(tiny_model, skip_threshold=0.0)
    assert runner.run_inference_on_video(still_video(4))["totals"]["frames_skipped"] == 0


def test_off_by_default_and_records_unchanged(tiny_model):
    out = small_runner(tiny_model).run_inference_on_video(still_video(4))
    assert all("skipped" not in f for f in out["frames"])
    assert out["totals"]["frames_skipped"] == 0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1"])
def test_bad_threshold_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="skip_threshold expected a number in \\[0, 1\\] or None"):
        RunnerConfig(skip_threshold=bad)


def test_cli_flags_reach_the_runner_config():
    from prospect_core.cli import _runner_config, build_parser

    args = build_parser().parse_args(
        ["run", "--model", "m", "--video", "v.avi", "--weights", "int8", "--skip-threshold", "0.02"]
    )
    c = _runner_config(args)
    assert (c.weights, c.skip_threshold) == ("int8", 0.02)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--model", "m", "--video", "v.avi", "--weights", "int4"])


def test_live_add_frame_skips_too(tiny_model):
    """The server's sessions feed frames one at a time through add_frame: the same rule applies there."""
    runner = small_runner(tiny_model, skip_threshold=0.02)
    runner.ensure_context()
    frame = still_video(2)["frames"][0]
    first = runner.add_frame(frame, 0, 0.5)
    n = runner.cache.length
    second = runner.add_frame(frame.copy(), 1, 1.0)
    assert (first.skipped, second.skipped) == (False, True) and runner.cache.length == n
    third = runner.add_frame(frame, 2, 1.5, turns=[{"role": "user", "time": 1.5, "content": "Hi"}])
    assert third.skipped is False and runner.cache.length > n
