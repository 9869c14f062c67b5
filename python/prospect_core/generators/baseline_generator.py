"""BaselineGenerator: a runner over a dataset, scored as ProAssist's StreamEvaluator scores it.

Files, as theirs writes them under output_dir:
  eval/<dataset>/stream/notalk<t>-maxlen_<len>[-<method>]/results/<idx>.json  predictions + match result
  .../metrics.json      their keys (F1, num_matched, num_mismatched, jaccard_index, ...) beside ours
  .../all_results.json  the gathered matches
The semantic similarity model is recorded in metrics.json ("sts_model").
"""

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from prospect_core.evaluation.embedder import SentenceEmbedder, default_embedder
from prospect_core.evaluation.matching import SEMANTIC_THRESHOLD, MatchTally, match_dialogue, weighted_text_metrics
from prospect_core.evaluation.text_metrics import NAMES, text_metrics


@dataclass
class StreamEvalSettings:
    """What the generator reads from the original's Hydra config (custom/config/prospect/prospect.yaml)."""

    fps: float = 2
    not_talk_threshold: float = 0.5
    eval_max_seq_len_str: str = "4k"
    match_window_time: tuple = (-15, 15)
    match_dist_func_factor: float = 0.3
    match_dist_func_power: float = 1.5
    match_semantic_score_threshold: float = SEMANTIC_THRESHOLD
    sts_model_type: str = "sentence-transformers/all-mpnet-base-v2"
    nlg_metrics: list = field(default_factory=lambda: ["Bleu", "CIDEr", "METEOR"])
    context_handling_method: str = "summarize_and_drop"

    @classmethod
    def from_cfg(cls, cfg):
        """From their DictConfig, a dict, or None (their prospect.yaml defaults)."""
        if cfg is None:
            return cls()
        get = (lambda k, d: cfg.get(k, d)) if hasattr(cfg, "get") else (lambda k, d: getattr(cfg, k, d))
        values = {
            f.name: get(f.name, getattr(cls(), f.name)) for f in fields(cls) if f.name != "context_handling_method"
        }
        generator = get("generator", None)
        method = generator.get("context_handling_method", None) if hasattr(generator, "get") else None
        values["context_handling_method"] = method or cls.context_handling_method
        values["match_window_time"] = tuple(values["match_window_time"])
        values["nlg_metrics"] = list(values["nlg_metrics"])
        s = cls(**values)
        left, right = s.match_window_time if len(s.match_window_time) == 2 else (1, -1)
        if not (left <= 0 <= right):
            raise ValueError(
                f"cfg.match_window_time expected (left <= 0, right >= 0) seconds, got {s.match_window_time!r}"
            )
        return s

    @property
    def eval_name(self):
        name = f"stream/notalk{self.not_talk_threshold}-maxlen_{self.eval_max_seq_len_str}"
        return (
            name if self.context_handling_method == "summarize_and_drop" else f"{name}-{self.context_handling_method}"
        )


def _embedder(sts_model_type):
    """Their model if it is a local folder; otherwise ours (offline MiniLM, or mpnet from the local HF cache)."""
    if sts_model_type and os.path.isdir(str(sts_model_type)):
        return SentenceEmbedder(sts_model_type)
    return default_embedder()


def reference_turns(video, outputs, fps):
    """[(time, text)]: the video's assistant turns that fall on one of its frames, each once; the frames' `ref`
    fields when it has no conversation."""
    conv = [t for t in (video.get("conversation") or []) if t.get("from") == "assistant" and t.get("value")]
    if conv:
        turns = [(float(t.get("timestamp", 0)), t["value"]) for t in conv]
        return [(t, text) for t, text in turns if math.floor(t * fps) < len(outputs)]
    return [(o.timestamp_in_stream, o.ref) for o in outputs if o.ref]


def _match_result(preds, refs, pairs, redundant, missed) -> dict:
    """One video's matching, as their results/<idx>.json holds it."""
    return {
        "matched": [
            [
                {"gen": preds[i][1], "timestamp_in_stream": preds[i][0]},
                {"ref": refs[j][1], "timestamp_in_stream": refs[j][0]},
            ]
            for i, j, _, _ in pairs
        ],
        "semantic_scores": [p[2] for p in pairs],
        "redundant": [preds[i][1] for i in redundant],
        "missed": [refs[j][1] for j in missed],
    }


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


class BaselineGenerator:
    def __init__(self, dataset, runner, output_dir, cfg=None, trace=None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset expected a sized, indexable dataset of video dicts, got {type(dataset).__name__}")
        if not hasattr(runner, "run_inference_on_video"):
            raise TypeError(f"runner expected an object with run_inference_on_video, got {type(runner).__name__}")
        self.dataset, self.runner, self.trace = dataset, runner, trace
        self.output_dir = Path(output_dir)
        self.cfg = cfg
        self.settings = StreamEvalSettings.from_cfg(cfg)
        name = str(getattr(dataset, "dataset_name", "dataset")).replace("/", "-")
        self.eval_dir = self.output_dir / "eval" / name / self.settings.eval_name
        self.result_dir = self.eval_dir / "results"

    def _trace_references(self, idx, refs, fps):
        """The reference turns into the trace, as the original fills its timeline with the ground truth."""
        trace = self.trace if self.trace is not None else getattr(self.runner, "trace", None)
        if trace is not None and hasattr(trace, "add_ground_truth"):
            for k, (t, text) in enumerate(refs):
                trace.add_ground_truth(index=k, timestamp=t, text=text, frame_idx=math.floor(t * fps))

    def _metrics(self, tally, embedder) -> dict:
        """The match scores, the text metrics asked for (and their Jaccard-weighted forms), and the settings."""
        s = self.settings
        metrics = tally.scores()
        text = {
            k: v
            for k, v in (text_metrics(tally.good_texts) if s.nlg_metrics else {}).items()
            if k.split("_")[0] in s.nlg_metrics
        }  # "Bleu" names Bleu_1..Bleu_4
        metrics.update(text)
        metrics.update(weighted_text_metrics({k: text[k] for k in NAMES if k in text}, metrics["jaccard_index"]))
        metrics.update(
            sts_model=embedder.name, match_window_time=list(s.match_window_time), fps=s.fps, videos=len(self.dataset)
        )
        return metrics

    def run(self) -> dict:
        """Runs every video, matches, writes the files, and returns the metrics."""
        s = self.settings
        embedder = _embedder(s.sts_model_type)
        tally = MatchTally(threshold=s.match_semantic_score_threshold)
        matched, redundant, missed, gen_ref = [], [], [], {}
        for idx in range(len(self.dataset)):
            video = self.dataset[idx]
            result = self.runner.run_inference_on_video(video, output_dir=str(self.result_dir))
            outputs = result["predictions"]
            preds = [(o.timestamp_in_stream, o.gen) for o in outputs if o.gen]
            refs = reference_turns(video, outputs, float(s.fps))
            self._trace_references(idx, refs, s.fps)
            pairs, red, mis = match_dialogue(
                preds,
                refs,
                s.match_window_time,
                float(s.fps),
                embedder,
                s.match_dist_func_factor,
                s.match_dist_func_power,
            )
            match = _match_result(preds, refs, pairs, red, mis)
            for k in tally.add(preds, refs, pairs, red, mis):  # the good pairs: counted, scored, timed
                i, j, score, _ = pairs[k]
                gen_ref[f"{idx}_{k}"] = [preds[i][1], refs[j][1], score]
            matched += match["matched"]
            redundant += match["redundant"]
            missed += match["missed"]
            _dump(
                self.result_dir / f"{idx}.json",
                {
                    "video_id": result.get("video_id"),
                    "match_result": match,
                    "predictions": [o.to_dict() for o in outputs],
                },
            )
        metrics = self._metrics(tally, embedder)
        if self.trace is not None and hasattr(self.trace, "set_metrics"):
            self.trace.set_metrics(metrics)
        _dump(self.eval_dir / "metrics.json", metrics)
        _dump(
            self.eval_dir / "all_results.json",
            {
                "matched": matched,
                "redundant": redundant,
                "missed": missed,
                "gen_ref": gen_ref,
                "time_diff": tally.time_diff,
            },
        )
        return metrics
