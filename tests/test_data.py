"""The ProAssist-format dataset loader and the bundled sample."""

import json

import pytest

from prospect_core.data import DatasetError, load_dataset

VIDEO = "opencv-doc:examples/data/vtest.avi"


def test_sample_resolves_real_videos():
    records = load_dataset("sample")
    assert [r["video_id"] for r in records] == ["box", "cup", "vtest", "megamind"]
    for r in records:
        assert r["video_path"].endswith((".mp4", ".avi"))
        assert any(t["role"] == "assistant" for t in r["conversation"])
    assert records[0]["knowledge"].startswith("To inspect a box")


def test_jsonl_and_frame_folders(tmp_path):
    from PIL import Image

    (tmp_path / "frames").mkdir()
    for i in range(3):
        Image.new("RGB", (32, 24), (i * 40, 0, 0)).save(tmp_path / "frames" / f"{i:04d}.png")
    lines = [
        {
            "video_uid": "a",
            "frames_dir": "frames",
            "fps": 1,
            "conversation": [{"role": "assistant", "time": 1, "content": "hi"}],
        }
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (rec,) = load_dataset(tmp_path / "d.jsonl")
    assert rec["video_id"] == "a" and rec["fps"] == 1.0 and rec["frames_dir"].endswith("frames")


@pytest.mark.parametrize(
    "record, fragment",
    [
        ({"video": "x.avi", "conversation": []}, "record 0: field 'video_id' expected a non-empty string"),
        (
            {"video_id": "v", "video": "missing.avi", "conversation": []},
            "record 0 \\(v\\): field 'video'.*missing.avi not found",
        ),
        ({"video_id": "v", "video": "empty", "conversation": []}, "field 'video' expected a video file, got a folder"),
        (
            {"video_id": "v", "video": "opencv-doc:examples/data/vtest.avi", "fps": -1, "conversation": []},
            "record 0 \\(v\\): field 'fps' expected a finite number > 0, got -1",
        ),
        (
            {"video_id": "v", "video": "opencv-doc:examples/data/vtest.avi", "conversation": "hi"},
            "field 'conversation' expected a list",
        ),
        (
            {
                "video_id": "v",
                "video": "opencv-doc:examples/data/vtest.avi",
                "conversation": [{"role": "robot", "time": 1, "content": "x"}],
            },
            "field 'conversation\\[0\\].role' expected",
        ),
        (
            {
                "video_id": "v",
                "video": "opencv-doc:examples/data/vtest.avi",
                "conversation": [{"role": "user", "time": "soon", "content": "x"}],
            },
            "field 'conversation\\[0\\].time'",
        ),
        (
            {"video_id": "v", "frames_dir": "nowhere", "conversation": []},
            "field 'frames_dir' expected an existing folder",
        ),
        (
            {"video_id": "v", "frames_dir": "empty", "conversation": []},
            "field 'frames_dir' expected a folder of .*frames",
        ),
        # JSON readers accept Infinity and NaN; a time or rate that is not a finite number breaks the run later.
        (
            {"video_id": "v", "video": VIDEO, "fps": float("inf"), "conversation": []},
            "record 0 \\(v\\): field 'fps' expected a finite number > 0, got inf",
        ),
        (
            {"video_id": "v", "video": VIDEO, "fps": True, "conversation": []},
            "field 'fps' expected a finite number > 0",
        ),
        (
            {"video_id": "v", "video": VIDEO, "conversation": [{"role": "user", "time": float("inf"), "content": "x"}]},
            "field 'conversation\\[0\\].time' expected seconds, a finite number >= 0, got inf",
        ),
        (
            {"video_id": "v", "video": VIDEO, "conversation": [{"role": "user", "time": 1, "content": "x" * 10**7}]},
            "field 'conversation\\[0\\].content' expected at most 20000 characters, got 10000000",
        ),
        (
            {"video_id": "v", "video": VIDEO, "knowledge": "x" * 10**6, "conversation": []},
            "field 'knowledge' expected at most 100000 characters, got 1000000",
        ),
    ],
)
def test_bad_records_name_record_and_field(tmp_path, record, fragment):
    (tmp_path / "empty").mkdir()
    (tmp_path / "d.json").write_text(json.dumps([record]))
    with pytest.raises((DatasetError, FileNotFoundError), match=fragment):
        load_dataset(tmp_path / "d.json")


def test_bad_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(DatasetError, match="a.json: not valid JSON"):
        load_dataset(tmp_path / "a.json")
    (tmp_path / "b.jsonl").write_text('{"video_id": "x"}\n{oops\n')
    with pytest.raises(DatasetError, match="b.jsonl: line 2 is not valid JSON"):
        load_dataset(tmp_path / "b.jsonl")
    (tmp_path / "c.json").write_text(json.dumps({"video_id": "x"}))
    with pytest.raises(DatasetError, match="expected a JSON list"):
        load_dataset(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError, match="dataset .*nope.json not found"):
        load_dataset(tmp_path / "nope.json")


def _write(tmp_path, records, name="d.json"):
    (tmp_path / name).write_text(json.dumps(records))
    return tmp_path / name


@pytest.mark.parametrize("vid", ["../../../x", "/tmp/x", "a/b", "..", "a\\b", "x" * 200])
def test_video_ids_must_be_plain_file_names(tmp_path, vid):
    # The id names the result files: one that climbs out of --out must not get that far.
    path = _write(tmp_path, [{"video_id": vid, "video": VIDEO, "conversation": []}])
    with pytest.raises(DatasetError, match="d.json record 0: field 'video_id' expected a plain file name"):
        load_dataset(path)


def test_duplicate_video_ids_are_refused(tmp_path):
    rec = lambda vid: {"video_id": vid, "video": VIDEO, "conversation": []}  # noqa: E731
    with pytest.raises(DatasetError, match="record 2 \\(box\\): field 'video_id' repeats record 0"):
        load_dataset(_write(tmp_path, [rec("box"), rec("cup"), rec("box")]))
    # box.json and Box.json are one file on macOS and Windows.
    with pytest.raises(DatasetError, match="record 1 \\(Box\\): field 'video_id' differs only in case from record 0"):
        load_dataset(_write(tmp_path, [rec("box"), rec("Box")]))


@pytest.mark.parametrize("name, text", [("e.json", "[]"), ("e.jsonl", "\n  \n")])
def test_empty_dataset_is_refused(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=f"dataset .*{name} holds no video records"):
        load_dataset(tmp_path / name)


def test_gzipped_video_unpacked_by_many_at_once(tmp_path, monkeypatch):
    """torchrun's ranks unpack a sample video into an empty cache at the same moment: each gets the whole
    file, and no temp file is left."""
    import gzip
    import threading

    from prospect_core.data import OPENCV_DOC, resolve_video

    monkeypatch.setenv("HOME", str(tmp_path))
    spec = "opencv-doc-gz:opencv4/html/box.mp4.gz"
    start, got, errors = threading.Barrier(4), [], []

    def unpack():
        start.wait()
        try:
            got.append(resolve_video(spec, tmp_path))
        except Exception as e:  # noqa: BLE001 - the test reports every thread's failure
            errors.append(e)

    threads = [threading.Thread(target=unpack) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(got)) == 1 and got[0].parent == tmp_path / ".cache" / "prospect" / "videos"
    assert got[0].read_bytes() == gzip.decompress((OPENCV_DOC / "opencv4/html/box.mp4.gz").read_bytes())
    assert [p.name for p in got[0].parent.iterdir()] == ["box.mp4"]
