"""Strategy comparison: every strategy on every video, metrics per strategy, a summary and plots.

Each strategy runs in its own worker process, so its peak memory is its own and a crash takes only
that strategy down. Results are written per video as they finish (to a temporary file, then renamed),
so an interrupted run resumes without redoing finished videos.

A video that fails (a damaged file, an error in the run) fails alone: its error goes to
<strategy>/errors/<video_id>.json, the other videos run and are scored, and the metrics and summary list
the failures. A rerun retries the failed videos.
"""

import datetime
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

DEFAULT_STRATEGIES = ["none", "drop_all", "drop_middle", "summarize_and_drop"]


def write_json(path, obj):
    """Atomic: a reader (or a resumed run) never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _weights_hash(model_dir):
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _versions():
    import numpy
    import torch
    import transformers

    import prospect_core

    return {"prospect": prospect_core.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


def _runner_kwargs(cfg, strategy):
    from prospect_core.runners.stream_runner import NATIVE_STRATEGY_DEFAULTS

    # The strategy as the runner builds it (its own cut and position defaults), so the metadata says what ran.
    scfg = {**NATIVE_STRATEGY_DEFAULTS.get(strategy, {}), **cfg.get("strategy_config", {}).get(strategy, {})}
    return dict(device=cfg["device"], torch_dtype=cfg["dtype"], max_new_tokens=cfg["max_new_tokens"],
                context_strategy_type=strategy, context_strategy_config=scfg or None,
                max_seq_len=cfg["max_seq_len"], reserved_seq_len=cfg["reserved_seq_len"], backend=cfg["backend"],
                talk_policy="annotations" if cfg["oracle"] else cfg["talk_policy"],
                not_talk_threshold=cfg["not_talk_threshold"], seed=cfg["seed"])


def check_resume(sdir, strategy, cfg):
    """A strategy's folder remembers what made its results; resuming with other settings would mix
    two runs in one table, so it is refused."""
    run = {"weights_hash": cfg["weights_hash"], "max_frames": cfg.get("max_frames"), "oracle": cfg["oracle"],
           **{k: v for k, v in _runner_kwargs(cfg, strategy).items() if k != "device"}}
    path = Path(sdir) / "run.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(run) | set(before) if run.get(k) != before.get(k))
        if changed:
            raise ValueError(f"out: {sdir} holds results made with other settings ({', '.join(changed)} differ); "
                             f"pass another --out, or delete that folder to start over")
    else:
        write_json(path, run)


def _oracle_predictions(frames, conversation, fps):
    """The reference turns, replayed at the times the pipeline gave their frames."""
    times = {f["frame_index"]: f["time"] for f in frames}
    out = []
    for t in conversation:
        if t["role"] == "assistant":
            i = math.floor(t["time"] * fps)
            if i in times:
                out.append({"time": times[i], "frame_index": i, "text": t["content"]})
    return out


def _now():
    return datetime.datetime.now().isoformat(timespec="seconds")


def run_videos(runner, records, sdir, strategy, cfg, log):
    """Runs the records not yet done; writes <sdir>/videos/<video_id>.json for each, or, for a video
    that fails, <sdir>/errors/<video_id>.json, and goes on with the next."""
    from tqdm import tqdm

    from prospect_core.data import frames_of

    vdir, edir = sdir / "videos", sdir / "errors"
    vdir.mkdir(parents=True, exist_ok=True)
    edir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in records if not (vdir / f"{r['video_id']}.json").exists()]
    for rec in tqdm(todo, desc=strategy, unit="video", disable=not cfg.get("progress", True), file=sys.stderr):
        vid = rec["video_id"]
        # Written first, so a process that dies inside native code still leaves the name of the video.
        write_json(edir / f"{vid}.json", {"video_id": vid, "error": "the process died while running this video"})
        t0 = time.perf_counter()
        try:
            out = runner.run_inference_on_video(frames_of(rec, cfg.get("max_frames")))
            if cfg["oracle"]:
                out["predictions"] = _oracle_predictions(out["frames"], rec["conversation"], rec["fps"])
        except Exception as e:
            write_json(edir / f"{vid}.json", {"video_id": vid, "error": f"{type(e).__name__}: {e}"})
            log.write(f"{_now()} {vid} failed:\n{traceback.format_exc()}")
            log.flush()
            continue
        out["video_id"] = vid
        write_json(vdir / f"{vid}.json", out)
        (edir / f"{vid}.json").unlink()
        t = out["totals"]
        log.write(f"{_now()} {vid}: {t['frames_processed']} frames, {len(out['predictions'])} turns, "
                  f"{t['cache_compressions']} compressions, {t['time_per_frame'] * 1e3:.1f} ms/frame, "
                  f"{time.perf_counter() - t0:.1f} s\n")
        log.flush()


def _worker(strategy, records, cfg):
    """One strategy in its own process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from prospect_core.runners import StreamRunner

    torch.manual_seed(cfg["seed"])
    sdir = Path(cfg["out"]) / strategy
    sdir.mkdir(parents=True, exist_ok=True)
    with open(sdir / f"{strategy}.log", "a") as log:
        try:
            runner = StreamRunner(cfg["model"], **_runner_kwargs(cfg, strategy))
            run_videos(runner, records, sdir, strategy, cfg, log)
        except BaseException:
            log.write(traceback.format_exc())
            raise


def _run_in_workers(strategy, records, cfg):
    """The strategy's videos in a worker process. A worker that dies mid-video (a crash in native code)
    has left that video's error file; a new worker runs the videos after it. Returns None, or why the
    worker failed when it got no video done."""
    sdir = Path(cfg["out"]) / strategy
    todo = records
    while todo:
        p = mp.get_context("spawn").Process(target=_worker, args=(strategy, todo, cfg), name=f"prospect-{strategy}")
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


def _video_error(sdir, vid, why_missing):
    path = sdir / "errors" / f"{vid}.json"
    error = json.loads(path.read_text())["error"] if path.exists() else why_missing
    return {"video_id": vid, "error": error}


def evaluate_strategy(sdir, strategy, records, cfg, embedder, why_missing="no result was written"):
    """Metrics over the videos of one strategy that have results, from the per-video files, and the
    errors of those that have none: ({...metrics, "videos_scored", "errors": [{video_id, error}]},
    predictions)."""
    from prospect_core.evaluation.matching import (SEMANTIC_THRESHOLD, _turns, _window, counts_to_metrics,
                                                   match_dialogue, weighted_text_metrics)
    from prospect_core.evaluation.text_metrics import text_metrics

    win = _window(cfg.get("window"), cfg.get("eval_dataset"))
    counts = dict(matched=0, good=0, redundant=0, missed=0)
    good_pairs, sem, tdiff, errors = [], [], [], []
    frames = dialogues = compressions = 0
    cache_sum = peak_cache = 0
    time_sum = peak_mem = 0.0
    predictions = {}
    for rec in records:
        path = sdir / "videos" / f"{rec['video_id']}.json"
        if not path.exists():
            errors.append(_video_error(sdir, rec["video_id"], why_missing))
            continue
        out = json.loads(path.read_text())
        preds = _turns(out["predictions"], "predictions")
        refs = _turns([t for t in rec["conversation"] if t["role"] == "assistant"], "reference")
        pairs, redundant, missed = match_dialogue(preds, refs, win, rec["fps"], embedder)
        good = [p for p in pairs if p[2] > SEMANTIC_THRESHOLD]
        counts["matched"] += len(pairs)
        counts["good"] += len(good)
        counts["redundant"] += len(redundant)
        counts["missed"] += len(missed)
        good_pairs += [(preds[i][1], refs[j][1]) for i, j, _, _ in good]
        sem += [p[2] for p in good]
        tdiff += [abs(p[3]) for p in good]
        t = out["totals"]
        frames += t["frames_processed"]
        dialogues += len(out["predictions"])
        compressions += t["cache_compressions"]
        cache_sum += t["avg_cache_size"] * t["frames_processed"]
        peak_cache = max(peak_cache, t["peak_cache_size"])
        time_sum += t["time_per_frame"] * t["frames_processed"]
        peak_mem = max(peak_mem, t["peak_memory_mb"])
        predictions[rec["video_id"]] = out["predictions"]
    metrics = {
        "strategy": strategy, "videos_scored": len(predictions), "errors": errors,
        "frames_processed": frames, "dialogues_generated": dialogues,
        "dialogues_matched": counts["good"],
        **counts_to_metrics(counts["matched"], counts["good"], counts["redundant"], counts["missed"]),
        "semantic_score": sum(sem) / len(sem) if sem else 0.0, "time_diff": sum(tdiff) / len(tdiff) if tdiff else 0.0,
        "cache_compressions": compressions, "avg_cache_size": cache_sum / frames if frames else 0.0,
        "peak_cache_size": peak_cache, "time_per_frame": time_sum / frames if frames else 0.0,
        "peak_memory_mb": peak_mem,
    }
    if cfg.get("text_metrics", True):
        text = text_metrics(good_pairs)
        metrics.update(text)
        metrics.update(weighted_text_metrics(text, metrics["jaccard_index"]))
    return metrics, predictions


def _metadata(cfg, strategy, embedder):
    from prospect_core.context_strategies import ContextStrategyFactory
    from prospect_core.runners.stream_runner import NATIVE_STRATEGY_DEFAULTS

    # The strategy as the runner builds it (its own cut and position defaults), so the metadata says what ran.
    scfg = {**NATIVE_STRATEGY_DEFAULTS.get(strategy, {}), **cfg.get("strategy_config", {}).get(strategy, {})}
    strat = ContextStrategyFactory.create_strategy(strategy, cfg["max_seq_len"], cfg["reserved_seq_len"], **scfg)
    return {
        "versions": _versions(), "model": str(cfg["model"]), "weights_sha256_16": cfg["weights_hash"],
        "strategy_config": strat.config(), "talk_policy": "annotations" if cfg["oracle"] else cfg["talk_policy"],
        "not_talk_threshold": cfg["not_talk_threshold"], "max_new_tokens": cfg["max_new_tokens"],
        "window": cfg.get("window") or cfg.get("eval_dataset"), "embedder": embedder.name, "seed": cfg["seed"],
        "oracle": cfg["oracle"], "backend": cfg["backend"], "device": cfg["device"], "dtype": cfg["dtype"],
        "machine": {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count()},
    }


def _plots(out, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {s: json.loads(next(iter(sorted((out / s / "videos").glob("*.json")))).read_text())
             for s in results if (out / s / "videos").exists() and any((out / s / "videos").glob("*.json"))}
    if not first:
        return []
    vid = next(iter(first.values()))["video_id"]
    files = []
    for name, key, ylabel in [("cache_length.png", "cache_len_peak", "cache length (tokens)"),
                              ("latency.png", None, "ms per frame")]:
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


COLUMNS = [("videos", "videos_scored", "{}"), ("frames", "frames_processed", "{}"),
           ("turns", "dialogues_generated", "{}"), ("good", "dialogues_matched", "{}"),
           ("P", "precision", "{:.2f}"), ("R", "recall", "{:.2f}"), ("F1", "f1", "{:.2f}"),
           ("compressions", "cache_compressions", "{}"), ("avg cache", "avg_cache_size", "{:.0f}"),
           ("peak cache", "peak_cache_size", "{}"), ("ms/frame", "time_per_frame", "{:.1f}"),
           ("peak MB", "peak_memory_mb", "{:.0f}"), ("BLEU-4", "Bleu_4", "{:.3f}"), ("METEOR", "METEOR", "{:.3f}"),
           ("CIDEr", "CIDEr", "{:.3f}")]


def failures(results):
    """(strategy, video_id, error) for each video that failed; video_id is None where a whole strategy
    failed without naming one."""
    out = []
    for s, r in results.items():
        errors = r["metrics"]["errors"] if "metrics" in r else r.get("errors", [])
        out += [(s, e["video_id"], e["error"]) for e in errors]
        if "metrics" not in r and not errors:
            out.append((s, None, r.get("error", "?")))
    return out


def summary_markdown(results, shown=20):
    """The table, then the failed videos (the first `shown` of them; summary.json has them all)."""
    lines = ["| strategy | " + " | ".join(c for c, _, _ in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for s, r in results.items():
        if "metrics" not in r:
            lines.append(f"| {s} | failed: {r.get('error', '?')} |")
            continue
        m = dict(r["metrics"], time_per_frame=r["metrics"]["time_per_frame"] * 1e3)
        lines.append(f"| {s} | " + " | ".join(f.format(m[k]) if m.get(k) is not None else "-"
                                              for _, k, f in COLUMNS) + " |")
    failed = failures(results)
    if failed:
        lines += ["", f"Failed ({len(failed)}; not in the scores above, retried by a rerun):"]
        for s, vid, error in failed[:shown]:
            first = (error.splitlines() or ["?"])[0]
            lines.append(f"- {s}, {vid or 'all videos'}: {first[:300]}")
        if len(failed) > shown:
            lines.append(f"- ... and {len(failed) - shown} more (summary.json lists all)")
    return "\n".join(lines)


def dialogue_excerpt(out, strategies, turns=4):
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


def compare(dataset, model, strategies=None, out="outputs/compare", *, max_seq_len=4096, reserved_seq_len=128,
            last_keep_len=512, summary_max_length=512, max_new_tokens=100, talk_policy="silence_threshold",
            not_talk_threshold=0.5, window=None, eval_dataset=None, oracle=False, device="cpu", dtype="float32",
            backend="native", seed=0, max_frames=None, text_metrics=True, progress=True, workers=True,
            launcher=None):
    """Runs the comparison and returns {strategy: {"metrics": ...} or {"error": ..., "errors": [...]}}.

    A video that fails is listed in its strategy's metrics["errors"] ({video_id, error}) and the others
    are scored; a strategy with no video done gets "error" and no metrics. `failures(results)` lists them.

    launcher="torchrun" (or a run under torchrun, detected from its environment) shares the (strategy, video)
    units across the ranks; rank 0 evaluates and returns the results, the other ranks return {}."""
    from prospect_core.context_strategies import ContextStrategyFactory
    from prospect_core.data import check_video_ids, load_dataset
    from prospect_core.evaluation.embedder import default_embedder
    from prospect_core.model import resolve_model_path

    strategies = list(strategies or DEFAULT_STRATEGIES)
    for s in strategies:
        if s not in ContextStrategyFactory.known():
            raise ValueError(f"strategies expected names from {', '.join(ContextStrategyFactory.known())}, got {s!r}")
    if window is None and eval_dataset is None:
        window = (-2.0, 4.0)
    if isinstance(dataset, (str, Path)):
        records = load_dataset(dataset)
    else:  # records already parsed; their ids still name files under out
        records = list(dataset)
        if not records:
            raise ValueError("dataset expected at least one video record, got none")
        check_video_ids(records, "dataset")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob("*.json.tmp*"):  # left by a run that was killed while writing
        stale.unlink()
    model = resolve_model_path(model)
    cfg = dict(model=str(model), out=str(out), max_seq_len=max_seq_len, reserved_seq_len=reserved_seq_len,
               max_new_tokens=max_new_tokens, talk_policy=talk_policy, not_talk_threshold=not_talk_threshold,
               window=list(window) if window else None, eval_dataset=eval_dataset, oracle=oracle, device=device,
               dtype=dtype, backend=backend, seed=seed, max_frames=max_frames, text_metrics=text_metrics,
               progress=progress, weights_hash=_weights_hash(model),
               strategy_config={"drop_middle": {"last_keep_len": last_keep_len},
                                "summarize_and_drop": {"summary_max_length": summary_max_length}})
    for s in strategies:
        check_resume(out / s, s, cfg)
    from prospect_core import distributed

    if launcher not in (None, "torchrun"):
        raise ValueError(f"launcher expected None or 'torchrun', got {launcher!r}")
    failed = {}
    if launcher == "torchrun" or distributed.launched_by_torchrun():
        rank, world, cfg["device"] = distributed.init(device)
        for f in distributed.run_units(strategies, records, cfg, rank, world):
            failed.setdefault(f["strategy"], []).append(f)
        if rank != 0:
            return {}
        workers = None  # units are done; rank 0 only evaluates
    embedder = default_embedder()
    results = {}
    for s in strategies:
        sdir = out / s
        sdir.mkdir(parents=True, exist_ok=True)
        if workers is not None:
            shutil.rmtree(sdir / "errors", ignore_errors=True)  # from an earlier run; those videos run again
        for f in failed.get(s, []):  # torchrun units that raised outside a video (the runner was not built)
            (sdir / "errors").mkdir(exist_ok=True)
            write_json(sdir / "errors" / f"{f['video_id']}.json",
                       {"video_id": f["video_id"], "error": f"on rank {f['rank']}: {f['error']}"})
        why = None  # why the strategy's process failed, if it did
        if workers:  # one process per strategy: its peak memory is its own, its crash too
            why = _run_in_workers(s, records, cfg)
        elif workers is not None:
            try:
                _worker(s, records, cfg)
            except Exception as e:
                why = f"{type(e).__name__}: {e}"
        metrics, predictions = evaluate_strategy(sdir, s, records, cfg, embedder, why or "no result was written")
        if not predictions:  # no video done: no row of numbers to show
            e = metrics["errors"][0]
            results[s] = {"error": why or f"all {len(records)} videos failed; {e['video_id']}: {e['error']}",
                          "errors": metrics["errors"]}
            continue
        metrics["metadata"] = _metadata(cfg, s, embedder)
        write_json(sdir / f"{s}_predictions.json", predictions)
        write_json(sdir / f"{s}_metrics.json", metrics)
        results[s] = {"metrics": metrics}
    plots = _plots(out, results)
    summary = {s: r.get("metrics", r) for s, r in results.items()}
    name = str(dataset) if isinstance(dataset, (str, Path)) else f"{len(records)} records"
    write_json(out / "summary.json", {"strategies": summary, "plots": plots, "dataset": name})
    (out / "summary.md").write_text(summary_markdown(results) + "\n")
    return results
