"""The ProAssist-format dataset loader and the bundled sample."""

import json

import pytest

from prospect_core.data import DatasetError, load_dataset


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
    lines = [{"video_uid": "a", "frames_dir": "frames", "fps": 1,
              "conversation": [{"role": "assistant", "time": 1, "content": "hi"}]}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (rec,) = load_dataset(tmp_path / "d.jsonl")
    assert rec["video_id"] == "a" and rec["fps"] == 1.0 and rec["frames_dir"].endswith("frames")


@pytest.mark.parametrize("record, fragment", [
    ({"video": "x.avi", "conversation": []}, "record 0: field 'video_id' expected a non-empty string"),
    ({"video_id": "v", "video": "missing.avi", "conversation": []}, "missing.avi not found"),
    ({"video_id": "v", "video": "opencv-doc:examples/data/vtest.avi", "fps": -1, "conversation": []},
     "record 0 \\(v\\): field 'fps' expected a positive number"),
    ({"video_id": "v", "video": "opencv-doc:examples/data/vtest.avi", "conversation": "hi"},
     "field 'conversation' expected a list"),
    ({"video_id": "v", "video": "opencv-doc:examples/data/vtest.avi",
      "conversation": [{"role": "robot", "time": 1, "content": "x"}]}, "field 'conversation\\[0\\].role' expected"),
    ({"video_id": "v", "video": "opencv-doc:examples/data/vtest.avi",
      "conversation": [{"role": "user", "time": "soon", "content": "x"}]}, "field 'conversation\\[0\\].time'"),
    ({"video_id": "v", "frames_dir": "nowhere", "conversation": []}, "field 'frames_dir' expected an existing folder"),
])
def test_bad_records_name_record_and_field(tmp_path, record, fragment):
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
