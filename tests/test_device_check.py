"""scripts/device_check.sh, the one script a lent GPU machine runs, dry-run here so it can't rot:
every step runs (build, the cuda-marked tests, the GPU benchmarks), the GPU parts say why they
skip, and what it leaves in $OUT fits what the device tool brings back."""

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: scripts/device_check.sh runs for real there")
    out = tmp_path_factory.mktemp("device-check")
    env = dict(os.environ, OUT=str(out), SITE=str(out.parent / "device-site"))
    r = subprocess.run(
        ["bash", "scripts/device_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    return r, out


def test_dry_run_passes_every_step(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    for step in ("build: ok", "pytest -m cuda: ok", "benchmarks --device cuda: ok", "every step passed"):
        assert step in summary, summary
    assert "a dry run (GPU parts skipped)" in summary
    assert "carried wheels: skipped (dry run" in summary
    # The build it installed is the one it tested: the flags are read from it.
    assert "built: has_cuda_graphs=" in summary


def test_dry_run_collects_the_cuda_tests_and_skips_them_with_a_reason(dry_run):
    _, out = dry_run
    suite = ET.parse(out / "junit-cuda.xml").getroot().find("testsuite")
    assert suite is not None
    total, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert total >= 20, f"only {total} cuda tests collected"
    assert skipped == total and int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    reasons = {s.get("message") for s in suite.iter("skipped")}
    assert reasons == {"needs a CUDA device"}, reasons


def test_dry_run_benchmarks_say_why_they_skip(dry_run):
    _, out = dry_run
    assert "no CUDA device" in (out / "bench.log").read_text()


def test_what_it_leaves_fits_the_device_tool(dry_run):
    # At most 8 files, at most two folders down, plain names: what comes back from $OUT.
    _, out = dry_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3, rel
        assert all(c.isalnum() or c in "._-" for part in rel.parts for c in part), rel
