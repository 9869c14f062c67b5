"""prospect compare on bad input: a bad dataset is refused before anything runs; a video that fails
mid-run fails alone, is reported by id, and the run exits non-zero with the rest scored."""

import json
from types import SimpleNamespace

import pytest

from prospect_core import compare as compare_mod
from prospect_core.cli import main
from prospect_core.compare import compare
from prospect_core.data import DatasetError

SMALL = ["--strategies", "none", "--max-seq-len", "512", "--max-new-tokens", "4", "--max-frames", "2"]
TURNS = [{"role": "assistant", "time": 0.5, "content": "Turn the box over."}]


def _frames(folder, n=2):
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (64, 48), (i * 60, 90, 30)).save(folder / f"{i:03d}.png")


def _record(vid, **video):
    return {"video_id": vid, "fps": 2, "conversation": TURNS, **(video or {"frames_dir": vid})}


def _compare_small(records, model, out, max_frames=2, **kw):
    """compare() on strategy none with SMALL's settings, no text metrics and no progress bar."""
    return compare(
        records,
        model,
        ["none"],
        out,
        max_seq_len=512,
        max_new_tokens=4,
        max_frames=max_frames,
        text_metrics=False,
        progress=False,
        **kw,
    )


def test_a_video_that_fails_fails_alone(tiny_model, tmp_path, capsys):
    _frames(tmp_path / "a")
    _frames(tmp_path / "c")
    (tmp_path / "b.avi").write_bytes(b"not a video " * 100)  # a regular file, so it passes the load checks
    ds = tmp_path / "d.json"
    ds.write_text(json.dumps([_record("a"), _record("b", video="b.avi"), _record("c")]))
    out = tmp_path / "out"
    rc = main(["compare", "--dataset", str(ds), "--model", str(tiny_model), "--out", str(out), *SMALL])
    printed = capsys.readouterr()
    assert rc == 1
    assert "1 (strategy, video) runs failed" in printed.err
    assert "- none, b: ValueError: VideoReader:" in printed.out  # the summary names the video and the cause
    m = json.loads((out / "none" / "none_metrics.json").read_text())
    assert m["videos_scored"] == 2 and m["frames_processed"] == 4  # the video after the failed one ran too
    assert [e["video_id"] for e in m["errors"]] == ["b"] and "could not be opened" in m["errors"][0]["error"]
    assert set(json.loads((out / "none" / "none_predictions.json").read_text())) == {"a", "c"}
    summary = json.loads((out / "summary.json").read_text())["strategies"]["none"]
    assert summary["errors"] == m["errors"]
    assert "- none, b:" in (out / "summary.md").read_text()


class _Died(BaseException):
    """What a crash in native code looks like from Python: nothing catches it."""


class _InProcess:
    """Stands in for the spawned worker: runs it here; a _Died that escapes is the process dying."""

    def __init__(self, target, args, name):
        self.target, self.args = target, args

    def start(self):
        try:
            self.target(*self.args)
            self.exitcode = 0
        except _Died:
            self.exitcode = -11

    def join(self):
        pass


def test_a_worker_that_dies_mid_video_costs_that_video(tiny_model, tmp_path, monkeypatch):
    from prospect_core.runners import StreamRunner

    real = StreamRunner.run_inference_on_video

    def run(self, video):
        if video["video_id"] == "b":
            raise _Died()
        return real(self, video)

    monkeypatch.setattr(StreamRunner, "run_inference_on_video", run)
    spawn = SimpleNamespace(Process=_InProcess)
    monkeypatch.setattr(compare_mod, "mp", SimpleNamespace(get_context=lambda kind: spawn))
    for v in "abc":
        _frames(tmp_path / v)
    records = [dict(_record(v), frames_dir=str(tmp_path / v)) for v in "abc"]
    results = _compare_small(records, tiny_model, tmp_path / "out")
    m = results["none"]["metrics"]
    assert m["videos_scored"] == 2 and m["frames_processed"] == 4
    assert m["errors"] == [{"video_id": "b", "error": "the process died while running this video"}]


def test_unsafe_video_id_in_a_record_list_is_refused(tiny_model, tmp_path):
    # Records handed to compare() skip the loader; their ids still name files. This one would land in
    # tmp_path, outside --out.
    _frames(tmp_path / "a")
    records = [dict(_record("a"), video_id="../../../../escape", frames_dir=str(tmp_path / "a"))]
    with pytest.raises(DatasetError, match="dataset record 0: field 'video_id' expected a plain file name"):
        _compare_small(records, tiny_model, tmp_path / "out", max_frames=1, workers=False)
    assert not list(tmp_path.rglob("escape*"))


def test_empty_dataset_exits_non_zero(tiny_model, tmp_path, capsys):
    ds = tmp_path / "empty.json"
    ds.write_text("[]")
    rc = main(["compare", "--dataset", str(ds), "--model", str(tiny_model), "--out", str(tmp_path / "out"), *SMALL])
    assert rc == 2
    assert f"prospect compare: dataset {ds} holds no video records" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dataset expected at least one video record, got none"):
        compare([], tiny_model, ["none"], tmp_path / "out")
