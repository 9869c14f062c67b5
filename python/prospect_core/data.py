"""ProAssist-format datasets: per video an id, a video (file or frame folder), fps, optional task
knowledge, and the conversation (role, time, content). A dataset is a JSON list or a JSONL file."""

import gzip
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from prospect_core.config import DEFAULT_FPS

OPENCV_DOC = Path("/usr/share/doc/opencv-doc")
SAMPLE = Path(__file__).parent / "data" / "sample.json"
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# A video_id names its result files (<out>/<strategy>/videos/<id>.json), so it must be a plain file name:
# no separators, no '.' or '..', not so long that the file system refuses it.
VIDEO_ID = re.compile(r"\w[\w.-]{0,127}")
# Far above any real turn or task description; a longer one is a broken record, better refused at load
# than found hours into a run.
MAX_TURN_CHARS = 20_000
MAX_KNOWLEDGE_CHARS = 100_000


class DatasetError(ValueError):
    """A record of a dataset file is malformed; the message names the record and the field."""


def _cache_dir():
    d = Path.home() / ".cache" / "prospect" / "videos"
    d.mkdir(parents=True, exist_ok=True)
    return d


def resolve_video(spec: str, base: Path) -> Path:
    """'opencv-doc:examples/data/vtest.avi', 'opencv-doc-gz:opencv4/html/box.mp4.gz' (unpacked once into
    ~/.cache/prospect/videos), or a path relative to the dataset file."""
    if spec.startswith("opencv-doc:"):
        path = OPENCV_DOC / spec.split(":", 1)[1]
    elif spec.startswith("opencv-doc-gz:"):
        src = OPENCV_DOC / spec.split(":", 1)[1]
        if not src.exists():
            raise FileNotFoundError(
                f"{src} not found: the sample videos come from Debian's opencv-doc package "
                "(apt-get install opencv-doc; scripts/setup.sh does it)"
            )
        path = _cache_dir() / src.name[:-3]
        if not path.exists():
            # A temp file of its own: torchrun's ranks (or threads) may unpack the same video at once.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
            try:
                with gzip.open(src, "rb") as fin, open(fd, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
    else:
        path = Path(spec) if Path(spec).is_absolute() else base / spec
    if not path.exists():
        hint = " (apt-get install opencv-doc)" if str(path).startswith(str(OPENCV_DOC)) else ""
        raise FileNotFoundError(f"video {path} not found{hint}")
    return path


def _check(cond, where, field, msg):
    if not cond:
        raise DatasetError(f"{where}: field '{field}' {msg}")


def _finite(x):
    # JSON readers accept Infinity and NaN, and True is an int to Python: neither is a time or a rate.
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_id(vid, where):
    _check(
        isinstance(vid, str) and VIDEO_ID.fullmatch(vid),
        where,
        "video_id",
        "expected a plain file name (letters, digits, '_', '-', '.'; not starting with '.' or '-'; "
        f"at most 128 characters), got {vid!r}",
    )


def _check_text(text, where, field, limit):
    _check(isinstance(text, str), where, field, f"expected a string, got {text!r:.80}")
    _check(len(text) <= limit, where, field, f"expected at most {limit} characters, got {len(text)}")


def _video_file(spec, where, base):
    try:
        path = resolve_video(spec, base)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{where}: field 'video': {e}") from e
    _check(path.is_file(), where, "video", f"expected a video file, got a folder or device: {str(path)!r}")
    return path


def _frames_dir(d, where, base):
    _check(isinstance(d, str), where, "frames_dir", f"expected a folder path, got {d!r}")
    folder = Path(d) if Path(d).is_absolute() else base / d
    _check(folder.is_dir(), where, "frames_dir", f"expected an existing folder, got {str(folder)!r}")
    _check(
        any(p.suffix.lower() in FRAME_SUFFIXES for p in folder.iterdir()),
        where,
        "frames_dir",
        f"expected a folder of {'/'.join(FRAME_SUFFIXES)} frames, got none in {str(folder)!r}",
    )
    return folder


def parse_record(rec, where: str, base: Path) -> dict:
    _check(isinstance(rec, dict), where, "<record>", f"expected an object, got {type(rec).__name__}")
    vid = rec.get("video_id", rec.get("video_uid"))
    _check(isinstance(vid, str) and vid, where, "video_id", f"expected a non-empty string, got {vid!r}")
    _check_id(vid, where)
    where = f"{where} ({vid})"
    fps = rec.get("fps", DEFAULT_FPS)
    _check(_finite(fps) and fps > 0, where, "fps", f"expected a finite number > 0, got {fps!r}")
    out = {"video_id": vid, "fps": float(fps)}
    if "frames_dir" in rec:
        out["frames_dir"] = str(_frames_dir(rec["frames_dir"], where, base))
    else:
        spec = rec.get("video", rec.get("video_path"))
        _check(isinstance(spec, str) and spec, where, "video", f"expected a video path, got {spec!r}")
        out["video_path"] = str(_video_file(spec, where, base))
    if "knowledge" in rec and rec["knowledge"] is not None:
        _check_text(rec["knowledge"], where, "knowledge", MAX_KNOWLEDGE_CHARS)
        out["knowledge"] = rec["knowledge"]
    conv = rec.get("conversation")
    _check(isinstance(conv, list), where, "conversation", f"expected a list of turns, got {type(conv).__name__}")
    for i, t in enumerate(conv):
        f = f"conversation[{i}]"
        _check(isinstance(t, dict), where, f, "expected an object with role, time, content")
        _check(
            t.get("role") in ("system", "user", "assistant"),
            where,
            f + ".role",
            f"expected system, user or assistant, got {t.get('role')!r}",
        )
        _check(
            _finite(t.get("time")) and t["time"] >= 0,
            where,
            f + ".time",
            f"expected seconds, a finite number >= 0, got {t.get('time')!r}",
        )
        _check_text(t.get("content"), where, f + ".content", MAX_TURN_CHARS)
    out["conversation"] = [{"role": t["role"], "time": float(t["time"]), "content": t["content"]} for t in conv]
    return out


def load_dataset(path) -> list:
    """Records from a JSON list or JSONL file; 'sample' is the bundled sample over opencv-doc videos."""
    path = SAMPLE if str(path) == "sample" else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} not found")
    text = path.read_text()
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path}: line {n} is not valid JSON ({e.msg})") from e
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
        if not isinstance(records, list):
            raise DatasetError(f"{path}: expected a JSON list of video records, got {type(records).__name__}")
    if not records:
        raise DatasetError(f"dataset {path} holds no video records: nothing to compare")
    out = [parse_record(r, f"{path.name} record {i}", path.parent) for i, r in enumerate(records)]
    check_video_ids(out, path.name)
    return out


def check_video_ids(records, where):
    """Each record's results are <video_id>.json: two ids that name one file would overwrite each other,
    including ids that differ only in case (one file on macOS and Windows)."""
    seen = {}
    for i, r in enumerate(records):
        vid = r.get("video_id")
        _check_id(vid, f"{where} record {i}")
        if vid.casefold() in seen:
            j, other = seen[vid.casefold()]
            how = "repeats" if other == vid else "differs only in case from"
            raise DatasetError(f"{where} record {i} ({vid}): field 'video_id' {how} record {j} ({other})")
        seen[vid.casefold()] = (i, vid)


def frames_of(record, max_frames=None):
    """The video_data the runner takes: a video_path, or the frames of a frame folder."""
    data = {k: v for k, v in record.items() if k != "frames_dir"}
    if "frames_dir" in record:
        from PIL import Image  # pillow: the hf extra's, needed only for frame folders

        files = sorted(p for p in Path(record["frames_dir"]).iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        data["frames"] = (Image.open(p) for p in files[:max_frames])
    if max_frames is not None:
        data["max_frames"] = max_frames
    return data
