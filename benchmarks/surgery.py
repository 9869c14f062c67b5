"""drop_middle on a full cache: prospect in place vs the original torch.cat surgery.

Each variant runs in a fresh process, so its extra peak resident memory is its
own: the cache is filled, the peak counter is reset (/proc/self/clear_refs),
the surgery runs once, and the new peak minus the resident size before is the
extra memory. Default shape: the SmolVLM2-2.2B text decoder (24 layers, 32 KV
heads, head_dim 64) with 4,096 tokens in fp32, 1.6 GB of cache.

usage: python benchmarks/surgery.py [--repeats 3] [--layers 24 --kv-heads 32 --tokens 4096]
"""

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ["prospect_shift", "prospect_keep", "torch_cat"]


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def run_variant(variant, layers, heads, tokens, head_dim, keep_first, keep_last):
    import torch

    import prospect_core as pc

    torch.manual_seed(0)
    if variant.startswith("prospect"):
        # A stream's ledger: a pinned anchor, then frames of 64 tokens until the cache is full.
        cache = pc.KVCache(layers, heads, head_dim, tokens, rope_theta=100000.0)
        kv = lambda n: [torch.randn(1, heads, n, head_dim) for _ in range(layers)]  # noqa: E731
        cache.pin(cache.append(kv(keep_first), kv(keep_first), kind="system"))
        while cache.length < tokens:
            n = min(64, tokens - cache.length)
            cache.append(kv(n), kv(n), kind="frame")
        mode = variant.split("_")[1]
        op = lambda: cache.drop_middle(keep_last, position_mode=mode)  # noqa: E731
    else:
        legacy = [
            (torch.randn(1, heads, tokens, head_dim), torch.randn(1, heads, tokens, head_dim)) for _ in range(layers)
        ]

        def op():
            out = [
                (
                    torch.cat([k[:, :, :keep_first], k[:, :, -keep_last:]], 2),
                    torch.cat([v[:, :, :keep_first], v[:, :, -keep_last:]], 2),
                )
                for k, v in legacy
            ]
            legacy[:] = out  # the original replaced its cache with the new tensors

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    rss_before = _status("VmRSS")
    t0 = time.perf_counter()
    op()
    ms = (time.perf_counter() - t0) * 1e3
    extra = _status("VmHWM") - rss_before
    cache_bytes = layers * 2 * heads * tokens * head_dim * 4
    return {"variant": variant, "ms": ms, "extra_peak_bytes": max(extra, 0), "cache_bytes": cache_bytes}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--keep-first", type=int, default=300)
    ap.add_argument("--keep-last", type=int, default=512)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--json", help="the results file (default: surgery-<host>-<cpu>-<date>.json in --out)")
    a = ap.parse_args()
    shape = (a.layers, a.kv_heads, a.tokens, a.head_dim, a.keep_first, a.keep_last)
    if a.variant:
        print(json.dumps(run_variant(a.variant, *shape)))
        return

    rows = []
    for variant in VARIANTS:
        runs = []
        for _ in range(a.repeats):
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--layers",
                str(a.layers),
                "--kv-heads",
                str(a.kv_heads),
                "--head-dim",
                str(a.head_dim),
                "--tokens",
                str(a.tokens),
                "--keep-first",
                str(a.keep_first),
                "--keep-last",
                str(a.keep_last),
            ]
            runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
        cache_bytes = runs[0]["cache_bytes"]
        rows.append(
            {
                "variant": variant,
                "median_ms": statistics.median(r["ms"] for r in runs),
                "median_extra_peak_mb": statistics.median(r["extra_peak_bytes"] for r in runs) / 2**20,
                "extra_peak_fraction": statistics.median(r["extra_peak_bytes"] for r in runs) / cache_bytes,
                "runs": runs,
            }
        )

    base = next(r for r in rows if r["variant"] == "torch_cat")
    print(
        f"drop_middle on a {cache_bytes / 2**30:.2f} GiB cache ({a.layers} layers x {a.kv_heads} kv heads x "
        f"{a.tokens} tokens x {a.head_dim}, fp32), keep {a.keep_first} + {a.keep_last}; median of {a.repeats} "
        f"fresh processes\n"
    )
    print("| variant | time ms | speed-up vs torch.cat | extra peak MiB | extra peak / cache |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['median_ms']:.1f} | {base['median_ms'] / r['median_ms']:.2f}x | "
            f"{r['median_extra_peak_mb']:.1f} | {100 * r['extra_peak_fraction']:.2f}% |"
        )

    from common import machine, unused_path

    m = machine()
    result = {
        "benchmark": "surgery",
        "date": datetime.date.today().isoformat(),
        "machine": m,
        "shape": dict(zip(["layers", "kv_heads", "tokens", "head_dim", "keep_first", "keep_last"], shape)),
        "rows": rows,
    }
    out = Path(a.json) if a.json else unused_path(a.out, f"surgery-{m['slug']}-{result['date']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
