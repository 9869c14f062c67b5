"""Per-frame latency and cache length over a long stream, for each strategy and an unbounded cache."""

import time

import numpy as np


def bench_long_stream(path, frames=1000, max_seq_len=1024):
    from prospect_core.runners import StreamRunner

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(16)]
    conv = [{"role": "user", "time": 0.5, "content": "Tell me what you see."}]
    out = {}
    runs = {
        "none": ("none", max_seq_len, None),
        "drop_all": ("drop_all", max_seq_len, None),
        "drop_middle": ("drop_middle", max_seq_len, {"last_keep_len": 256}),
        "summarize_and_drop": ("summarize_and_drop", max_seq_len, {"summary_max_length": 32}),
        # A cache that is never shrunk: it grows until the model's context (max_position_embeddings) is full.
        "unbounded": ("drop_all", None, None),
    }
    import json
    from pathlib import Path

    ctx = json.loads((Path(path) / "config.json").read_text())["text_config"]["max_position_embeddings"]
    for name, (strategy, msl, scfg) in runs.items():
        runner = StreamRunner(
            path,
            context_strategy_type=strategy,
            context_strategy_config=scfg,
            max_seq_len=msl or ctx,
            reserved_seq_len=128 if msl else 0,
            max_new_tokens=8,
            talk_policy="annotations",
        )
        if msl is None:
            runner.strategy.should_reduce_cache = lambda n: False  # never shrink: run out of context
        video = {"video_id": name, "frames": (images[i % 16] for i in range(frames)), "fps": 2.0, "conversation": conv}
        ms, lengths = [], []
        t0 = time.perf_counter()
        try:
            for rec in runner.stream(video):
                if msl is None and rec["strategy_applied"]:
                    break  # the unbounded cache would have to be shrunk here: out of context
                ms.append(rec["vision_ms"] + rec["prefill_ms"] + rec["decode_ms"])
                lengths.append(rec["cache_len_peak"])
        except ValueError:
            pass  # out of room
        out[name] = {"frames": len(ms), "ms": ms, "cache_len": lengths, "seconds": time.perf_counter() - t0}
    return out


def plot_long_stream(res, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, r in res.items():
        a.plot(r["ms"], label=name, lw=0.8)
        b.plot(r["cache_len"], label=name, lw=0.8)
    a.set_ylabel("ms per frame")
    b.set_ylabel("cache length")
    b.set_xlabel("frame (tiny preset)")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
