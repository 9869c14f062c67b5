"""torchrun: 2 CPU ranks (gloo) give the same metrics as one process; after one rank is killed, a run on
1 rank finishes without redoing the finished units."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch.distributed as dist

from compare_fixtures import compare_args
from prospect_core.distributed import Ranks, comparison_prefix

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


def on_ranks(world, fn):
    """fn(Ranks) on `world` threads that share one store, as torchrun's ranks share the rendezvous store;
    returns each rank's result or exception."""
    store, out = dist.HashStore(), [None] * world

    def rank(r):
        try:
            out[r] = fn(Ranks(r, world, "cpu", store, comparison_prefix(store, r)))
        except Exception as e:  # noqa: BLE001 - the test looks at each rank's outcome
            out[r] = e

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_gather_gives_rank0_every_ranks_items_after_the_slowest():
    def work(ranks):
        if ranks.rank == 2:
            time.sleep(0.3)  # the slowest rank: rank 0 must wait for it
        return ranks.gather([{"rank": ranks.rank}])

    got = on_ranks(3, work)
    assert got[0] == [{"rank": 0}, {"rank": 1}, {"rank": 2}]
    assert got[1] == [{"rank": 1}] and got[2] == [{"rank": 2}]


def test_second_comparison_in_one_group_uses_fresh_keys():
    def twice(ranks):
        first = ranks.gather([{"call": 1, "rank": ranks.rank}])
        again = Ranks(ranks.rank, ranks.world, "cpu", ranks.store, comparison_prefix(ranks.store, ranks.rank))
        return first, again.gather([{"call": 2, "rank": again.rank}])

    first, second = on_ranks(2, twice)[0]
    assert [f["call"] for f in first] == [1, 1] and [f["call"] for f in second] == [2, 2]


def test_rank0_first_runs_before_the_others_and_its_error_reaches_them():
    done = threading.Event()

    def prepare(ranks):
        def step():
            time.sleep(0.2)
            done.set()

        ranks.rank0_first(step)
        return done.is_set()  # every rank goes on only after rank 0's step

    assert on_ranks(2, prepare) == [True, True]

    def refuse(ranks):
        def step():
            raise ValueError("out: results made with other settings")

        ranks.rank0_first(step)

    errors = on_ranks(2, refuse)
    assert all(isinstance(e, ValueError) and "other settings" in str(e) for e in errors)
