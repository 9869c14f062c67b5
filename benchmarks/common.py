"""Shared pieces of the benchmarks: timing, the memory-bandwidth and matmul roofs, machine info, file names."""

import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch


def median_ms(fn, repeats, warmup=1):
    """Median wall time of fn() in ms, after warm-up runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def median_ms_pair(fa, fb, repeats, warmup=1):
    """Median wall times of fa() and fb() in ms, run in turn, so a slow spell of a shared machine
    falls on both sides of a comparison rather than on one."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for i in range(repeats):
        pair = ((fa, ta), (fb, tb))
        for fn, times in pair if i % 2 == 0 else pair[::-1]:  # who goes first alternates too
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ta), statistics.median(tb)


def common_prefix(a, b):
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def unused_path(folder, stem, suffix=".json"):
    """folder/stem.suffix, or stem-2, stem-3, ... if taken: a second run the same day keeps the first's
    results (host and CPU name do not tell every machine apart)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def memory_bandwidth_gbs(mib=1024, tries=5):
    """Best of several full reads of a large fp32 tensor (a sum), at the current thread count."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    return x.numel() * 4 / best_seconds(lambda: x.sum(), tries) / 1e9


def matmul_gflops(n=3072, tries=5, dtype=torch.float32):
    """Best matrix-multiply rate in `dtype`: the compute roof for the vision encoder."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    return 2 * n**3 / best_seconds(lambda: a @ b, tries) / 1e9


def best_seconds(fn, tries):
    """The fastest of `tries` calls of fn, in seconds."""
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # Results are named by this: hosts here are all called "vm", the CPUs behind them differ.
    slug = "-".join([platform.node() or "host"] + re.sub(r"\(.*?\)", "", cpu).lower().split()[:2])
    return {
        "host": platform.node(),
        "slug": re.sub(r"[^a-z0-9.-]", "", slug.lower()),
        "cpu": cpu,
        "l3_cache": _read("/sys/devices/system/cpu/cpu0/cache/index3/size"),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "isa": _isa(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _isa():
    """The CPU's vector extensions that pick kernels here (from /proc/cpuinfo's flags)."""
    wanted = (
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_bf16",
    )
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def _read(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None
