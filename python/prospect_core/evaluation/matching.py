"""ProAssist's turn matching and its precision / recall / F1."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prospect_core import _C as core
from prospect_core.evaluation import text_metrics as nlg
from prospect_core.evaluation.embedder import default_embedder

# Time windows [pred + left, pred + right] in seconds, per ProAssist dataset.
WINDOWS = {
    "ego4d": (-4.0, 8.5),
    "epickitchens": (-1.5, 3.0),
    "holoassist": (-1.5, 2.5),
    "egoexolearn": (-2.0, 3.5),
    "assembly101": (-2.0, 4.0),
    "wtag": (-3.0, 6.0),
    "narration": (-2.5, 2.5),
}
SEMANTIC_THRESHOLD = 0.5


def match_window(window: Sequence[float] | None, dataset: str | None) -> tuple[float, float]:
    """(left, right) seconds: the window given, or the named ProAssist dataset's."""
    if window is None and dataset is None:
        raise ValueError(
            "evaluate_dialogue expected window=(left, right) seconds or dataset= one of "
            f"{', '.join(WINDOWS)}; got neither"
        )
    if window is None:
        if dataset not in WINDOWS:
            raise ValueError(f"dataset expected one of {', '.join(WINDOWS)}, got {dataset!r}")
        return WINDOWS[dataset]
    if (
        not isinstance(window, (tuple, list))
        or len(window) != 2
        or not all(isinstance(x, (int, float)) for x in window)
        or window[0] > 0
        or window[1] < 0
    ):
        raise ValueError(f"window expected (left <= 0, right >= 0) seconds, got {window!r}")
    return float(window[0]), float(window[1])


def parse_turns(items: Sequence[Any], what: str) -> list[tuple[float, str]]:
    """[(time, text)] from turns {time, text or content}; `what` names them in errors."""
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, dict) or "time" not in t:
            raise ValueError(f"{what}[{i}] expected a dict with 'time' and text, got {t!r}")
        text = t.get("text", t.get("content"))
        if not isinstance(text, str):
            raise ValueError(f"{what}[{i}] expected a 'text' (or 'content') string, got {text!r}")
        if not isinstance(t["time"], (int, float)) or t["time"] < 0 or math.isnan(t["time"]):
            raise ValueError(f"{what}[{i}]['time'] expected seconds >= 0, got {t['time']!r}")
        out.append((float(t["time"]), text))
    return out


def counts_to_metrics(matched: int, good: int, redundant: int, missed: int) -> dict[str, Any]:
    """Precision, recall and F1 from the match counts, under our names and under ProAssist's
    (F1, num_matched = good pairs, num_mismatched, num_missed, num_redundant, jaccard_index), so code that
    reads either finds real values."""
    precision = good / (matched + redundant) if matched + redundant else 0.0
    recall = good / (matched + missed) if matched + missed else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = matched + missed + redundant
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched": matched,
        "good": good,
        "redundant": redundant,
        "missed": missed,
        "missing_rate": missed / (matched + missed) if matched + missed else 0.0,
        "redundant_rate": redundant / (matched + redundant) if matched + redundant else 0.0,
        "F1": f1,
        "num_matched": good,
        "num_mismatched": matched - good,
        "num_missed": missed,
        "num_redundant": redundant,
        "jaccard_index": good / total if total else 0.0,
    }


def weighted_text_metrics(text: dict[str, Any], jaccard: float) -> dict[str, float]:
    """ProAssist's `<metric>_w`: each text metric times the Jaccard index."""
    return {f"{k}_w": jaccard * v for k, v in text.items() if v is not None}


Pair = tuple[int, int, float, float]  # (prediction i, reference j, semantic score, time difference)


def match_dialogue(
    predictions: list[tuple[float, str]],
    reference: list[tuple[float, str]],
    window: Sequence[float],
    fps: float,
    embedder: Callable[[list[str]], torch.Tensor],
    dist_factor: float = 0.3,
    dist_power: float = 1.5,
) -> tuple[list[Pair], list[int], list[int]]:
    """The matching itself: returns (pairs [(pred i, ref j, semantic score, time diff)], redundant pred indices,
    missed ref indices). Columns are the reference turns plus every silent frame; a prediction matched to a
    silent frame is redundant. The time cost is dist_factor * |frame difference|^dist_power / range^dist_power."""
    left, right = window
    n_p, n_r = len(predictions), len(reference)
    frame = lambda t: math.floor(t * fps)  # noqa: E731
    ref_frames = {frame(t) for t, _ in reference}
    last = max([frame(t) for t, _ in predictions + reference] + [0]) + math.ceil(right * fps) + 1
    silent = [j for j in range(last + 1) if j not in ref_frames]
    rg = max((right - left) * fps, 1.0)

    if n_p and n_r:
        sim = (embedder([p for _, p in predictions]) @ embedder([r for _, r in reference]).T).abs()
    else:
        sim = torch.zeros(n_p, n_r)

    # Columns: reference turns, silent frames, then one private fallback per prediction (redundant at the
    # cost of a silent frame) so a full matching always exists.
    cost = torch.full((n_p, n_r + len(silent) + n_p), math.inf, dtype=torch.float64)
    for i, (tp, _) in enumerate(predictions):
        fp = frame(tp)
        for j, (tr, _) in enumerate(reference):
            if tp + left <= tr <= tp + right:
                cost[i, j] = 1.0 - sim[i, j].item() + dist_factor * abs(fp - frame(tr)) ** dist_power / rg**dist_power
        for k, fs in enumerate(silent):
            if tp + left <= (fs + 1) / fps - 1e-9 and fs / fps <= tp + right:
                cost[i, n_r + k] = 1.0
        cost[i, n_r + len(silent) + i] = 1.0 + 1e-6
    cols = core.min_weight_full_matching(cost) if n_p else []
    pairs: list[Pair] = []
    redundant = []
    for i, c in enumerate(cols):
        if c < n_r:
            pairs.append((i, c, sim[i, c].item(), predictions[i][0] - reference[c][0]))
        else:
            redundant.append(i)
    matched_refs = {j for _, j, _, _ in pairs}
    missed = [j for j in range(n_r) if j not in matched_refs]
    return pairs, redundant, missed


@dataclass
class MatchTally:
    """Match results summed over videos. A pair is good when its semantic score is above the threshold; the
    scores count good pairs as hits, and average the good pairs' similarity and time difference."""

    threshold: float = SEMANTIC_THRESHOLD
    matched: int = 0
    good: int = 0
    redundant: int = 0
    missed: int = 0
    semantic: list[float] = field(default_factory=list)  # of the good pairs
    time_diff: list[float] = field(default_factory=list)  # |prediction time - reference time| of the good pairs
    good_texts: list[tuple[str, str]] = field(default_factory=list)  # (prediction, reference) of the good pairs

    def add(
        self,
        predictions: list[tuple[float, str]],
        reference: list[tuple[float, str]],
        pairs: list[Pair],
        redundant: Sequence[int],
        missed: Sequence[int],
    ) -> list[int]:
        """One video's match_dialogue result; returns the indices into `pairs` of the good ones."""
        good = [k for k, p in enumerate(pairs) if p[2] > self.threshold]
        self.matched += len(pairs)
        self.good += len(good)
        self.redundant += len(redundant)
        self.missed += len(missed)
        for k in good:
            i, j, score, dt = pairs[k]
            self.semantic.append(score)
            self.time_diff.append(abs(dt))
            self.good_texts.append((predictions[i][1], reference[j][1]))
        return good

    def scores(self) -> dict[str, Any]:
        """counts_to_metrics of the counts, then semantic_score and time_diff (means over the good pairs)."""
        return {
            **counts_to_metrics(self.matched, self.good, self.redundant, self.missed),
            "semantic_score": sum(self.semantic) / len(self.semantic) if self.semantic else 0.0,
            "time_diff": sum(self.time_diff) / len(self.time_diff) if self.time_diff else 0.0,
        }


def evaluate_dialogue(
    predictions: list[dict],
    reference_conversation: list[dict],
    window: Sequence[float] | None = None,
    dataset: str | None = None,
    fps: float = 2.0,
    embedder: Callable[[list[str]], torch.Tensor] | None = None,
    text_metrics: bool = True,
) -> dict[str, Any]:
    """Scores predicted turns {time, text} against a ProAssist reference conversation {role, time, content}.

    Returns precision, recall, f1, the counts matched / good / redundant / missed, missing_rate,
    redundant_rate, semantic_score and time_diff (means over good pairs), and Bleu_1..Bleu_4, METEOR,
    CIDEr on the good pairs."""
    win = match_window(window, dataset)
    if not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps expected a positive number, got {fps!r}")
    if not isinstance(reference_conversation, list):
        raise TypeError(f"reference_conversation expected a list of turns, got {type(reference_conversation).__name__}")
    if not isinstance(predictions, list):
        raise TypeError(f"predictions expected a list of turns, got {type(predictions).__name__}")
    preds = parse_turns(predictions, "predictions")
    refs = parse_turns(
        [t for t in reference_conversation if isinstance(t, dict) and t.get("role") == "assistant"],
        "reference_conversation (assistant turns)",
    )
    emb = embedder or default_embedder()
    tally = MatchTally()
    tally.add(preds, refs, *match_dialogue(preds, refs, win, float(fps), emb))
    out = {
        **tally.scores(),
        "window": list(win),
        "fps": float(fps),
        "embedder": getattr(emb, "name", type(emb).__name__),
        "semantic_threshold": SEMANTIC_THRESHOLD,
    }
    if text_metrics:
        out.update(nlg.text_metrics(tally.good_texts))
        out.update(weighted_text_metrics({k: out[k] for k in nlg.NAMES}, out["jaccard_index"]))
    else:
        out.update({k: None for k in nlg.NAMES})
    return out
