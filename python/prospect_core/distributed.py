"""Comparisons on many processes and machines with PyTorch's own launcher (torchrun).

The work is the list of (strategy, video) units in a fixed order; rank r takes units r, r + W, ...
Each unit is a file of its own, written as it finishes, so a unit finished by any rank is never redone,
whatever the world size of a later run. Rank 0 evaluates and writes the summary once all ranks are done.

The ranks talk through the rendezvous store (a key-value store every rank reaches), never through a
collective: a gloo collective leaves its Python tensors to gloo's worker thread, which may free them
while the interpreter shuts down and abort the rank ("terminate called without an active exception").
A store call runs on the calling thread, and waits as long as the slowest rank's units take.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from prospect_core.config import CompareConfig
from prospect_core.runners import StreamRunner
from prospect_core.video_unit import build_runner, now, run_videos

WAIT = timedelta(days=30)  # for the slowest rank; torchrun stops the others when a rank dies

_own_group = False  # True once init() made the process group (a caller's own group is left to the caller)


@dataclass(frozen=True)
class Ranks:
    """This process's place among torchrun's ranks, and the store keys of one comparison."""

    rank: int
    world: int
    device: str
    store: Any  # torch.distributed.Store
    prefix: str  # this comparison's keys: a second comparison in the same group uses fresh ones

    def rank0_first(self, step: Callable[[], None]) -> None:
        """Runs step on rank 0 while the others wait; its error is raised on every rank (as ValueError)."""
        key = self.prefix + "first"
        if self.rank == 0:
            try:
                step()
            except Exception as e:
                self.store.set(key, json.dumps(str(e)))
                raise
            self.store.set(key, json.dumps(None))
            return
        self.store.wait([key], WAIT)
        error = json.loads(self.store.get(key))
        if error is not None:
            raise ValueError(error)

    def gather(self, items: list[dict]) -> list[dict]:
        """Rank 0 gets every rank's items, once every rank has sent them; the other ranks get their own."""
        self.store.set(f"{self.prefix}items/{self.rank}", json.dumps(items))
        if self.rank != 0:
            return items
        keys = [f"{self.prefix}items/{r}" for r in range(self.world)]
        self.store.wait(keys, WAIT)
        return [item for k in keys for item in json.loads(self.store.get(k))]


def finish() -> None:
    """Leaves the process group init() made."""
    global _own_group
    if _own_group and dist.is_initialized():
        dist.destroy_process_group()
    _own_group = False


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ


def init(device: str) -> Ranks:
    """Joins the process group torchrun describes (gloo on CPU, nccl on GPUs), or the caller's own, and
    gives this rank its device."""
    global _own_group
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        _own_group = True
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    store = dist.distributed_c10d._get_default_store()
    return Ranks(rank, world, device, store, comparison_prefix(store, rank))


def comparison_prefix(store: Any, rank: int) -> str:
    """Keys of this rank's next comparison. Every rank runs the same comparisons in the same order, so
    its own count names the same comparison on every rank; a torchrun restart starts a fresh count."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    n = store.add(f"prospect/{restart}/comparisons/{rank}", 1)
    return f"prospect/{restart}/{n}/"


def run_units(strategies: list[str], records: list[dict], cfg: CompareConfig, ranks: Ranks) -> list[dict]:
    """This rank's share of the units not yet done. Rank 0 gets the failures of every rank, the others
    their own."""
    units = [(s, r) for s in strategies for r in records]
    failures: list[dict] = []
    runners: dict[str, StreamRunner] = {}
    for s, rec in units[ranks.rank :: ranks.world]:
        sdir = Path(cfg.out) / s
        if (sdir / "videos" / f"{rec['video_id']}.json").exists():
            continue
        sdir.mkdir(parents=True, exist_ok=True)
        with open(sdir / f"{s}.rank{ranks.rank}.log", "a") as log:
            try:
                if s not in runners:
                    runners[s] = build_runner(cfg, s)
                run_videos(runners[s], [rec], sdir, s, cfg, log, progress=False)
            except Exception as e:  # the other units go on; the run reports this one
                log.write(f"{now()} rank {ranks.rank} {rec['video_id']}: {traceback.format_exc()}")
                failures.append({"strategy": s, "video_id": rec["video_id"], "rank": ranks.rank, "error": repr(e)})
    return ranks.gather(failures)
