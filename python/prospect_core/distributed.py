"""Comparisons on many processes and machines with PyTorch's own launcher (torchrun).

The work is the list of (strategy, video) units in a fixed order; rank r takes units r, r + W, ...
Each unit is a file of its own, written as it finishes, so a unit finished by any rank is never redone,
whatever the world size of a later run. Rank 0 evaluates and writes the summary once all ranks are done.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from prospect_core.config import CompareConfig
from prospect_core.runners import StreamRunner
from prospect_core.video_unit import build_runner, now, run_videos

_own_group = False  # True once init() made the process group (a caller's own group is left to the caller)


def finish() -> None:
    """Leaves the process group init() made. A rank that exits with gloo's threads still running can die in
    std::terminate ("terminate called without an active exception") and fail the whole torchrun."""
    global _own_group
    if _own_group and dist.is_initialized():
        dist.destroy_process_group()
    _own_group = False


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def init(device: str) -> tuple[int, int, str]:
    """Joins the process group torchrun describes (gloo on CPU, nccl on GPUs); returns (rank, world, device)."""
    global _own_group
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        _own_group = True
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def run_units(strategies: list[str], records: list[dict], cfg: CompareConfig, rank: int, world: int) -> list[dict]:
    """This rank's share of the units not yet done. Returns the failures of every rank."""
    units = [(s, r) for s in strategies for r in records]
    failures: list[dict] = []
    runners: dict[str, StreamRunner] = {}
    for s, rec in units[rank::world]:
        sdir = Path(cfg.out) / s
        if (sdir / "videos" / f"{rec['video_id']}.json").exists():
            continue
        sdir.mkdir(parents=True, exist_ok=True)
        with open(sdir / f"{s}.rank{rank}.log", "a") as log:
            try:
                if s not in runners:
                    runners[s] = build_runner(cfg, s)
                run_videos(runners[s], [rec], sdir, s, cfg, log, progress=False)
            except Exception as e:  # the other units go on; the run reports this one
                log.write(f"{now()} rank {rank} {rec['video_id']}: {traceback.format_exc()}")
                failures.append({"strategy": s, "video_id": rec["video_id"], "rank": rank, "error": repr(e)})
    gathered: list[list[dict] | None] = [None] * world
    dist.all_gather_object(gathered, failures)
    return [f for part in gathered for f in part or []]
