"""Comparisons on many processes and machines with PyTorch's own launcher (torchrun).

The work is the list of (strategy, video) units in a fixed order; rank r takes units r, r + W, ...
Each unit is a file of its own, written as it finishes, so a unit finished by any rank is never redone,
whatever the world size of a later run. Rank 0 evaluates and writes the summary once all ranks are done.
"""

import os
from pathlib import Path


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def init(device: str):
    """Joins the process group torchrun describes (gloo on CPU, nccl on GPUs); returns (rank, world, device)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return rank, world, device


def run_units(strategies, records, cfg, rank, world):
    """This rank's share of the units not yet done. Returns the failures of every rank."""
    import datetime
    import traceback

    import torch.distributed as dist

    from prospect_core.compare import _runner_kwargs, run_videos
    from prospect_core.runners import StreamRunner

    units = [(s, r) for s in strategies for r in records]
    failures, runners = [], {}
    for s, rec in units[rank::world]:
        sdir = Path(cfg["out"]) / s
        if (sdir / "videos" / f"{rec['video_id']}.json").exists():
            continue
        sdir.mkdir(parents=True, exist_ok=True)
        with open(sdir / f"{s}.rank{rank}.log", "a") as log:
            try:
                if s not in runners:
                    runners[s] = StreamRunner(cfg["model"], **_runner_kwargs(cfg, s))
                run_videos(runners[s], [rec], sdir, s, dict(cfg, progress=False), log)
            except Exception as e:  # the other units go on; the run reports this one
                log.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} rank {rank} "
                          f"{rec['video_id']}: {traceback.format_exc()}")
                failures.append({"strategy": s, "video_id": rec["video_id"], "rank": rank, "error": repr(e)})
    gathered = [None] * world
    dist.all_gather_object(gathered, failures)
    return [f for part in gathered for f in part]
