"""End to end: every strategy over the bundled sample (real videos) with the tiny model.

`pytest -m e2e` runs them all, `pytest -m drop_middle` one strategy."""

import json

import pytest

from prospect_core.compare import compare

STRATEGIES = ["none", "drop_all", "drop_middle", "summarize_and_drop"]
SMALL = dict(
    max_seq_len=512,
    reserved_seq_len=64,
    last_keep_len=128,
    summary_max_length=24,
    max_new_tokens=12,
    max_frames=24,
    window=(-2.0, 4.0),
    progress=False,
)
FIELDS = [
    "frames_processed",
    "dialogues_generated",
    "dialogues_matched",
    "precision",
    "recall",
    "f1",
    "cache_compressions",
    "avg_cache_size",
    "peak_cache_size",
    "time_per_frame",
    "peak_memory_mb",
    "Bleu_1",
    "Bleu_4",
    "METEOR",
    "CIDEr",
]


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", [pytest.param(s, marks=getattr(pytest.mark, s)) for s in STRATEGIES])
def test_strategy_on_sample(tiny_model, tmp_path, strategy):
    out = tmp_path / "out"
    results = compare("sample", tiny_model, [strategy], out, **SMALL)
    m = results[strategy]["metrics"]
    sdir = out / strategy
    for f in [f"{strategy}_predictions.json", f"{strategy}_metrics.json", f"{strategy}.log"]:
        assert (sdir / f).exists(), f
    assert (out / "summary.json").exists() and (out / "summary.md").read_text().startswith("| strategy |")
    assert (out / "cache_length.png").stat().st_size > 1000
    on_disk = json.loads((sdir / f"{strategy}_metrics.json").read_text())
    for k in FIELDS:
        assert k in on_disk, k
    assert m["frames_processed"] == 24 + 17 + 24 + 23  # box, cup (17 frames), vtest, megamind, capped at 24
    for k in ("precision", "recall", "f1"):
        assert 0.0 <= m[k] <= 1.0
    assert m["peak_cache_size"] <= 512 and m["peak_memory_mb"] > 0 and m["time_per_frame"] > 0
    meta = on_disk["metadata"]
    assert meta["strategy_config"]["strategy"] == strategy and len(meta["weights_sha256_16"]) == 16
    assert "torch" in meta["versions"] and meta["embedder"]
    if strategy == "none":
        assert m["cache_compressions"] == 0
    else:
        assert m["cache_compressions"] > 0
    videos = json.loads((sdir / f"{strategy}_predictions.json").read_text())
    assert set(videos) == {"box", "cup", "vtest", "megamind"}


@pytest.mark.e2e
def test_oracle_scores_one(tiny_model, tmp_path):
    results = compare("sample", tiny_model, ["drop_middle"], tmp_path, oracle=True, **dict(SMALL, max_frames=None))
    m = results["drop_middle"]["metrics"]
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["dialogues_matched"] == 4 + 4 + 5 + 3


@pytest.mark.e2e
def test_resume_does_not_redo_finished_videos(tiny_model, tmp_path):
    first = compare("sample", tiny_model, ["drop_middle"], tmp_path, text_metrics=False, **SMALL)
    vdir = tmp_path / "drop_middle" / "videos"
    stamps = {p.name: p.stat().st_mtime_ns for p in vdir.glob("*.json")}
    (vdir / "vtest.json").unlink()  # as if the run had been interrupted before vtest finished
    second = compare("sample", tiny_model, ["drop_middle"], tmp_path, text_metrics=False, **SMALL)
    after = {p.name: p.stat().st_mtime_ns for p in vdir.glob("*.json")}
    assert all(after[n] == stamps[n] for n in stamps if n != "vtest.json")
    assert after["vtest.json"] != stamps["vtest.json"]
    strip = lambda m: {k: v for k, v in m.items() if k not in ("metadata", "peak_memory_mb", "time_per_frame")}  # noqa
    assert strip(first["drop_middle"]["metrics"]) == strip(second["drop_middle"]["metrics"])
    assert not list(tmp_path.rglob("*.tmp*"))  # no half-written file left behind
    # Resuming with other settings would mix two runs in one table: refused, naming what changed.
    with pytest.raises(ValueError, match="max_frames, max_new_tokens differ"):
        compare(
            "sample",
            tiny_model,
            ["drop_middle"],
            tmp_path,
            text_metrics=False,
            **dict(SMALL, max_frames=8, max_new_tokens=6),
        )


def test_run_cli_streams_the_dialogue(tiny_model):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "prospect_core",
            "run",
            "--video",
            "/usr/share/doc/opencv-doc/examples/data/tree.avi",
            "--model",
            str(tiny_model),
            "--talk-policy",
            "every_frame",
            "--max-new-tokens",
            "4",
            "--ask",
            "What grows here?",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "9 frames" and sum("assistant:" in x for x in lines) == 9
    assert lines[0].startswith("[    0.5s] assistant:")
    assert "stopped decoding after 68" in r.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "prospect_core", "run", "--video", "/nope.avi", "--model", str(tiny_model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "no such file: '/nope.avi'" in bad.stderr
