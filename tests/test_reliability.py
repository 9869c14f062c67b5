"""Long streams and interrupted runs: memory stays flat, a killed comparison resumes cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from compare_fixtures import compare_args
from prospect_core.runners import StreamRunner


def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, config", [("drop_middle", {"last_keep_len": 128}), ("summarize_and_drop", {"summary_max_length": 16})]
)
def test_soak_5000_frames(tiny_model, strategy, config):
    r = StreamRunner(
        tiny_model,
        context_strategy_type=strategy,
        context_strategy_config=config,
        max_seq_len=512,
        reserved_seq_len=64,
        max_new_tokens=6,
        talk_policy="every_frame",
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
    video = {
        "video_id": "soak",
        "frames": (images[i % 8] for i in range(5000)),
        "fps": 2.0,
        "conversation": [{"role": "user", "time": 0.5, "content": "Keep an eye on this."}],
    }
    max_pos = r.backend.max_position_embeddings
    storage = r.cache.storage.data_ptr()
    warm = None
    n = 0
    for rec in r.stream(video):
        n += 1
        assert rec["cache_len_peak"] <= 512 and rec["max_position"] <= max_pos
        if n == 500:
            warm = rss_mb()
    end = rss_mb()
    assert n == 5000 and r.cache.storage.data_ptr() == storage
    assert end <= warm * 1.05, f"resident memory grew from {warm:.0f} MB to {end:.0f} MB"


def _compare_cmd(model, out):
    args = compare_args("drop_middle", max_frames=16)
    return [sys.executable, "-m", "prospect_core", *args, "--model", str(model), "--out", str(out)]


@pytest.mark.slow
def test_compare_killed_mid_run_resumes(tiny_model, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    full = tmp_path / "full"
    subprocess.run(_compare_cmd(tiny_model, full), check=True, capture_output=True, env=env, timeout=600)

    out = tmp_path / "killed"
    p = subprocess.Popen(
        _compare_cmd(tiny_model, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    vdir = out / "drop_middle" / "videos"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(vdir.glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the run and its worker, mid-video
    p.wait()
    done = {f.name: f.stat().st_mtime_ns for f in vdir.glob("*.json")}
    assert 2 <= len(done) < 4, done
    for f in vdir.glob("*.json"):
        json.loads(f.read_text())  # every finished file is whole

    subprocess.run(_compare_cmd(tiny_model, out), check=True, capture_output=True, env=env, timeout=600)
    after = {f.name: f.stat().st_mtime_ns for f in vdir.glob("*.json")}
    assert all(after[name] == t for name, t in done.items())  # finished videos were not redone
    assert len(after) == 4 and not list(out.rglob("*.tmp*"))
    a = json.loads((full / "drop_middle" / "drop_middle_metrics.json").read_text())
    b = json.loads((out / "drop_middle" / "drop_middle_metrics.json").read_text())
    skip = {"metadata", "peak_memory_mb", "time_per_frame"}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def test_threads(tiny_model):
    """A cache is one stream: another thread touching it mid-generate gets a clear error.
    One model serves several threads, each with its own cache."""
    import threading

    import torch

    import prospect_core

    m = prospect_core.load_model(tiny_model)
    ids = torch.tensor([[60, 61, 62]])
    cache = m.make_cache(64)
    started, release = threading.Event(), threading.Event()

    def hold(tok):
        started.set()
        release.wait(30)
        return False

    t = threading.Thread(target=lambda: m.greedy_generate(m.embed_tokens(ids), cache, 5, [], on_token=hold))
    t.start()
    assert started.wait(30)
    for call in (lambda: cache.drop_all(), lambda: cache.spans, lambda: m.prefill(m.embed_tokens(ids), cache)):
        with pytest.raises(RuntimeError, match="in use by another thread"):
            call()
    release.set()
    t.join()
    assert [s.kind for s in cache.spans] == ["user", "assistant"]  # intact, and free again

    want = [m.greedy_generate(m.embed_tokens(ids + k), m.make_cache(64), 16, []).tokens for k in range(4)]
    got = [None] * 4

    def work(k):
        got[k] = m.greedy_generate(m.embed_tokens(ids + k), m.make_cache(64), 16, []).tokens

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [x.start() for x in threads]
    [x.join() for x in threads]
    assert got == want
