"""Strategy comparison: every strategy on every video, metrics per strategy, a summary and plots.

Each strategy runs in its own worker process, so its peak memory is its own and a crash takes only
that strategy down. Results are written per video as they finish (to a temporary file, then renamed),
so an interrupted run resumes without redoing finished videos.

A video that fails (a damaged file, an error in the run) fails alone: its error goes to
<strategy>/errors/<video_id>.json, the other videos run and are scored, and the metrics and summary list
the failures. A rerun retries the failed videos.

The steps: check the arguments, load the records, check each strategy's folder can resume, run (worker
processes, or torchrun ranks through distributed.py), score each strategy, write the summary.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
from collections.abc import Iterable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy
import torch

from prospect_core import __version__, distributed
from prospect_core.config import (
    DEFAULT_LAST_KEEP_LEN,
    DEFAULT_SUMMARY_MAX_LENGTH,
    DEFAULT_WINDOW,
    CompareConfig,
    RunnerConfig,
    RunTotals,
)
from prospect_core.context_strategies import ContextStrategyFactory
from prospect_core.data import check_video_ids, load_dataset
from prospect_core.evaluation.embedder import default_embedder
from prospect_core.evaluation.matching import (
    MatchTally,
    match_dialogue,
    match_window,
    parse_turns,
    weighted_text_metrics,
)
from prospect_core.evaluation.text_metrics import text_metrics as nlg_metrics
from prospect_core.model import resolve_model_path
from prospect_core.video_unit import run_strategy, write_json

DEFAULT_STRATEGIES = ["none", "drop_all", "drop_middle", "summarize_and_drop"]
RUNNER_FIELDS = tuple(f.name for f in fields(RunnerConfig))


def _weights_hash(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _versions() -> dict[str, str]:
    import transformers  # seconds to import, and only the metadata needs its version

    return {
        "prospect": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def check_resume(sdir: Path, strategy: str, cfg: CompareConfig) -> None:
    """A strategy's folder remembers what made its results; resuming with other settings would mix
    two runs in one table, so it is refused."""
    run = cfg.run_signature(strategy)
    path = Path(sdir) / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(run) | set(before) if run.get(k) != before.get(k))
        if changed:
            raise ValueError(
                f"out: {sdir} holds results made with other settings ({', '.join(changed)} differ); "
                f"pass another --out, or delete that folder to start over"
            )
    else:
        write_json(path, run)


def _run_in_workers(strategy: str, records: list[dict], cfg: CompareConfig) -> str | None:
    """The strategy's videos in a worker process. A worker that dies mid-video (a crash in native code)
    has left that video's error file; a new worker runs the videos after it. Returns None, or why the
    worker failed when it got no video done."""
    sdir = Path(cfg.out) / strategy
    todo = records
    while todo:
        p = mp.get_context("spawn").Process(
            target=run_strategy, args=(strategy, todo, cfg), name=f"prospect-{strategy}"
        )
        p.start()
        p.join()
        if p.exitcode == 0:
            return None
        # Each video before the crash left a result or an error file; so did the one it died in.
        left = [r for r in todo if not any((sdir / d / f"{r['video_id']}.json").exists() for d in ("videos", "errors"))]
        if len(left) == len(todo):
            return f"worker exited with code {p.exitcode}; see {sdir / (strategy + '.log')}"
        todo = left
    return None


def _video_error(sdir: Path, vid: str, why_missing: str) -> dict[str, str]:
    path = sdir / "errors" / f"{vid}.json"
    error = json.loads(path.read_text())["error"] if path.exists() else why_missing
    return {"video_id": vid, "error": error}


def evaluate_strategy(
    sdir: Path,
    strategy: str,
    records: list[dict],
    cfg: CompareConfig,
    embedder: Any,
    why_missing: str = "no result was written",
) -> tuple[dict[str, Any], dict[str, list]]:
    """Metrics over the videos of one strategy that have results, from the per-video files, and the
    errors of those that have none: ({...metrics, "videos_scored", "errors": [{video_id, error}]},
    predictions)."""
    win = match_window(cfg.window, cfg.eval_dataset)
    tally = MatchTally()
    totals, errors, predictions = [], [], {}
    for rec in records:
        path = sdir / "videos" / f"{rec['video_id']}.json"
        if not path.exists():
            errors.append(_video_error(sdir, rec["video_id"], why_missing))
            continue
        out = json.loads(path.read_text())
        preds = parse_turns(out["predictions"], "predictions")
        refs = parse_turns([t for t in rec["conversation"] if t["role"] == "assistant"], "reference")
        tally.add(preds, refs, *match_dialogue(preds, refs, win, rec["fps"], embedder))
        totals.append(RunTotals(**out["totals"]))
        predictions[rec["video_id"]] = out["predictions"]
    t = RunTotals.combine(totals)
    metrics = {
        "strategy": strategy,
        "videos_scored": len(predictions),
        "errors": errors,
        "frames_processed": t.frames_processed,
        "dialogues_generated": sum(len(p) for p in predictions.values()),  # the oracle's replayed turns too
        "dialogues_matched": tally.good,
        **tally.scores(),
        "cache_compressions": t.cache_compressions,
        "avg_cache_size": t.avg_cache_size,
        "peak_cache_size": t.peak_cache_size,
        "time_per_frame": t.time_per_frame,
        "peak_memory_mb": t.peak_memory_mb,
    }
    if cfg.text_metrics:
        text = nlg_metrics(tally.good_texts)
        metrics.update(text)
        metrics.update(weighted_text_metrics(text, metrics["jaccard_index"]))
    return metrics, predictions


def _metadata(cfg: CompareConfig, strategy: str, embedder: Any) -> dict[str, Any]:
    r = cfg.runner_for(strategy)
    # The strategy as the runner builds it (its own cut and position defaults), so the metadata says what ran.
    strat = ContextStrategyFactory.create_strategy(r.strategy, r.max_seq_len, r.reserved_seq_len, **r.strategy_kwargs())
    return {
        "versions": _versions(),
        "model": str(cfg.model),
        "weights_sha256_16": cfg.weights_hash,
        "strategy_config": strat.config(),
        "talk_policy": r.talk_policy,
        "not_talk_threshold": r.not_talk_threshold,
        "max_new_tokens": r.max_new_tokens,
        "window": list(cfg.window) if cfg.window else cfg.eval_dataset,
        "embedder": embedder.name,
        "seed": r.seed,
        "oracle": cfg.oracle,
        "backend": r.backend,
        "device": r.device,
        "dtype": r.torch_dtype,
        "machine": {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }


def _plots(out: Path, results: dict[str, dict]) -> list[str]:
    import matplotlib  # the hf extra's, and slow to import: only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {
        s: json.loads(next(iter(sorted((out / s / "videos").glob("*.json")))).read_text())
        for s in results
        if (out / s / "videos").exists() and any((out / s / "videos").glob("*.json"))
    }
    if not first:
        return []
    vid = next(iter(first.values()))["video_id"]
    files = []
    for name, key, ylabel in [
        ("cache_length.png", "cache_len_peak", "cache length (tokens)"),
        ("latency.png", None, "ms per frame"),
    ]:
        fig, ax = plt.subplots(figsize=(8, 4))
        for s, o in first.items():
            ys = [f[key] if key else f["vision_ms"] + f["prefill_ms"] + f["decode_ms"] for f in o["frames"]]
            ax.plot(range(len(ys)), ys, label=s)
        ax.set_xlabel(f"frame ({vid})")
        ax.set_ylabel(ylabel)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files.append(name)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [s for s in results if "metrics" in results[s]]
    ax.bar(names, [results[s]["metrics"]["peak_memory_mb"] for s in names])
    ax.set_ylabel("peak memory (MB)")
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=100)
    plt.close(fig)
    return files + ["memory.png"]


COLUMNS = [
    ("videos", "videos_scored", "{}"),
    ("frames", "frames_processed", "{}"),
    ("turns", "dialogues_generated", "{}"),
    ("good", "dialogues_matched", "{}"),
    ("P", "precision", "{:.2f}"),
    ("R", "recall", "{:.2f}"),
    ("F1", "f1", "{:.2f}"),
    ("compressions", "cache_compressions", "{}"),
    ("avg cache", "avg_cache_size", "{:.0f}"),
    ("peak cache", "peak_cache_size", "{}"),
    ("ms/frame", "time_per_frame", "{:.1f}"),
    ("peak MB", "peak_memory_mb", "{:.0f}"),
    ("BLEU-4", "Bleu_4", "{:.3f}"),
    ("METEOR", "METEOR", "{:.3f}"),
    ("CIDEr", "CIDEr", "{:.3f}"),
]


def failures(results: dict[str, dict]) -> list[tuple[str, str | None, str]]:
    """(strategy, video_id, error) for each video that failed; video_id is None where a whole strategy
    failed without naming one."""
    out = []
    for s, r in results.items():
        errors = r["metrics"]["errors"] if "metrics" in r else r.get("errors", [])
        out += [(s, e["video_id"], e["error"]) for e in errors]
        if "metrics" not in r and not errors:
            out.append((s, None, r.get("error", "?")))
    return out


def summary_markdown(results: dict[str, dict], shown: int = 20) -> str:
    """The table, then the failed videos (the first `shown` of them; summary.json has them all)."""
    lines = ["| strategy | " + " | ".join(c for c, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for s, r in results.items():
        if "metrics" not in r:
            lines.append(f"| {s} | failed: {r.get('error', '?')} |")
            continue
        m = dict(r["metrics"], time_per_frame=r["metrics"]["time_per_frame"] * 1e3)
        lines.append(
            f"| {s} | " + " | ".join(f.format(m[k]) if m.get(k) is not None else "-" for _, k, f in COLUMNS) + " |"
        )
    failed = failures(results)
    if failed:
        lines += ["", f"Failed ({len(failed)}; not in the scores above, retried by a rerun):"]
        for s, vid, error in failed[:shown]:
            first = (error.splitlines() or ["?"])[0]
            lines.append(f"- {s}, {vid or 'all videos'}: {first[:300]}")
        if len(failed) > shown:
            lines.append(f"- ... and {len(failed) - shown} more (summary.json lists all)")
    return "\n".join(lines)


def dialogue_excerpt(out: Path | str, strategies: Iterable[str], turns: int = 4) -> str:
    """The first turns each strategy said on the first video, and its summaries: what the table
    cannot show."""
    lines = []
    for s in strategies:
        videos = sorted((Path(out) / s / "videos").glob("*.json"))
        if not videos:
            continue
        v = json.loads(videos[0].read_text())
        lines.append(f"{s} on {v.get('video_id')}:")
        for p in v.get("predictions", [])[:turns]:
            lines.append(f"  [{p['time']:5.1f}s] assistant: {' '.join(p['text'].split())}")
        for m in v.get("summaries", [])[:2]:
            lines.append(f"  [{m['time']:5.1f}s] summary: {' '.join(m['text'].split())}")
    return "\n".join(lines)


# ---- compare() and its steps ---------------------------------------------------------------------------
def _runner_config(runner: RunnerConfig | None, settings: dict[str, Any]) -> RunnerConfig:
    """`runner` (or the defaults) with the keyword settings compare() was given on top."""
    if "dtype" in settings:  # compare's own name for torch_dtype
        settings["torch_dtype"] = settings.pop("dtype")
    unknown = sorted(set(settings) - set(RUNNER_FIELDS))
    if unknown:
        raise TypeError(
            f"compare() got unexpected keyword arguments {unknown} (the runner settings are "
            f"RunnerConfig's fields: {', '.join(RUNNER_FIELDS)})"
        )
    return replace(runner or RunnerConfig(), **settings)


def _strategies(strategies: Iterable[str] | None) -> list[str]:
    out = list(strategies or DEFAULT_STRATEGIES)
    for s in out:
        if s not in ContextStrategyFactory.known():
            raise ValueError(f"strategies expected names from {', '.join(ContextStrategyFactory.known())}, got {s!r}")
    return out


def _run_on_ranks(
    strategies: list[str], records: list[dict], cfg: CompareConfig
) -> tuple[int, CompareConfig, dict[str, list[dict]]]:
    """This rank's share of the (strategy, video) units, on the device torchrun gave it, once rank 0 has
    prepared the out folder. Returns the rank, the config on that device, and (on rank 0) the failures of
    every rank by strategy."""
    ranks = distributed.init(cfg.runner.device)
    cfg = replace(cfg, runner=replace(cfg.runner, device=ranks.device))
    failed: dict[str, list[dict]] = {}
    try:
        ranks.rank0_first(lambda: _prepare_out(strategies, cfg))  # one process cleans and checks the folders
        for f in distributed.run_units(strategies, records, cfg, ranks):
            failed.setdefault(f["strategy"], []).append(f)
    finally:
        distributed.finish()
    return ranks.rank, cfg, failed


def _records(dataset: str | Path | Iterable[dict]) -> list[dict]:
    if isinstance(dataset, (str, Path)):
        return load_dataset(dataset)
    records = list(dataset)  # records already parsed; their ids still name files under out
    if not records:
        raise ValueError("dataset expected at least one video record, got none")
    check_video_ids(records, "dataset")
    return records


def _prepare_out(strategies: list[str], cfg: CompareConfig) -> None:
    """Makes the out folder, removes the temp files of a run killed while writing, and checks that each
    strategy's folder can resume."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob("*.json.tmp*"):
        stale.unlink()
    for s in strategies:
        check_resume(out / s, s, cfg)


def _run_strategy(
    strategy: str, records: list[dict], cfg: CompareConfig, workers: bool | None, rank_failures: list[dict]
) -> str | None:
    """Runs the strategy's videos not done yet: workers=True in a worker process, False here, None not at all
    (torchrun ranks ran them). Returns why the strategy's process failed, if it did."""
    sdir = Path(cfg.out) / strategy
    sdir.mkdir(parents=True, exist_ok=True)
    if workers is not None:
        shutil.rmtree(sdir / "errors", ignore_errors=True)  # from an earlier run; those videos run again
    for f in rank_failures:  # torchrun units that raised outside a video (the runner was not built)
        (sdir / "errors").mkdir(exist_ok=True)
        write_json(
            sdir / "errors" / f"{f['video_id']}.json",
            {"video_id": f["video_id"], "error": f"on rank {f['rank']}: {f['error']}"},
        )
    if workers:  # one process per strategy: its peak memory is its own, its crash too
        return _run_in_workers(strategy, records, cfg)
    if workers is not None:
        try:
            run_strategy(strategy, records, cfg)
        except Exception as e:
            return f"{type(e).__name__}: {e}"
    return None


def _score_strategy(
    strategy: str, records: list[dict], cfg: CompareConfig, embedder: Any, why: str | None
) -> dict[str, Any]:
    """{"metrics": ...}, also written to <strategy>_metrics.json; {"error", "errors"} when no video was done."""
    sdir = Path(cfg.out) / strategy
    metrics, predictions = evaluate_strategy(sdir, strategy, records, cfg, embedder, why or "no result was written")
    if not predictions:  # no video done: no row of numbers to show
        e = metrics["errors"][0]
        return {
            "error": why or f"all {len(records)} videos failed; {e['video_id']}: {e['error']}",
            "errors": metrics["errors"],
        }
    metrics["metadata"] = _metadata(cfg, strategy, embedder)
    write_json(sdir / f"{strategy}_predictions.json", predictions)
    write_json(sdir / f"{strategy}_metrics.json", metrics)
    return {"metrics": metrics}


def _write_summary(out: Path, results: dict[str, dict], dataset: Any, records: list[dict]) -> None:
    plots = _plots(out, results)
    summary = {s: r.get("metrics", r) for s, r in results.items()}
    name = str(dataset) if isinstance(dataset, (str, Path)) else f"{len(records)} records"
    write_json(out / "summary.json", {"strategies": summary, "plots": plots, "dataset": name})
    (out / "summary.md").write_text(summary_markdown(results) + "\n")


# Over 60 lines for its keyword signature and the docstring that documents each; the work is in the steps
# it calls.
def compare(
    dataset: str | Path | Iterable[dict],
    model: str | Path,
    strategies: Iterable[str] | None = None,
    out: str | Path = "outputs/compare",
    *,
    runner: RunnerConfig | None = None,
    last_keep_len: int = DEFAULT_LAST_KEEP_LEN,
    summary_max_length: int = DEFAULT_SUMMARY_MAX_LENGTH,
    window: tuple[float, float] | None = None,
    eval_dataset: str | None = None,
    oracle: bool = False,
    max_frames: int | None = None,
    text_metrics: bool = True,
    progress: bool = True,
    workers: bool = True,
    launcher: str | None = None,
    **runner_settings: Any,
) -> dict[str, dict]:
    """Runs the comparison and returns {strategy: {"metrics": ...} or {"error": ..., "errors": [...]}}.

    runner: the RunnerConfig every strategy shares (its strategy fields are set per strategy); keyword
    arguments named as its fields (max_seq_len=..., and dtype= for torch_dtype) override it.

    A video that fails is listed in its strategy's metrics["errors"] ({video_id, error}) and the others
    are scored; a strategy with no video done gets "error" and no metrics. `failures(results)` lists them.

    launcher="torchrun" (or a run under torchrun, detected from its environment) shares the (strategy, video)
    units across the ranks; rank 0 evaluates and returns the results, the other ranks return {}."""
    # Long only in its signature (one keyword a line) and docstring: each step is a function above.
    strategies = _strategies(strategies)
    if launcher not in (None, "torchrun"):
        raise ValueError(f"launcher expected None or 'torchrun', got {launcher!r}")
    shared = _runner_config(runner, runner_settings)
    if window is None and eval_dataset is None:
        window = DEFAULT_WINDOW
    records = _records(dataset)
    out = Path(out)
    model = resolve_model_path(model)
    cfg = CompareConfig(
        model=str(model),
        out=str(out),
        weights_hash=_weights_hash(model),
        runner=shared,
        strategy_config={
            "drop_middle": {"last_keep_len": last_keep_len},
            "summarize_and_drop": {"summary_max_length": summary_max_length},
        },
        oracle=oracle,
        window=(window[0], window[1]) if window else None,
        eval_dataset=eval_dataset,
        max_frames=max_frames,
        text_metrics=text_metrics,
        progress=progress,
    )
    run_here: bool | None = workers
    rank_failures: dict[str, list[dict]] = {}
    if launcher == "torchrun" or distributed.launched_by_torchrun():
        rank, cfg, rank_failures = _run_on_ranks(strategies, records, cfg)
        if rank != 0:
            return {}
        run_here = None  # units are done; rank 0 only evaluates
    else:
        _prepare_out(strategies, cfg)
    embedder = default_embedder()
    results = {}
    for s in strategies:
        why = _run_strategy(s, records, cfg, run_here, rank_failures.get(s, []))
        results[s] = _score_strategy(s, records, cfg, embedder, why)
    _write_summary(out, results, dataset, records)
    return results
