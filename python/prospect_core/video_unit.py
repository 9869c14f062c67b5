"""The unit of a comparison's work: one strategy's runner over videos, each video's result written as it
finishes. compare.py runs a strategy's videos in a worker process; distributed.py runs (strategy, video)
units on torchrun ranks. Both call this module, which knows neither of them.

Per strategy folder: videos/<video_id>.json (a finished video), errors/<video_id>.json (a video that failed,
or the one a process died in), <strategy>.log. Files are written atomically, so a rerun resumes.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

import torch

from prospect_core.config import CompareConfig
from prospect_core.data import frames_of
from prospect_core.runners import StreamRunner


def write_json(path: Path | str, obj: Any) -> None:
    """Atomic: a reader (or a resumed run) never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def oracle_predictions(frames: list[dict], conversation: list[dict], fps: float) -> list[dict]:
    """The reference turns, replayed at the times the pipeline gave their frames."""
    times = {f["frame_index"]: f["time"] for f in frames}
    out = []
    for t in conversation:
        if t["role"] == "assistant":
            i = math.floor(t["time"] * fps)
            if i in times:
                out.append({"time": times[i], "frame_index": i, "text": t["content"]})
    return out


def build_runner(cfg: CompareConfig, strategy: str) -> StreamRunner:
    return StreamRunner(cfg.model, config=cfg.runner_for(strategy))


def run_videos(
    runner: StreamRunner,
    records: list[dict],
    sdir: Path,
    strategy: str,
    cfg: CompareConfig,
    log: TextIO,
    progress: bool | None = None,
) -> None:
    """Runs the records not yet done; writes <sdir>/videos/<video_id>.json for each, or, for a video
    that fails, <sdir>/errors/<video_id>.json, and goes on with the next."""
    from tqdm import tqdm  # the hf extra's; only a run that shows progress needs it

    vdir, edir = sdir / "videos", sdir / "errors"
    vdir.mkdir(parents=True, exist_ok=True)
    edir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in records if not (vdir / f"{r['video_id']}.json").exists()]
    show = cfg.progress if progress is None else progress
    for rec in tqdm(todo, desc=strategy, unit="video", disable=not show, file=sys.stderr):
        vid = rec["video_id"]
        # Written first, so a process that dies inside native code still leaves the name of the video.
        write_json(edir / f"{vid}.json", {"video_id": vid, "error": "the process died while running this video"})
        t0 = time.perf_counter()
        try:
            out = runner.run_inference_on_video(frames_of(rec, cfg.max_frames))
            if cfg.oracle:
                out["predictions"] = oracle_predictions(out["frames"], rec["conversation"], rec["fps"])
        except Exception as e:
            write_json(edir / f"{vid}.json", {"video_id": vid, "error": f"{type(e).__name__}: {e}"})
            log.write(f"{now()} {vid} failed:\n{traceback.format_exc()}")
            log.flush()
            continue
        out["video_id"] = vid
        write_json(vdir / f"{vid}.json", out)
        (edir / f"{vid}.json").unlink()
        t = out["totals"]
        log.write(
            f"{now()} {vid}: {t['frames_processed']} frames, {len(out['predictions'])} turns, "
            f"{t['cache_compressions']} compressions, {t['time_per_frame'] * 1e3:.1f} ms/frame, "
            f"{time.perf_counter() - t0:.1f} s\n"
        )
        log.flush()


def run_strategy(strategy: str, records: list[dict], cfg: CompareConfig) -> None:
    """One strategy over its videos, logged to <out>/<strategy>/<strategy>.log; what a worker process runs."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(cfg.runner.seed)
    sdir = Path(cfg.out) / strategy
    sdir.mkdir(parents=True, exist_ok=True)
    with open(sdir / f"{strategy}.log", "a") as log:
        try:
            run_videos(build_runner(cfg, strategy), records, sdir, strategy, cfg, log)
        except BaseException:
            log.write(traceback.format_exc())
            raise
