"""The load test: 8 concurrent clients x 50 requests against `prospect serve`, mixing chat completions
with calls on their own sessions; zero errors, and every reply equal to the one the same calls get
when replayed alone (no crosstalk). Latency is reported by the benchmark, not asserted."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_eight_clients_fifty_requests_each(tiny_model, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/server_load.py"),
            "--model",
            str(tiny_model),
            "--clients",
            "8",
            "--requests",
            "50",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    (path,) = tmp_path.glob("server-load-*.json")
    res = json.loads(path.read_text())
    assert res["errors"] == [] and res["crosstalk"] == [], (res["errors"][:5], res["crosstalk"][:5])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert res["requests"] == 400
    assert {k: v["n"] for k, v in res["latency_ms_by_kind"].items()} == {
        "chat": 80,
        "frame": 160,
        "note": 80,
        "ask": 80,
    }
    assert res["compressions"] >= 8  # every session filled its context and was compressed under load
