"""What an outside probe found: crashes, hangs and silent garbage in the core and the runner.

Anything that could crash or block the test process runs in a child process with a timeout, so a
regression fails the test instead of killing or hanging the suite.
"""

import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prospect_core
import prospect_core as pc
from prospect_core.runners import StreamRunner
from stream_fixtures import small_runner

VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def run_isolated(code, timeout=120):
    """Runs `code` in a fresh interpreter; returns (returncode, stdout + stderr); a hang is a failure."""
    try:
        p = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child process hung for {timeout} s")
    return p.returncode, p.stdout + p.stderr


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return Path(dst)


# ---- VideoReader from several threads ------------------------------------------------------------
@pytest.mark.skipif(not pc.has_opencv or not VIDEO.exists(), reason="needs OpenCV and opencv-doc's vtest.avi")
def test_video_reader_shared_by_threads_neither_crashes_nor_loses_frames():
    code = f"""
        import threading, prospect_core as pc
        expected = sum(1 for _ in pc.VideoReader({str(VIDEO)!r}, 4.0))
        for attempt in range(3):
            r = pc.VideoReader({str(VIDEO)!r}, 4.0)
            got, busy, lock = [], [0], threading.Lock()

            def work():
                while True:
                    try:
                        t, f = next(r)
                    except StopIteration:
                        return
                    except RuntimeError as e:
                        assert "in use by another thread" in str(e), e
                        with lock:
                            busy[0] += 1
                        continue
                    with lock:
                        got.append(t)

            threads = [threading.Thread(target=work) for _ in range(4)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            assert sorted(got) == sorted(set(got)) and len(got) == expected, (len(got), expected)
        print("OK", expected)
    """
    rc, out = run_isolated(code, timeout=300)
    assert rc == 0 and "OK" in out, out[-3000:]


# ---- The loader refuses special files -------------------------------------------------------------
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_loader_refuses_a_fifo_instead_of_blocking(tiny_model, tmp_path, name):
    model = copy_model(tiny_model, tmp_path / "m")
    (model / name).unlink()
    os.mkfifo(model / name)
    code = f"""
        import prospect_core as pc
        from prospect_core.engine import Engine
        for load in (lambda: pc.SmolVLM({str(model)!r}, "float32", "cpu"),
                     lambda: pc.load_model({str(model)!r}),
                     lambda: Engine({str(model)!r})):
            try:
                load()
            except ValueError as e:
                print("REFUSED", e)
            else:
                print("LOADED")
    """
    rc, out = run_isolated(code, timeout=60)
    assert rc == 0 and out.count("REFUSED") == 3 and "LOADED" not in out, out
    assert f"{name}" in out and ("FIFO" in out or "special file" in out), out


def test_video_reader_refuses_a_fifo(tmp_path):
    if not pc.has_opencv:
        pytest.skip("built without OpenCV")
    os.mkfifo(tmp_path / "clip.avi")
    code = f"""
        import prospect_core as pc
        try:
            pc.VideoReader({str(tmp_path / "clip.avi")!r})
        except ValueError as e:
            print("REFUSED", e)
    """
    rc, out = run_isolated(code, timeout=60)
    assert rc == 0 and "REFUSED" in out and "not a regular file" in out, out


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int32])
def test_integer_or_bool_weights_are_refused(tiny_model, tmp_path, dtype):
    from safetensors.torch import load_file, save_file

    model = copy_model(tiny_model, tmp_path / "m")
    weights = load_file(model / "model.safetensors")
    name = next(k for k in weights if k.endswith("norm.weight"))
    weights[name] = weights[name].to(dtype)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"weight '{name}' expected a floating dtype .*got"):
        prospect_core.load_model(model)


def test_tokenizer_without_end_of_utterance_is_refused(tiny_model, tmp_path):
    from prospect_core.engine import Engine

    model = copy_model(tiny_model, tmp_path / "m")
    for f in model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "processor")):
            f.write_text(f.read_text().replace("<end_of_utterance>", "<end_of_turn_x>"))
    with pytest.raises(ValueError, match="has no <end_of_utterance> token"):
        Engine(model)


# ---- The cache never shows or moves what it should not --------------------------------------------
def test_commit_without_write_exposes_no_stale_slots():
    c = pc.KVCache(2, 1, 4, 8)
    ones = [torch.ones(1, 1, 4, 4)] * 2
    c.append(ones, ones)
    c.truncate(1)  # slots 1..3 still hold the old ones
    for commit in (lambda: c.commit(2, "user"), lambda: c.commit_extend(2)):
        with pytest.raises(ValueError, match="tokens written since the last commit"):
            commit()
    assert c.length == 1 and len(c.spans) == 1
    c.write(0, torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    c.write(1, torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    with pytest.raises(ValueError, match="expected the 2 tokens written"):
        c.commit(3, "user")
    c.commit(2, "user")
    assert c.length == 3 and c.keys(0)[:, :, 1:].abs().sum() == 0


def test_surgery_refused_on_float8_moves_nothing():
    keys = torch.arange(6 * 4, dtype=torch.float32).view(1, 1, 6, 4).to(torch.float8_e4m3fn)
    pkv = tuple((keys.clone(), keys.clone()) for _ in range(3))
    before = [(k.view(torch.uint8).clone(), v.view(torch.uint8).clone()) for k, v in pkv]
    with pytest.raises(TypeError, match="float32, float16, bfloat16 or float64, got Float8_e4m3fn"):
        pc.drop_middle(pkv, 1, 2, position_mode="shift", rope_theta=1e4)
    for (k, v), (k0, v0) in zip(pkv, before):
        assert torch.equal(k.view(torch.uint8), k0) and torch.equal(v.view(torch.uint8), v0)


def test_surgery_checks_every_layer_before_the_first_moves():
    good = torch.randn(1, 2, 6, 4)
    expanded = torch.randn(1, 1, 6, 4).expand(1, 2, 6, 4)  # stride 0 over heads
    pkv = ((good.clone(), good.clone()), (expanded, expanded.clone()))
    before = pkv[0][0].clone()
    with pytest.raises(ValueError, match="do not overlap"):
        pc.drop_middle(pkv, 1, 2, position_mode="shift", rope_theta=1e4)
    assert torch.equal(pkv[0][0], before)
    with pytest.raises(TypeError, match="rope_theta expected a number, got str"):
        pc.drop_middle(((good.clone(), good.clone()),), 1, 2, position_mode="shift", rope_theta="1e4")


def test_rope_shift_refuses_an_expanded_tensor():
    row = torch.randn(1, 1, 1, 8)
    keys = row.expand(1, 2, 3, 8)
    with pytest.raises(ValueError, match="do not overlap.*strides"):
        pc.rope_shift_(keys, 3, 1e4)
    assert torch.equal(keys[0, 0, 0], row[0, 0, 0])  # nothing rotated, not even once per alias
    with pytest.raises(TypeError, match="got Float8_e5m2"):
        pc.rope_shift_(torch.zeros(1, 3, 4, dtype=torch.float8_e5m2), 1, 1e4)


# ---- The model's positions --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_model(tmp_path_factory):
    """The tiny preset with only 256 positions."""
    return prospect_core.make_model(
        tmp_path_factory.mktemp("short"), "tiny", overrides={"text_config.max_position_embeddings": 256}
    )


def test_engine_refuses_positions_past_max_position_embeddings(short_model):
    m = prospect_core.load_model(short_model)
    cache = m.make_cache(512)
    m.prefill(m.embed_tokens(torch.full((1, 250), 60)), cache)
    with pytest.raises(ValueError, match=r"positions 250..259 exceed the model's max_position_embeddings \(256\)"):
        m.prefill(m.embed_tokens(torch.full((1, 10), 60)), cache)
    assert cache.length == 250
    r = m.greedy_generate(m.embed_tokens(torch.full((1, 2), 60)), cache, 50, [])
    assert cache.next_position <= 256 and len(r.tokens) == 256 - 252 + 1  # stops at the last position


def test_runner_refuses_a_context_longer_than_the_model_positions(short_model):
    with pytest.raises(
        ValueError,
        match=r"max_seq_len expected <= the model's max_position_embeddings \(256\), "
        "got 512",
    ):
        small_runner(short_model)


def test_runner_with_kept_positions_stays_within_the_model_positions(short_model):
    r = StreamRunner(
        short_model,
        max_seq_len=256,
        reserved_seq_len=32,
        max_new_tokens=4,
        talk_policy="every_frame",
        context_strategy_config={"last_keep_len": 96, "position_mode": "keep"},
    )
    frames = [torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8) for _ in range(30)]
    out = r.run_inference_on_video({"frames": frames, "fps": 2.0})
    assert out["totals"]["frames_processed"] == 30 and out["totals"]["cache_compressions"] > 0
    assert max(f["max_position"] for f in out["frames"]) <= 256


def test_runner_refuses_a_context_too_small_for_one_frame(tiny_model):
    with pytest.raises(ValueError, match=r"max_seq_len expected >= \d+ \(the system prompt, one frame and a reply"):
        StreamRunner(
            tiny_model, max_seq_len=64, reserved_seq_len=8, max_new_tokens=20, context_strategy_type="drop_all"
        )


@pytest.mark.parametrize("t", [math.inf, math.nan, -1.0, "3"])
def test_runner_refuses_a_frame_time_that_is_not_finite_seconds(tiny_model, t):
    r = small_runner(tiny_model)
    r.reset()
    before = r.cache.length
    with pytest.raises(ValueError, match="t expected seconds, a finite number >= 0"):
        r.add_frame(torch.zeros(8, 8, 3, dtype=torch.uint8), 0, t)
    assert r.cache.length == before
    turn = {"role": "user", "time": t, "content": "hi"}
    with pytest.raises((ValueError, TypeError), match=r"\['time'\] expected seconds"):
        r.run_inference_on_video({"frames": [torch.zeros(8, 8, 3, dtype=torch.uint8)], "conversation": [turn]})


# ---- summarize_and_drop never overfills the cache ---------------------------------------------------
def test_summarize_and_drop_fits_its_summary_in_a_small_cache(tiny_model):
    """The probe's configuration: 640 tokens, 64 reserved, the default summary_max_length of 512."""
    r = StreamRunner(
        tiny_model,
        max_seq_len=640,
        reserved_seq_len=64,
        max_new_tokens=8,
        context_strategy_type="summarize_and_drop",
        talk_policy="every_frame",
    )
    frames = [torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8) for _ in range(40)]
    out = r.run_inference_on_video({"frames": frames, "fps": 2.0})
    assert out["totals"]["frames_processed"] == 40
    # It summarises, and the stream then goes on for frames before the next summary.
    assert 0 < out["totals"]["cache_compressions"] < 40 // 3 and out["summaries"]
    assert max(f["cache_len_peak"] for f in out["frames"]) <= 640
    assert all(s["text"] for s in out["summaries"])  # real summaries, cut to what fits
