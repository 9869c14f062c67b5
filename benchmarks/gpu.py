"""The GPU benchmarks: decode, the streaming step and cache surgery on CUDA, in bf16, on the 2.2b preset.

usage: python benchmarks/run.py --device cuda [--quick] [--repeats 3] [--deadline 150]
   or: python benchmarks/gpu.py [--quick] [--repeats 3] [--deadline 150] [--out DIR] [--models DIR]
Writes <out>/gpu-<date>.json and .md (gpu-<date>-quick for --quick; -2, -3, ... when taken), again after
every part, so a run stopped part-way keeps what it measured. Without a CUDA device it says so and exits 0.
--quick: the tiny preset, one repetition, 16 tokens, 4 frames, a small surgery shape (a smoke run).

What each figure is (all on one GPU, batch 1, bf16; the model is the 2.2b preset with random weights, made
on the GPU by make_model(..., device="cuda") into <models>/2.2b-bfloat16 when absent):
- ceilings.copy_gbs: bytes read + bytes written by a device-to-device copy of a 2 GiB tensor, over its
  CUDA-event time, median of 10 after 3 warm-ups. ceilings.matmul_tflops: 2 * 8192^3 / the event time of a
  bf16 8192 x 8192 matmul on random data, median of 10 after 3 warm-ups.
- decode.<variant>.ms_per_token: (T(N) - T(1)) / (N - 1), where T(k) is the median host time of a whole
  generate call of k new tokens from the same 16-token prompt, synchronized before and after. The
  difference removes the prefill and the per-call overhead and leaves N - 1 decode steps, for every engine
  alike: ours runs N forwards in a call of N (the first token comes from the prefill, the last is written
  to the cache), generate() runs N - 1. Every call makes exactly N tokens (ours: no stop tokens;
  generate(): min_new_tokens = max_new_tokens = N). Variants: ours_graph (greedy_generate(...,
  cuda_graph=True)), ours_eager (cuda_graph=False), transformers_eager (generate() with its DynamicCache),
  transformers_static_compile (generate() with a StaticCache and CompileConfig(fullgraph=True,
  mode="reduce-overhead"), transformers' own way to compile the decode step; compiled and warmed up
  before the timed calls; the first call's time is reported as first_call_s). The transformers variants
  run in a worker process, last, under a time cap; a failure or the cap is recorded, not raised.
  decode.<ours variant>.engine_ms_per_token is the engine's own decode_ms / N, for comparison.
- decode.graph_eager_divergence: where the graph's tokens first part from eager's (None if they do not):
  both tokens' logits from a fresh prefill of the prompt and the shared tokens, their gap, and the bf16
  step at that size, to tell a near-tie flipped by summation order from a real difference.
- decode.weight_bytes_per_token: the weights one decode step reads (every decoder layer, the final norm,
  lm_head and one row of the embedding table; the vision tower is not read; KV-cache reads, about 1% here,
  are not counted). floor_ms_per_token = that / ceilings.copy_gbs; pct_of_floor = floor / ms_per_token x 100.
- streaming.ms_per_frame: the median over the frames of one stream of the host time (synchronized) of a
  step: a 512 x 512 RGB frame preprocessed in C++ to the vision encoder's size (one global image, no
  tiles), joint_embed (vision tower + connector + text embeddings), then prefill into the stream's
  persistent cache and the talk decision (greedy_generate(..., max_new_tokens=0, silence=(eou, 1.0))),
  after warm-up frames on another cache. fps = 1000 / ms_per_frame. runs_ms, runs_device_ms (CUDA events),
  runs_engine_prefill_ms and runs_cache_length_before are per frame; by_third gives their medians over each
  third of the stream, to tell a device-bound slowdown as the cache fills from a host-side one.
- surgery: a full 4,096-token KVCache of the 2.2b text shape (24 layers, 32 kv heads, head_dim 64, bf16)
  with a pinned 300-token system span and 64-token frames; drop_middle(512) in "shift" and "keep" modes:
  CUDA-event ms (median), whether the storage's data_ptr is the same after, and the extra peak device
  memory (max_memory_allocated after torch.cuda.reset_peak_memory_stats, minus memory_allocated before;
  the worst of the repetitions) as a % of cache.capacity_bytes(). torch_cat is the original pipeline's
  surgery (torch.cat of the first 300 and last 512 tokens of every layer's tensors) on the same shape.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import common_prefix  # noqa: E402,F401 - also gpu.common_prefix, as the tests call it

PRESET = "2.2b"
DTYPE = "bfloat16"
PROMPT_TOKENS = 16
NEW_TOKENS = 128
STREAM_FRAMES = 40
FRAME_SIZE = 512
DEADLINE_S = 150.0
SURGERY_SHAPE = dict(layers=24, heads=32, head_dim=64, tokens=4096, keep_first=300, keep_last=512)
SURGERY_QUICK = dict(layers=2, heads=2, head_dim=64, tokens=1024, keep_first=300, keep_last=512)
HF_VARIANTS = ("transformers_eager", "transformers_static_compile")
DECODE_VARIANTS = ("ours_graph", "ours_eager", "ours_graph_gemv") + HF_VARIANTS
# (key, what, op, threshold)
TARGETS = [
    ("decode_pct_of_floor", "decode, ours with CUDA graphs: % of the HBM floor", ">=", 60.0),
    ("decode_speedup_vs_transformers_eager", "decode, ours with CUDA graphs vs transformers generate()", ">=", 5.0),
    (
        "decode_speedup_vs_transformers_compile",
        "decode, ours with CUDA graphs vs transformers static cache + torch.compile",
        ">=",
        1.0,
    ),
    ("streaming_fps", "streaming step, frames per second", ">=", 30.0),
    ("surgery_extra_peak_pct", "drop_middle extra peak device memory, % of the cache (worst mode)", "<=", 1.0),
]

_T0 = time.perf_counter()


def log(msg):
    print(f"[gpu {time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def _err(e):
    """An exception as one line for the results."""
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]


# ---------------------------------------------------------------------------------------------------------
# Pure helpers (no GPU; tested on the CPU)


def decode_weight_bytes(text_config, element_size=2):
    """Bytes of weights one batch-1 decode step reads: every decoder layer (q, k, v, o, gate, up, down and
    the two norms), the final norm, lm_head and one row of the embedding table. The vision tower is not read."""
    t = text_config
    H, inter, L = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    nh, nkv = t["num_attention_heads"], t["num_key_value_heads"]
    hd = t.get("head_dim") or H // nh
    attention = H * hd * (2 * nh + 2 * nkv)  # q and o: H x nh*hd; k and v: H x nkv*hd
    per_layer = attention + 3 * H * inter + 2 * H
    return (L * per_layer + H + t["vocab_size"] * H + H) * element_size


def floor_ms(weight_bytes, bandwidth_gbs):
    """The HBM floor of one decode step: its weight bytes at the measured device bandwidth."""
    return weight_bytes / (bandwidth_gbs * 1e9) * 1e3


def per_token_ms(t_n_ms, t_1_ms, n):
    """Decode ms per token from whole calls: (a call of n tokens - a call of 1) / (n - 1) decode steps."""
    if n < 2:
        raise ValueError(f"n expected >= 2 new tokens, got {n}")
    return (t_n_ms - t_1_ms) / (n - 1)


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def finish_decode(row):
    """Fills in the derived decode figures (% of floor, speed-ups, token agreement) from what was measured."""
    floor = row.get("floor_ms_per_token")
    for v in DECODE_VARIANTS:
        ms = _get(row, v, "ms_per_token")
        if ms and ms > 0:
            row[v]["tokens_per_s"] = 1e3 / ms
            row[v]["pct_of_floor"] = 100 * floor / ms if floor else None
        engine = _get(row, v, "engine_ms_per_token")
        if engine and engine > 0 and floor:
            row[v]["engine_pct_of_floor"] = 100 * floor / engine
    for ours in ("graph", "eager"):
        mine = _get(row, f"ours_{ours}", "ms_per_token")
        for theirs in ("transformers_eager", "transformers_compile"):
            other = _get(
                row, "transformers_static_compile" if theirs == "transformers_compile" else theirs, "ms_per_token"
            )
            row[f"speedup_{ours}_vs_{theirs}"] = other / mine if mine and other and mine > 0 else None
    g, e = _get(row, "ours_graph", "ms_per_token"), _get(row, "ours_eager", "ms_per_token")
    row["speedup_graph_vs_eager"] = e / g if g and e and g > 0 else None
    tokens = row.get("tokens") or {}
    if tokens.get("ours_graph") is not None and tokens.get("ours_eager") is not None:
        row["graph_eager_tokens_equal"] = tokens["ours_graph"] == tokens["ours_eager"]
    if tokens.get("ours_graph") is not None and tokens.get("ours_graph_gemv") is not None:
        row["gemv_cublas_common_prefix"] = common_prefix(tokens["ours_graph_gemv"], tokens["ours_graph"])
    if tokens.get("ours_eager") is not None and tokens.get("transformers_eager") is not None:
        row["ours_transformers_common_prefix"] = common_prefix(tokens["ours_eager"], tokens["transformers_eager"])
    return row


def evaluate_targets(res):
    """[{key, what, op, threshold, value, pass}] for TARGETS; pass is None where the figure is missing."""
    dec, st, su = res.get("decode") or {}, res.get("streaming") or {}, res.get("surgery") or {}
    values = {
        "decode_pct_of_floor": _get(dec, "ours_graph", "pct_of_floor"),
        "decode_speedup_vs_transformers_eager": dec.get("speedup_graph_vs_transformers_eager"),
        "decode_speedup_vs_transformers_compile": dec.get("speedup_graph_vs_transformers_compile"),
        "streaming_fps": st.get("fps"),
        "surgery_extra_peak_pct": su.get("max_extra_peak_pct"),
    }
    out = []
    for key, what, op, threshold in TARGETS:
        v = values[key]
        ok = None if v is None else (v >= threshold if op == ">=" else v <= threshold)
        out.append({"key": key, "what": what, "op": op, "threshold": threshold, "value": v, "pass": ok})
    return out


def _f(v, fmt="{:.2f}", none="n/a"):
    return none if v is None else fmt.format(v)


def _table(title, header, rows, note=None):
    lines = ["", f"## {title}", ""]
    if note:
        lines += [note, ""]
    return (
        lines
        + ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    )


def markdown(res):
    """The results as a markdown report: machine, ceilings, targets, then one table per part."""
    m = res.get("machine") or {}
    c = res.get("ceilings") or {}
    lines = [
        f"# prospect GPU benchmarks, {res.get('date', '?')}",
        "",
        f"{m.get('gpu', m.get('device', '?'))} ({_f(m.get('gpu_memory_gib'), '{:.0f}')} GiB, compute capability "
        f"{m.get('capability', '?')}), driver {m.get('driver') or '?'}; torch {m.get('torch', '?')}, CUDA "
        f"{m.get('cuda_runtime') or '?'}, transformers {m.get('transformers') or '?'}, Python {m.get('python', '?')}; "
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores. Commit {m.get('commit') or '?'}.",
        "",
        f"Preset {res.get('preset', '?')} ({res.get('dtype', '?')}, random weights), repetitions: "
        f"{res.get('repeats', '?')}, {_f(res.get('elapsed_s'), '{:.0f}')} s in all. `{res.get('command', '')}`",
    ]
    if "error" in c or "skipped" in c:
        lines += ["", f"Device ceilings: {c.get('error') or c.get('skipped')}"]
    elif c:
        lines += [
            "",
            f"Device ceilings: copy bandwidth {_f(c.get('copy_gbs'), '{:.0f}')} GB/s (read + written, "
            f"{_f(c.get('copy_bytes', 0) / 2**30, '{:.2f}')} GiB copies, median); bf16 matmul "
            f"{_f(c.get('matmul_tflops'), '{:.0f}')} TFLOP/s ({c.get('matmul_n')}^3).",
        ]
    lines += _table(
        "Targets",
        ["target", "value", "needs", "result"],
        [
            [
                t["what"],
                _f(t["value"]),
                f"{t['op']} {t['threshold']:g}",
                {True: "PASS", False: "FAIL"}.get(t["pass"], "n/a"),
            ]
            for t in res.get("targets") or evaluate_targets(res)
        ],
    )
    d = res.get("decode") or {}
    if d:
        note = (
            f"Batch 1, greedy, {d.get('prompt_tokens')}-token prompt, {d.get('new_tokens')} new tokens; ms/token = "
            "(T(N) - T(1)) / (N - 1) from synchronized whole calls (median of the repetitions). HBM floor: "
            f"{_f(d.get('weight_bytes_per_token', 0) / 1e9, '{:.3f}')} GB of weights per token / "
            f"{_f(d.get('bandwidth_gbs'), '{:.0f}')} GB/s = {_f(d.get('floor_ms_per_token'), '{:.3f}')} ms."
        )
        if "error" in d:
            note += f" Error: {d['error']}"
        rows = []
        names = {
            "ours_graph": "prospect, CUDA graphs",
            "ours_eager": "prospect, eager",
            "ours_graph_gemv": "prospect, CUDA graphs, gemv kernel (PROSPECT_CUDA_GEMV=1)",
            "transformers_eager": "transformers generate(), eager",
            "transformers_static_compile": "transformers static cache + torch.compile",
        }
        for v in DECODE_VARIANTS:
            r = d.get(v)
            if r is None:
                continue
            g = _get(d, "ours_graph", "ms_per_token")
            ms = r.get("ms_per_token")
            extra = []
            if r.get("engine_ms_per_token") is not None:
                extra.append(f"engine's decode_ms/N {r['engine_ms_per_token']:.3f}")
            if v.startswith("ours_graph") and "graph_steps" in r:
                extra.append(f"graph_steps {r['graph_steps']}")
            if r.get("first_call_s") is not None:
                extra.append(f"first call (compile) {r['first_call_s']:.1f} s")
            if r.get("note"):
                extra.append(r["note"])
            if "error" in r:
                extra.append(f"error: {r['error']}")
            if "skipped" in r:
                extra.append(f"skipped: {r['skipped']}")
            rows.append(
                [
                    names[v],
                    _f(ms, "{:.3f}"),
                    _f(r.get("tokens_per_s"), "{:.0f}"),
                    _f(r.get("pct_of_floor"), "{:.0f}%"),
                    _f(ms / g if ms and g else None, "{:.2f}x"),
                    "; ".join(extra),
                ]
            )
        lines += _table(
            "Decode (batch 1, greedy)",
            ["engine", "ms/token", "tok/s", "% of HBM floor", "prospect graphs' speed-up", "notes"],
            rows,
            note,
        )
        agree = []
        if d.get("graph_eager_tokens_equal") is not None:
            agree.append(f"graph and eager tokens identical: {'yes' if d['graph_eager_tokens_equal'] else 'NO'}")
            div = d.get("graph_eager_divergence") or {}
            if "gap" in div:
                la, lb = div["logits"]
                agree[-1] += (
                    f" (first parted at token {div['index']}: a fresh prefill gives eager's token {la:.4g} and the "
                    f"graph's {lb:.4g}, a gap of {div['gap']:.3g} = {div['gap'] / div['bf16_step']:.1f} bf16 steps "
                    "at that size)"
                    if div["bf16_step"]
                    else f" (first parted at token {div['index']}, logits {la:.4g} and {lb:.4g})"
                )
            elif "error" in div:
                agree[-1] += f" (where they part could not be examined: {div['error']})"
        if d.get("ours_transformers_common_prefix") is not None:
            agree.append(
                f"prospect eager and transformers eager agree on the first {d['ours_transformers_common_prefix']} "
                f"of {d.get('new_tokens')} tokens (bf16 kernels differ; random weights)"
            )
        if agree:
            lines += ["", "; ".join(agree) + "."]
    p = res.get("products") or {}
    if p.get("ms_per_token") is not None:
        lines += [
            "",
            f"The step's matrix products alone ({p['products']} cuBLAS products of the same shapes, random "
            f"weights, one CUDA graph): {p['ms_per_token']:.3f} ms per token, {_f(p.get('pct_of_floor'))}% of the "
            "HBM floor; the rest of the prospect graph's time is the step's other kernels and their gaps.",
        ]
    s = res.get("streaming") or {}
    if s:
        if "error" in s or "skipped" in s:
            lines += ["", "## Streaming step", "", f"{s.get('error') or s.get('skipped')}"]
        else:
            lines += _table(
                "Streaming step (512 x 512 frame: preprocess + vision + prefill + talk decision)",
                [
                    "frames",
                    "tokens/frame",
                    "ms/frame (median)",
                    "fps",
                    "p90 ms",
                    "preprocess ms",
                    "vision + embed ms",
                    "prefill + decision ms",
                    "vision TFLOP/s",
                ],
                [
                    [
                        s["frames"],
                        s["tokens_per_frame"],
                        _f(s["ms_per_frame"]),
                        _f(s["fps"], "{:.1f}"),
                        _f(s.get("p90_ms")),
                        _f(s.get("preprocess_ms")),
                        _f(s.get("vision_embed_ms")),
                        _f(s.get("prefill_decision_ms")),
                        _f(s.get("vision_tflops"), "{:.1f}"),
                    ]
                ],
                f"One stream, one persistent cache ({s.get('cache_length_end')} of {s.get('cache_capacity')} slots "
                f"used at the end), {s.get('warmup_frames')} warm-up frames before; the breakdown is a second pass "
                "with a synchronize between the parts.",
            )
            thirds = s.get("by_third") or []
            if thirds:
                lines += [
                    "",
                    "The first pass by thirds of the stream (frames, cache length as the third began: median host "
                    "ms / device ms by CUDA events / the engine's prefill ms): "
                    + "; ".join(
                        f"{t['frames'][0]}-{t['frames'][1]}, from {t['cache_length_from']}: {_f(t['host_ms'])} / "
                        f"{_f(t['device_ms'])} / {_f(t['engine_prefill_ms'])}"
                        for t in thirds
                    )
                    + ".",
                ]
    su = res.get("surgery") or {}
    if su:
        if "error" in su or "skipped" in su:
            lines += ["", "## Cache surgery", "", f"{su.get('error') or su.get('skipped')}"]
        else:
            sh = su["shape"]
            lines += _table(
                f"Cache surgery: drop_middle on {sh['layers']} layers x {sh['heads']} kv heads x {sh['tokens']} "
                f"tokens x {sh['head_dim']} ({su.get('dtype')}), keeping {sh['keep_first']} + {sh['keep_last']}",
                ["variant", "ms (events)", "host ms", "extra peak MiB", "extra peak / cache", "same storage"],
                [
                    [
                        r["variant"],
                        _f(r.get("median_ms")),
                        _f(r.get("median_wall_ms")),
                        _f(None if r.get("extra_peak_bytes") is None else r["extra_peak_bytes"] / 2**20),
                        _f(r.get("extra_peak_pct"), "{:.2f}%"),
                        {True: "yes", False: "no"}.get(r.get("same_storage"), "n/a"),
                    ]
                    for r in su["rows"]
                ],
            )
    errors = [
        f"- {k}: {v.get('error') or v.get('skipped')}"
        for k, v in res.items()
        if isinstance(v, dict) and ("error" in v or "skipped" in v) and k not in ("streaming", "surgery", "ceilings")
    ]
    if errors:
        lines += ["", "## Errors", ""] + errors
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Measurements


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    """(device ms, host ms, fn()): CUDA events around fn on the current stream, and the host clock read after
    a synchronize. On the CPU both are the host clock."""
    import torch

    if not str(device).startswith("cuda"):
        t0 = time.perf_counter()
        r = fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms, r
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    r = fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end), (time.perf_counter() - t0) * 1e3, r


def copy_bandwidth(device="cuda", nbytes=2 * 2**30, repeats=10, warmup=3):
    """Bytes read + written per second by a device-to-device copy of nbytes: {copy_gbs, copy_ms, ...}."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(warmup):
        dst.copy_(src)
    times = [_timed(lambda: dst.copy_(src), device)[0] for _ in range(repeats)]
    ms = statistics.median(times)
    return {
        "copy_bytes": nbytes,
        "copy_ms": ms,
        "copy_gbs": 2 * nbytes / (ms * 1e-3) / 1e9,
        "copy_gbs_best": 2 * nbytes / (min(times) * 1e-3) / 1e9,
    }


def matmul_tflops(device="cuda", n=8192, repeats=10, warmup=3):
    """bf16 n x n x n matmul rate on random data: {matmul_tflops, matmul_ms, matmul_n}."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
    for _ in range(warmup):
        a @ b
    times = [_timed(lambda: a @ b, device)[0] for _ in range(repeats)]
    ms = statistics.median(times)
    return {"matmul_n": n, "matmul_ms": ms, "matmul_tflops": 2 * n**3 / (ms * 1e-3) / 1e12}


def device_ceilings(device="cuda", quick=False):
    """The device's measured copy bandwidth (GB/s, read + written) and bf16 matmul rate (TFLOP/s)."""
    cuda = str(device).startswith("cuda")
    out = copy_bandwidth(device, (2048 if cuda else 64) * 2**20 if not quick else (256 if cuda else 32) * 2**20)
    out.update(matmul_tflops(device, 8192 if cuda and not quick else 2048 if cuda else 256))
    if cuda:
        import torch

        torch.cuda.empty_cache()  # the copy's 4 GiB go back before the model comes
    log(f"ceilings: copy {out['copy_gbs']:.0f} GB/s, bf16 matmul {out['matmul_tflops']:.1f} TFLOP/s")
    return out


def ensure_model(models_dir, preset=PRESET, device="cuda"):
    """<models>/<preset>-bfloat16, made with make_model(..., dtype="bfloat16", device=device) when absent
    (into a temporary folder, then renamed, so a run killed while saving leaves nothing half-written)."""
    import prospect_core

    d = Path(models_dir) / f"{preset}-{DTYPE}"
    if (d / "config.json").exists():
        return {"path": str(d), "built": False}
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.parent / f".{d.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"making {preset} ({DTYPE}, random weights drawn on {device}) in {d}")
    t0 = time.perf_counter()
    prospect_core.make_model(tmp, preset, dtype=DTYPE, device=device)
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)
    s = time.perf_counter() - t0
    log(f"made {d.name} in {s:.1f} s")
    return {"path": str(d), "built": True, "build_s": s}


def _ours_decode(model, embeds, capacity, n, repeats, graph, device):
    """One of our variants: warm-up, then T(n) and T(1) per repetition on one cache, emptied before each call."""
    cache = model.make_cache(capacity)
    kw = {"cuda_graph": graph}
    note = None

    def call(k):
        return model.greedy_generate(embeds, cache, k, [], **kw)

    cache.drop_all()
    try:
        first_ms = _timed(lambda: call(n), device)[1]  # warm-up (for graphs: the capture)
    except TypeError as e:
        if graph or "incompatible function arguments" not in str(e):
            raise
        kw, note = {}, "this build has no cuda_graph keyword: its default path"
        cache.drop_all()
        first_ms = _timed(lambda: call(n), device)[1]
    cache.drop_all()
    call(1)
    t_n, t_1, engine = [], [], []
    r = None
    for _ in range(repeats):
        cache.drop_all()
        _, ms, r = _timed(lambda: call(n), device)
        t_n.append(ms)
        engine.append(r.decode_ms)
        cache.drop_all()
        t_1.append(_timed(lambda: call(1), device)[1])
    tn, t1 = statistics.median(t_n), statistics.median(t_1)
    out = {
        "ms_per_token": per_token_ms(tn, t1, n),
        "t_n_ms": tn,
        "t_1_ms": t1,
        "runs_t_n_ms": t_n,
        "runs_t_1_ms": t_1,
        "engine_ms_per_token": statistics.median(engine) / n,
        "new_tokens_made": len(r.tokens),
        "first_call_ms": first_ms,
    }
    if graph:
        out["graph_steps"] = getattr(r, "graph_steps", None)
    if note:
        out["note"] = note
    return out, list(r.tokens)


def divergence(model, prompt_ids, a, b):
    """Where greedy tokens a and b, made from the same prompt, first part: the index, both tokens, and the
    logits that a fresh prefill of the prompt and a's tokens before that index gives them, with their gap and
    the bf16 step at their size. A gap of a step or two is a near-tie that summation order can flip. None
    where one list is a prefix of the other."""
    import torch

    k = common_prefix(a, b)
    if k >= min(len(a), len(b)):
        return None
    ids = torch.cat([prompt_ids, torch.tensor([list(a[:k])], dtype=prompt_ids.dtype)], dim=1)
    cache = model.make_cache(int(ids.shape[1]) + 8)
    logits = model.prefill(model.embed_tokens(ids), cache)[0].float().cpu()
    la, lb = float(logits[a[k]]), float(logits[b[k]])
    size = max(abs(la), abs(lb))
    step = 2.0 ** (math.floor(math.log2(size)) - 7) if size > 0 else 0.0  # bf16 keeps 8 significant bits
    return {"index": k, "tokens": [a[k], b[k]], "logits": [la, lb], "gap": la - lb, "bf16_step": step}


def bench_gpu_decode(
    path,
    repeats=3,
    new_tokens=NEW_TOKENS,
    prompt=PROMPT_TOKENS,
    bandwidth_gbs=None,
    model=None,
    device="cuda",
    transformers=True,
    compile=True,
    hf_timeout_s=None,
):
    """ms/token of batch-1 greedy decode: ours with CUDA graphs and eager, and (transformers=True)
    transformers generate() eager and with a static cache + torch.compile; the HBM floor and the ratios."""
    import torch

    import prospect_core

    if model is None:
        log(f"loading {path} ({DTYPE}, {device})")
        model = prospect_core.load_model(path, dtype=DTYPE, device=device)
    if bandwidth_gbs is None:
        bandwidth_gbs = copy_bandwidth(device)["copy_gbs"]
    element = torch.tensor([], dtype=model.dtype).element_size()
    wbytes = decode_weight_bytes(model.config["text_config"], element)
    row = {
        "prompt_tokens": prompt,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "method": "(T(N) - T(1)) / (N - 1), T = median synchronized host time of a whole call",
        "weight_bytes_per_token": wbytes,
        "bandwidth_gbs": bandwidth_gbs,
        "floor_ms_per_token": floor_ms(wbytes, bandwidth_gbs) if bandwidth_gbs else None,
        "tokens": {},
    }
    ids = torch.arange(60, 60 + prompt).unsqueeze(0)
    embeds = model.embed_tokens(ids)
    # ours_graph_gemv: the graph's products by prospect's gemv kernel instead of cuBLAS (PROSPECT_CUDA_GEMV=1,
    # read when a graph is captured; another capacity, so that a new graph is captured for it).
    variants = (("ours_graph", True, 8, "0"), ("ours_eager", False, 8, "0"), ("ours_graph_gemv", True, 24, "1"))
    for name, graph, spare, gemv in variants:
        log(f"decode: {name}, {new_tokens} tokens x {repeats}")
        os.environ["PROSPECT_CUDA_GEMV"] = gemv
        try:
            row[name], row["tokens"][name] = _ours_decode(
                model, embeds, prompt + new_tokens + spare, new_tokens, repeats, graph, device
            )
            log(
                f"decode: {name} {row[name]['ms_per_token']:.3f} ms/token (engine's own clock "
                f"{row[name]['engine_ms_per_token']:.3f})"
                + (f", graph_steps {row[name].get('graph_steps')}" if graph else "")
            )
        except Exception as e:
            row[name] = {"error": _err(e)}
            log(f"decode: {name} failed: {_err(e)}")
        finally:
            os.environ.pop("PROSPECT_CUDA_GEMV", None)
    made = row["tokens"]
    if made.get("ours_eager") is not None and made.get("ours_graph") is not None:
        try:  # where the graph parts from eager, is it a near-tie?
            row["graph_eager_divergence"] = divergence(model, ids, made["ours_eager"], made["ours_graph"])
        except Exception as e:
            row["graph_eager_divergence"] = {"error": _err(e)}
    if transformers:
        add_transformers(
            row, bench_transformers_decode(path, repeats, new_tokens, prompt, hf_timeout_s, device, compile)
        )
    return finish_decode(row)


def bench_products(text_config, bandwidth_gbs=None, device="cuda", replays=50, dtype_name=DTYPE):
    """The decode step's matrix products alone: per layer [1, H] x qkv, [1, nq] x o, [1, H] x gate_up,
    [1, I] x down, then the LM head, with random weights of those shapes, captured in one CUDA graph and
    replayed. What cuBLAS needs per token, against which the whole step's time can be read."""
    import torch

    if not str(device).startswith("cuda"):
        return {"skipped": "CUDA only (the products are timed as one CUDA graph)"}
    dt = getattr(torch, dtype_name)
    t = text_config
    H, hd, I, V = (
        t["hidden_size"],
        t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"],
        (t["intermediate_size"]),
        t["vocab_size"],
    )
    nq, nkv = t["num_attention_heads"] * hd, t["num_key_value_heads"] * hd
    shapes = [(H, nq + 2 * nkv), (nq, H), (H, 2 * I), (I, H)] * t["num_hidden_layers"] + [(H, V)]
    weights = [torch.randn(n, k, device=device, dtype=dt) for k, n in shapes]
    xs = [torch.randn(1, k, device=device, dtype=dt) for k, _ in shapes]

    def run():
        for x, w in zip(xs, weights):
            torch.mm(x, w.t())

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    times = []
    for _ in range(replays):
        ms, _, _ = _timed(graph.replay, device)
        times.append(ms)
    ms = statistics.median(times)
    wbytes = sum(w.numel() * w.element_size() for w in weights)
    return {
        "products": len(shapes),
        "weight_bytes": wbytes,
        "ms_per_token": ms,
        "pct_of_floor": floor_ms(wbytes, bandwidth_gbs) / ms * 100 if bandwidth_gbs else None,
        "replays": replays,
    }


def add_transformers(row, hf):
    """Puts the transformers worker's results into a decode row."""
    for v in HF_VARIANTS:
        r = dict(hf.get(v) or {"error": "not run"})
        tokens = r.pop("tokens", None)
        if tokens is not None:
            row.setdefault("tokens", {})[v] = tokens
        row[v] = r
    row["transformers_worker"] = {k: v for k, v in hf.items() if k not in HF_VARIANTS}
    return finish_decode(row)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def bench_transformers_decode(path, repeats, new_tokens, prompt, timeout_s=None, device="cuda", compile=True):
    """transformers' decode in a worker process (this file with --hf-worker) under a hard time cap: eager
    first, then static cache + torch.compile. What finished is kept; the rest is recorded as an error."""
    variants = list(HF_VARIANTS if compile else HF_VARIANTS[:1])
    with tempfile.TemporaryDirectory(prefix="prospect-hf-") as td:
        out = Path(td) / "out.json"
        spec = {
            "path": str(path),
            "repeats": repeats,
            "new_tokens": new_tokens,
            "prompt": prompt,
            "device": device,
            "variants": variants,
            "out": str(out),
            "parent_pid": os.getpid(),
            "deadline": None if timeout_s is None else time.time() + timeout_s,
            "log_origin": time.time() - (time.perf_counter() - _T0),  # the worker's log lines use our clock
        }
        (Path(td) / "spec.json").write_text(json.dumps(spec))
        log(f"transformers: worker starts ({', '.join(variants)}; cap {_f(timeout_s, '{:.0f} s', 'none')})")
        t0 = time.perf_counter()
        # Its own process group, so the cap can stop it and the compile workers it starts.
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--hf-worker", str(Path(td) / "spec.json")],
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            log(f"transformers: time cap of {timeout_s:.0f} s reached, stopping the worker")
        _kill_group(proc)  # also any compile worker left behind
        res = json.loads(out.read_text()) if out.exists() else {}
    res["worker_s"] = time.perf_counter() - t0
    res["worker_returncode"] = proc.returncode
    for v in variants:
        if v not in res:
            if timed_out:
                why = f"time cap of {timeout_s:.0f} s reached during: {res.get('stage', 'start-up')}"
            else:
                why = f"the worker exited with status {proc.returncode} during: {res.get('stage', 'start-up')}"
            res[v] = {"error": why}
    if not compile:
        res["transformers_static_compile"] = {"skipped": "not asked for"}
    return res


def _hf_worker(spec_path):
    """The transformers side of the decode benchmark, in its own process (see bench_transformers_decode)."""
    spec = json.loads(Path(spec_path).read_text())
    try:  # die with the parent (PR_SET_PDEATHSIG), so a killed run leaves no worker holding the GPU
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))
    except Exception:
        pass
    if os.getppid() != spec["parent_pid"]:
        sys.exit(1)
    global _T0
    _T0 = time.perf_counter() - (time.time() - spec["log_origin"])
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # past_key_values is deprecated in later 5.x
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText

    transformers.logging.set_verbosity_error()
    out = Path(spec["out"])
    res = {"transformers_version": transformers.__version__}

    def save(stage):
        res["stage"] = stage
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        os.replace(tmp, out)

    device, n, P, repeats = spec["device"], spec["new_tokens"], spec["prompt"], spec["repeats"]
    cuda = device.startswith("cuda")
    save("loading the model")
    t0 = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(spec["path"], dtype=torch.bfloat16).to(device).eval()
    res["load_s"] = time.perf_counter() - t0
    log(f"transformers {transformers.__version__}: model loaded in {res['load_s']:.1f} s")
    ids = torch.arange(60, 60 + P).unsqueeze(0).to(device)
    mask = torch.ones_like(ids)

    def gen(k, **kw):
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False, **kw
        )

    def measure(before=None, **kw):
        t_n, t_1, tokens = [], [], None
        for _ in range(repeats):
            if before:
                before()
            _, ms, o = _timed(lambda: gen(n, **kw), device)
            t_n.append(ms)
            tokens = o[0, P:].tolist()
            if before:
                before()
            t_1.append(_timed(lambda: gen(1, **kw), device)[1])
        tn, t1 = statistics.median(t_n), statistics.median(t_1)
        return {
            "ms_per_token": per_token_ms(tn, t1, n),
            "t_n_ms": tn,
            "t_1_ms": t1,
            "runs_t_n_ms": t_n,
            "runs_t_1_ms": t_1,
            "new_tokens_made": len(tokens),
            "tokens": tokens,
        }

    if "transformers_eager" in spec["variants"]:
        save("eager generate()")
        try:
            gen(min(n, 8))  # warm-up: kernels loaded, allocator grown
            gen(1)
            res["transformers_eager"] = r = measure()
            r["cache"] = "DynamicCache (generate's default)"
            log(f"transformers: eager {r['ms_per_token']:.3f} ms/token")
        except Exception as e:
            traceback.print_exc()
            res["transformers_eager"] = {"error": _err(e)}
        save("eager generate() done")

    if "transformers_static_compile" in spec["variants"]:
        from transformers import CompileConfig, StaticCache

        def compiled(how):
            cc = CompileConfig(fullgraph=True, mode="reduce-overhead" if cuda else "default")
            if not cuda:
                cc._compile_all_devices = True  # transformers compiles only on accelerators unless told
            if how == "user StaticCache":
                # One StaticCache for every call (emptied before each): the same buffers, so no recompile.
                cache = StaticCache(config=model.config, max_cache_len=P + n + 8)
                kw, before = {"past_key_values": cache, "compile_config": cc}, cache.reset
            else:
                kw, before = {"cache_implementation": "static", "compile_config": cc}, None
            save(f"static cache + torch.compile ({how}): first call (compile)")
            log(f"transformers: static cache + torch.compile ({how}, fullgraph, {cc.mode}): compiling")
            _, first, o = _timed(lambda: gen(n, **kw), device)
            log(f"transformers: first compiled call took {first / 1e3:.1f} s (compile + graph capture + {n} tokens)")
            if before:
                before()
            _, second, _o = _timed(lambda: gen(n, **kw), device)
            save(f"static cache + torch.compile ({how}): timed calls")
            r = measure(before, **kw)
            r.update(
                cache=how,
                fullgraph=True,
                mode=cc.mode,
                first_call_s=first / 1e3,
                second_call_ms=second,
                compile_s=(first - r["t_n_ms"]) / 1e3,
                compiled_call=hasattr(model, "_compiled_call"),
                unique_graphs=int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
                tokens_equal_eager=(r["tokens"] == _get(res, "transformers_eager", "tokens")),
            )
            log(f"transformers: static + compile {r['ms_per_token']:.3f} ms/token (compile {r['compile_s']:.1f} s)")
            return r

        errors = []
        for how in ("user StaticCache", "cache_implementation='static'"):
            if errors and spec["deadline"] and time.time() > spec["deadline"] - 30:
                break  # no time for the second way
            try:
                res["transformers_static_compile"] = compiled(how)
                if errors:
                    res["transformers_static_compile"]["first_attempt_error"] = errors[0]
                break
            except Exception as e:
                traceback.print_exc()
                errors.append(f"{how}: {_err(e)}")
                res["transformers_static_compile"] = {"error": "; ".join(errors)}
                save(f"static cache + torch.compile: {how} failed")
                torch._dynamo.reset()
        save("done")
    save("done")


def _thirds(host, device, prefill, lengths):
    """The first pass's medians over each third of the stream: does a frame slow down as the cache fills, and
    is the time the device's (events) or the host's?"""
    n = len(host)
    edges = sorted({k * n // 3 for k in range(4)})  # fewer than 3 frames: fewer parts, none empty or repeated
    out = []
    for lo, hi in zip(edges, edges[1:]):
        out.append(
            {
                "frames": [lo, hi - 1],
                "cache_length_from": lengths[lo],
                "host_ms": statistics.median(host[lo:hi]),
                "device_ms": statistics.median(device[lo:hi]),
                "engine_prefill_ms": statistics.median(prefill[lo:hi]),
            }
        )
    return out


def bench_gpu_streaming(path, frames=STREAM_FRAMES, model=None, device="cuda", warmup=3, size=FRAME_SIZE):
    """Frames per second of the streaming step (preprocess + joint_embed + prefill + talk decision) on one
    persistent cache; and, in a second pass with a synchronize between them, what each part costs."""
    import torch
    from transformers import AutoProcessor

    import prospect_core
    from prospect_core import prompt
    from prospect_core.frames import FramePreprocessor
    from streaming import vision_flops

    if model is None:
        log(f"loading {path} ({DTYPE}, {device})")
        model = prospect_core.load_model(path, dtype=DTYPE, device=device)
    cfg = model.config
    proc = AutoProcessor.from_pretrained(path)
    pre = FramePreprocessor(proc)  # split_frames=False: one global image per frame, no tiles
    tok = proc.tokenizer
    eou = tok.convert_tokens_to_ids(prompt.EOU)
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g) for _ in range(warmup + frames)]
    ids = [
        tok(
            prompt.frame_turn((i + 1) / 2.0, cfg["image_seq_len"]) + prompt.ASSISTANT_PROMPT,
            add_special_tokens=False,
            return_tensors="pt",
        ).input_ids
        for i in range(frames)
    ]
    lengths = [int(x.shape[1]) for x in ids]
    capacity = sum(lengths) + 64

    def decide(cache, embeds, i):
        r = model.greedy_generate(embeds, cache, 0, [], silence=(eou, 1.0), span_kind="frame", frame_index=i)
        if r.silence_prob is None or r.tokens:
            raise RuntimeError(f"frame {i}: expected a silent talk decision, got {r!r}")
        return r

    def step(cache, image, i):
        return decide(cache, model.joint_embed(ids[i], pre(image)[0]), i)

    log(f"streaming: {warmup} warm-up frames, then {frames} frames of {lengths[0]} tokens, cache {capacity}")
    warm = model.make_cache(capacity)
    for i in range(warmup):
        step(warm, images[i], i)
    del warm
    cache = model.make_cache(capacity)
    per, per_device, per_prefill, lengths_before = [], [], [], []
    for i in range(frames):
        lengths_before.append(cache.length)
        dev, host, r = _timed(lambda i=i: step(cache, images[warmup + i], i), device)
        per.append(host)
        per_device.append(dev)
        per_prefill.append(r.prefill_ms)
    length_end = cache.length
    # The breakdown: the same frames on a fresh cache, a synchronize after each part.
    cache = model.make_cache(capacity)
    pre_ms, vis_ms, dec_ms, engine_prefill = [], [], [], []
    for i in range(frames):
        t0 = time.perf_counter()
        pv = pre(images[warmup + i])[0]
        t1 = time.perf_counter()
        _, vis, embeds = _timed(lambda i=i, pv=pv: model.joint_embed(ids[i], pv), device)
        _, dec, r = _timed(lambda i=i, embeds=embeds: decide(cache, embeds, i), device)
        pre_ms.append((t1 - t0) * 1e3)
        vis_ms.append(vis)
        dec_ms.append(dec)
        engine_prefill.append(r.prefill_ms)
    ms = statistics.median(per)
    vision_ms = statistics.median(vis_ms)
    out = {
        "frames": frames,
        "warmup_frames": warmup,
        "frame_size": [size, size],
        "pixel_values_size": pre.image_size,
        "tokens_per_frame": lengths[0],
        "tokens_per_frame_max": max(lengths),
        "cache_capacity": capacity,
        "cache_length_end": length_end,
        "ms_per_frame": ms,
        "fps": 1e3 / ms,
        "mean_fps": len(per) / (sum(per) / 1e3),
        "p90_ms": sorted(per)[min(len(per) - 1, int(0.9 * len(per)))],
        "runs_ms": per,
        # Per frame, to tell where a slow frame's time went: the device's time (CUDA events), the engine's
        # own prefill figure, and the cache's length as the frame began; the breakdown pass's parts likewise.
        "runs_device_ms": per_device,
        "runs_engine_prefill_ms": per_prefill,
        "runs_cache_length_before": lengths_before,
        "breakdown_runs_ms": {"preprocess": pre_ms, "vision_embed": vis_ms, "prefill_decision": dec_ms},
        "by_third": _thirds(per, per_device, per_prefill, lengths_before),
        "preprocess_ms": statistics.median(pre_ms),
        "vision_embed_ms": vision_ms,
        "prefill_decision_ms": statistics.median(dec_ms),
        "engine_prefill_ms": statistics.median(engine_prefill),
        "vision_gflop_per_frame": vision_flops(cfg) / 1e9,
        "vision_tflops": vision_flops(cfg) / (vision_ms * 1e-3) / 1e12,
    }
    log(
        f"streaming: {ms:.2f} ms/frame = {out['fps']:.1f} fps (preprocess {out['preprocess_ms']:.2f}, vision + "
        f"embed {vision_ms:.2f}, prefill + decision {out['prefill_decision_ms']:.2f} ms)"
    )
    return out


def bench_gpu_surgery(repeats=3, device="cuda", shape=None):
    """drop_middle in place on a full cache (shift and keep) vs the original torch.cat surgery: ms, whether
    the storage stays put, and the extra peak device memory as a fraction of the cache."""
    import torch

    import prospect_core as pc

    sh = dict(shape or SURGERY_SHAPE)
    L, H, D, T, kf, kl = (sh[k] for k in ("layers", "heads", "head_dim", "tokens", "keep_first", "keep_last"))
    dt = torch.bfloat16
    cuda = str(device).startswith("cuda")
    g = torch.Generator(device=device).manual_seed(0)

    def kv(n):
        return [torch.randn(1, H, n, D, device=device, dtype=dt, generator=g) for _ in range(L)]

    def peak_start():
        if not cuda:
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)

    def peak_extra(before):
        return None if before is None else torch.cuda.max_memory_allocated(device) - before

    chunks = {}  # one frame's keys and values per length, made once

    def fill(cache):
        while cache.length < T:
            n = min(64, T - cache.length)
            if n not in chunks:
                chunks[n] = (kv(n), kv(n))
            cache.append(*chunks[n], kind="frame")

    def prospect(mode):
        # A stream's ledger: a pinned system span, then frames of 64 tokens until the cache is full.
        cache = pc.KVCache(L, H, D, T, dtype=dt, device=device, rope_theta=100000.0)
        cache.pin(cache.append(kv(kf), kv(kf), kind="system"))
        fill(cache)
        cache.drop_middle(kl, position_mode=mode)  # warm-up
        runs = []
        for _ in range(repeats):
            fill(cache)
            ptr, key_ptr = cache.storage.data_ptr(), cache.keys(0).data_ptr()
            before = peak_start()
            ev, wall, _ = _timed(lambda: cache.drop_middle(kl, position_mode=mode), device)
            runs.append(
                {
                    "ms": ev,
                    "wall_ms": wall,
                    "extra_peak_bytes": peak_extra(before),
                    "same_storage": cache.storage.data_ptr() == ptr and cache.keys(0).data_ptr() == key_ptr,
                    "length_after": cache.length,
                }
            )
        return _surgery_row(f"prospect_{mode}", runs, cache.capacity_bytes())

    def torch_cat():
        # The original pipeline's surgery: a new pair of tensors per layer by torch.cat, the old ones dropped after.
        runs = []
        for i in range(repeats + 1):
            legacy = list(zip(kv(T), kv(T)))  # no other reference: the old tensors go when replaced
            ptr = legacy[0][0].data_ptr()

            def op(legacy=legacy):
                out = [
                    (torch.cat([k[:, :, :kf], k[:, :, -kl:]], 2), torch.cat([v[:, :, :kf], v[:, :, -kl:]], 2))
                    for k, v in legacy
                ]
                legacy[:] = out

            before = peak_start()
            ev, wall, _ = _timed(op, device)
            if i:  # the first is the warm-up
                runs.append(
                    {
                        "ms": ev,
                        "wall_ms": wall,
                        "extra_peak_bytes": peak_extra(before),
                        "same_storage": legacy[0][0].data_ptr() == ptr,
                        "length_after": int(legacy[0][0].shape[2]),
                    }
                )
        return _surgery_row("torch_cat", runs, L * 2 * H * T * D * torch.tensor([], dtype=dt).element_size())

    rows = [prospect("shift"), prospect("keep")]
    chunks.clear()
    rows.append(torch_cat())
    if cuda:
        torch.cuda.empty_cache()
    ours = [
        r["extra_peak_pct"] for r in rows if r["variant"].startswith("prospect") and r["extra_peak_pct"] is not None
    ]
    out = {
        "shape": sh,
        "dtype": "bfloat16",
        "device": str(device),
        "repeats": repeats,
        "rows": rows,
        "max_extra_peak_pct": max(ours) if ours else None,
    }
    for r in rows:
        log(
            f"surgery {r['variant']}: {r['median_ms']:.2f} ms, extra peak "
            f"{_f(None if r['extra_peak_bytes'] is None else r['extra_peak_bytes'] / 2**20)} MiB "
            f"({_f(r['extra_peak_pct'], '{:.2f}%')} of the cache), same storage {r['same_storage']}"
        )
    return out


def _surgery_row(variant, runs, cache_bytes):
    extra = [r["extra_peak_bytes"] for r in runs if r["extra_peak_bytes"] is not None]
    worst = max(extra) if extra else None
    return {
        "variant": variant,
        "median_ms": statistics.median(r["ms"] for r in runs),
        "median_wall_ms": statistics.median(r["wall_ms"] for r in runs),
        "extra_peak_bytes": worst,
        "extra_peak_pct": None if worst is None else 100 * worst / cache_bytes,
        "cache_bytes": cache_bytes,
        "same_storage": all(r["same_storage"] for r in runs),
        "length_after": runs[-1]["length_after"],
        "runs": runs,
    }


def gpu_machine(device="cuda"):
    """What the results were measured on."""
    import importlib.metadata

    import torch

    from common import machine

    m = machine()
    info = {
        "host": m["host"],
        "cpu": m["cpu"],
        "cores": m["cores"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "device": str(device),
    }
    for dist in ("transformers", "prospect-core"):
        try:
            info[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist.replace("-", "_")] = None
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    if str(device).startswith("cuda"):
        index = torch.device(device).index or 0
        p = torch.cuda.get_device_properties(index)
        info.update(
            gpu=torch.cuda.get_device_name(index),
            gpu_memory_gib=p.total_memory / 2**30,
            capability=f"{p.major}.{p.minor}",
            sm_count=p.multi_processor_count,
        )
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


# ---------------------------------------------------------------------------------------------------------
# The run


def main(
    out_dir,
    models_dir,
    quick=False,
    repeats=None,
    deadline_s=DEADLINE_S,
    device="cuda",
    compile=True,
    command=None,
):
    """Runs the four parts (ceilings, decode, streaming, surgery; transformers' decode last, under what is
    left of the deadline), writing <out>/gpu-<date>[-quick].json and .md after each. Returns the exit status:
    0, or 1 when one of prospect's own parts failed (a failed transformers baseline is recorded only)."""
    import torch

    from common import unused_path

    global _T0
    _T0 = time.perf_counter()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu benchmarks skipped: no CUDA device (torch.cuda.is_available() is False); nothing written", flush=True
        )
        return 0
    # Three even when quick: a per-token figure is the difference of two whole calls, and one slow call of
    # one token (a tiny model's take a millisecond) made it negative.
    repeats = repeats or 3
    preset = "tiny" if quick else PRESET
    new_tokens = 16 if quick else NEW_TOKENS
    date = datetime.date.today().isoformat()
    out = Path(out_dir)
    stem = unused_path(out, f"gpu-{date}" + ("-quick" if quick else "")).stem
    res = {
        "benchmark": "gpu",
        "date": date,
        "command": command or " ".join(["python benchmarks/gpu.py"] + sys.argv[1:]),
        "quick": quick,
        "preset": preset,
        "dtype": DTYPE,
        "repeats": repeats,
        "deadline_s": deadline_s,
        "machine": gpu_machine(device),
        "timings_s": {},
    }
    m = res["machine"]
    log(f"{m.get('gpu', device)}, torch {m['torch']}, CUDA {m['cuda_runtime']}; {preset}; deadline {deadline_s:.0f} s")

    def left():
        return deadline_s - (time.perf_counter() - _T0)

    def write():
        res["elapsed_s"] = time.perf_counter() - _T0
        res["targets"] = evaluate_targets(res)
        (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
        (out / f"{stem}.md").write_text(markdown(res))

    def part(name, fn, need_s):
        if left() < need_s:
            res[name] = {"skipped": f"deadline: {left():.0f} s left, this part needs about {need_s} s"}
            log(f"{name}: skipped ({res[name]['skipped']})")
        else:
            log(f"{name}: start ({left():.0f} s left)")
            t0 = time.perf_counter()
            try:
                res[name] = fn()
            except Exception as e:
                traceback.print_exc()
                res[name] = {"error": _err(e)}
                log(f"{name}: failed: {_err(e)}")
            res["timings_s"][name] = time.perf_counter() - t0
        write()
        return res[name]

    part("ceilings", lambda: device_ceilings(device, quick), 5)
    part("model", lambda: ensure_model(models_dir, preset, device), 10)
    path = _get(res, "model", "path")
    ours = None
    if path:

        def load():
            nonlocal ours
            import prospect_core

            t0 = time.perf_counter()
            ours = prospect_core.load_model(path, dtype=DTYPE, device=device)
            log(f"loaded {Path(path).name} in {time.perf_counter() - t0:.1f} s")
            return {"load_s": time.perf_counter() - t0, "weight_bytes": ours.weight_bytes}

        part("load", load, 5)
    if ours is not None:
        bw = _get(res, "ceilings", "copy_gbs")
        part(
            "decode",
            lambda: bench_gpu_decode(path, repeats, new_tokens, PROMPT_TOKENS, bw, ours, device, transformers=False),
            5,
        )
        part("products", lambda: bench_products(ours.config["text_config"], bw, device), 5)
        part(
            "streaming",
            lambda: bench_gpu_streaming(path, 4 if quick else STREAM_FRAMES, ours, device, warmup=1 if quick else 3),
            5,
        )
    else:
        for name in ("decode", "streaming"):
            res[name] = {"error": "no model (see model / load)"}
    ours = None
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    part("surgery", lambda: bench_gpu_surgery(repeats, device, SURGERY_QUICK if quick else SURGERY_SHAPE), 5)

    if path and isinstance(res.get("decode"), dict) and "skipped" not in res["decode"]:
        cap = left() - 3
        if cap < 15:
            hf = {v: {"skipped": f"deadline: {left():.0f} s left"} for v in HF_VARIANTS}
        else:
            t0 = time.perf_counter()
            try:
                hf = bench_transformers_decode(path, repeats, new_tokens, PROMPT_TOKENS, cap, device, compile)
            except Exception as e:
                traceback.print_exc()
                hf = {v: {"error": _err(e)} for v in HF_VARIANTS}
            res["timings_s"]["transformers"] = time.perf_counter() - t0
        add_transformers(res["decode"], hf)
        d = res["decode"]
        log(
            "decode: prospect graphs "
            f"{_f(_get(d, 'ours_graph', 'ms_per_token'), '{:.3f}')} ms/token "
            f"({_f(_get(d, 'ours_graph', 'pct_of_floor'), '{:.0f}%')} of the "
            f"{_f(d.get('floor_ms_per_token'), '{:.3f}')} ms floor), eager "
            f"{_f(_get(d, 'ours_eager', 'ms_per_token'), '{:.3f}')}; transformers eager "
            f"{_f(_get(d, 'transformers_eager', 'ms_per_token'), '{:.3f}')}, static + compile "
            f"{_f(_get(d, 'transformers_static_compile', 'ms_per_token'), '{:.3f}')}"
        )
    write()
    for t in res["targets"]:
        verdict = {True: "PASS", False: "FAIL"}.get(t["pass"], "n/a")
        log(f"target {verdict}: {t['what']} = {_f(t['value'])} (needs {t['op']} {t['threshold']:g})")
    log(f"wrote {out / (stem + '.json')} and .md in {res['elapsed_s']:.0f} s")
    failed = [
        k
        for k in ("ceilings", "model", "load", "decode", "streaming", "surgery")
        if isinstance(res.get(k), dict) and "error" in res[k]
    ]
    failed += [v for v in ("ours_graph", "ours_eager") if "error" in (_get(res, "decode", v) or {})]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


def cli(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: the tiny preset, one repetition")
    ap.add_argument("--repeats", type=int, default=None, help="repetitions of each timing (default 3)")
    ap.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole run (default 150)")
    ap.add_argument("--models", default=str(HERE.parent / "build" / "models"))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--no-compile", action="store_true", help="leave out transformers' static cache + torch.compile")
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: the same code on the CPU, for tests
    ap.add_argument("--hf-worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.hf_worker:
        _hf_worker(a.hf_worker)
        return 0
    return main(a.out, a.models, a.quick, a.repeats, a.deadline, a.device, not a.no_compile)


if __name__ == "__main__":
    sys.exit(cli())
