"""The benchmark scripts run end to end on small shapes, so they cannot rot (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_surgery_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/surgery.py"), "--repeats", "1", "--layers", "2",
                          "--kv-heads", "2", "--tokens", "1024", "--out", str(tmp_path)],
                         check=True, capture_output=True, text=True).stdout
    assert "| torch_cat |" in out
    result = json.loads(next(tmp_path.glob("surgery-*.json")).read_text())
    assert [r["variant"] for r in result["rows"]] == ["prospect_shift", "prospect_keep", "torch_cat"]
    assert all(r["median_ms"] > 0 and r["runs"][0]["cache_bytes"] == 2 * 2 * 2 * 1024 * 64 * 4 for r in result["rows"])
