"""torchrun: 2 CPU ranks (gloo) give the same metrics as one process; after one rank is killed, a run on
1 rank finishes without redoing the finished units."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from compare_fixtures import compare_args

ARGS = compare_args("drop_middle,drop_all", max_frames=10)
SKIP = {"metadata", "peak_memory_mb", "time_per_frame"}


def torchrun(n, model, out, **kw):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "prospect_core",
        *ARGS,
        "--model",
        str(model),
        "--out",
        str(out),
        "--launcher",
        "torchrun",
    ]
    return cmd


def metrics(out, s):
    m = json.loads((out / s / f"{s}_metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in SKIP}


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_resume_after_kill(tiny_model, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, "-m", "prospect_core", *ARGS, "--model", str(tiny_model), "--out", str(single)],
        check=True,
        capture_output=True,
        env=env,
        timeout=900,
    )

    two = tmp_path / "two"
    r = subprocess.run(torchrun(2, tiny_model, two), capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for s in ("drop_middle", "drop_all"):
        assert metrics(two, s) == metrics(single, s)
        for f in (single / s / "videos").glob("*.json"):
            a, b = json.loads(f.read_text()), json.loads((two / s / "videos" / f.name).read_text())
            assert a["predictions"] == b["predictions"]
        assert len(list((two / s).glob(f"{s}.rank*.log"))) == 2  # both ranks worked
    assert (two / "summary.md").read_text().count("| drop_") == 2

    killed = tmp_path / "killed"
    p = subprocess.Popen(
        torchrun(2, tiny_model, killed),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and len(list(killed.glob("*/videos/*.json"))) < 3:
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2, ranks
    os.kill(int(ranks[0]), signal.SIGKILL)  # one rank dies; torchrun then stops the other
    try:
        assert p.wait(timeout=300) != 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    done = {f: f.stat().st_mtime_ns for f in killed.glob("*/videos/*.json")}
    assert 3 <= len(done) < 8
    r = subprocess.run(torchrun(1, tiny_model, killed), capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(f.stat().st_mtime_ns == t for f, t in done.items())  # not redone with the new world size
    for s in ("drop_middle", "drop_all"):
        assert metrics(killed, s) == metrics(single, s)
