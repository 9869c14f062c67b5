"""The benchmark scripts run end to end on small shapes, so they cannot rot (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_surgery_benchmark_smoke(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/surgery.py"),
            "--repeats",
            "1",
            "--layers",
            "2",
            "--kv-heads",
            "2",
            "--tokens",
            "1024",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| torch_cat |" in out
    result = json.loads(next(tmp_path.glob("surgery-*.json")).read_text())
    assert [r["variant"] for r in result["rows"]] == ["prospect_shift", "prospect_keep", "torch_cat"]
    assert all(r["median_ms"] > 0 and r["runs"][0]["cache_bytes"] == 2 * 2 * 2 * 1024 * 64 * 4 for r in result["rows"])


def test_harness_quick_smoke(tmp_path):
    """The whole harness on the tiny preset with one repetition."""
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/run.py"),
            "--quick",
            "--out",
            str(tmp_path),
            "--models",
            str(tmp_path / "models"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (js,) = [p for p in tmp_path.glob("*-quick.json")]
    res = json.loads(js.read_text())
    assert res["memory_bandwidth_gbs"] > 0 and res["matmul_gflops"] > 0
    (dec,) = res["decode"]
    assert dec["preset"] == "tiny" and dec["prospect_ms_per_token"] > 0 and dec["weight_bytes_per_token"] > 0
    assert {"transformers_generate_ms_per_token", "original_loop_ms_per_token"} <= set(dec)
    assert res["streaming"][0]["tokens_per_frame"] > 16
    assert set(res["long_stream"]) == {"none", "drop_all", "drop_middle", "summarize_and_drop", "unbounded"}
    assert (tmp_path / js.name.replace(".json", ".md")).read_text().startswith("# prospect benchmarks")
    assert list(tmp_path.glob("*-long-stream.png"))


def test_profile_vision_smoke(tiny_model):
    """The vision profile prints a table of ATen ops for both encoders."""
    for extra in ([], ["--transformers"]):
        r = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks/profile_vision.py"), "--model", str(tiny_model), "--rows", "5"]
            + extra,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Self CPU time total" in r.stdout and "aten::" in r.stdout
