"""ProAssist's turn matching and its precision / recall / F1."""

import math

import torch

from prospect_core import _C as core

# Time windows [pred + left, pred + right] in seconds, per ProAssist dataset.
WINDOWS = {
    "ego4d": (-4.0, 8.5), "epickitchens": (-1.5, 3.0), "holoassist": (-1.5, 2.5), "egoexolearn": (-2.0, 3.5),
    "assembly101": (-2.0, 4.0), "wtag": (-3.0, 6.0), "narration": (-2.5, 2.5),
}
SEMANTIC_THRESHOLD = 0.5


def _window(window, dataset):
    if window is None and dataset is None:
        raise ValueError("evaluate_dialogue expected window=(left, right) seconds or dataset= one of "
                         f"{', '.join(WINDOWS)}; got neither")
    if window is None:
        if dataset not in WINDOWS:
            raise ValueError(f"dataset expected one of {', '.join(WINDOWS)}, got {dataset!r}")
        return WINDOWS[dataset]
    if (not isinstance(window, (tuple, list)) or len(window) != 2 or not all(isinstance(x, (int, float)) for x in window)
            or window[0] > 0 or window[1] < 0):
        raise ValueError(f"window expected (left <= 0, right >= 0) seconds, got {window!r}")
    return float(window[0]), float(window[1])


def _turns(items, what):
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


def counts_to_metrics(matched, good, redundant, missed):
    """Precision, recall and F1 from the match counts, under our names and under ProAssist's
    (F1, num_matched = good pairs, num_mismatched, num_missed, num_redundant, jaccard_index), so code that
    reads either finds real values."""
    precision = good / (matched + redundant) if matched + redundant else 0.0
    recall = good / (matched + missed) if matched + missed else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = matched + missed + redundant
    return {
        "precision": precision, "recall": recall, "f1": f1,
        "matched": matched, "good": good, "redundant": redundant, "missed": missed,
        "missing_rate": missed / (matched + missed) if matched + missed else 0.0,
        "redundant_rate": redundant / (matched + redundant) if matched + redundant else 0.0,
        "F1": f1, "num_matched": good, "num_mismatched": matched - good, "num_missed": missed,
        "num_redundant": redundant, "jaccard_index": good / total if total else 0.0,
    }


def weighted_text_metrics(text, jaccard):
    """ProAssist's `<metric>_w`: each text metric times the Jaccard index."""
    return {f"{k}_w": jaccard * v for k, v in text.items() if v is not None}


def match_dialogue(predictions, reference, window, fps, embedder, dist_factor=0.3, dist_power=1.5):
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

    emb_p = embedder([p for _, p in predictions]) if n_p else None
    emb_r = embedder([r for _, r in reference]) if n_r else None
    sim = (emb_p @ emb_r.T).abs() if n_p and n_r else torch.zeros(n_p, n_r)

    # Columns: reference turns, silent frames, then one private fallback per prediction (redundant at the
    # cost of a silent frame) so a full matching always exists.
    cost = torch.full((n_p, n_r + len(silent) + n_p), math.inf, dtype=torch.float64)
    for i, (tp, _) in enumerate(predictions):
        fp = frame(tp)
        for j, (tr, _) in enumerate(reference):
            if tp + left <= tr <= tp + right:
                cost[i, j] = 1.0 - sim[i, j].item() + dist_factor * abs(fp - frame(tr)) ** dist_power / rg ** dist_power
        for k, fs in enumerate(silent):
            if tp + left <= (fs + 1) / fps - 1e-9 and fs / fps <= tp + right:
                cost[i, n_r + k] = 1.0
        cost[i, n_r + len(silent) + i] = 1.0 + 1e-6
    cols = core.min_weight_full_matching(cost) if n_p else []
    pairs, redundant = [], []
    for i, c in enumerate(cols):
        if c < n_r:
            pairs.append((i, c, sim[i, c].item(), predictions[i][0] - reference[c][0]))
        else:
            redundant.append(i)
    matched_refs = {j for _, j, _, _ in pairs}
    missed = [j for j in range(n_r) if j not in matched_refs]
    return pairs, redundant, missed


def evaluate_dialogue(predictions, reference_conversation, window=None, dataset=None, fps=2.0, embedder=None,
                      text_metrics=True):
    """Scores predicted turns {time, text} against a ProAssist reference conversation {role, time, content}.

    Returns precision, recall, f1, the counts matched / good / redundant / missed, missing_rate,
    redundant_rate, semantic_score and time_diff (means over good pairs), and Bleu_1..Bleu_4, METEOR,
    CIDEr on the good pairs."""
    from prospect_core.evaluation.embedder import default_embedder
    from prospect_core.evaluation.text_metrics import NAMES, text_metrics as _text_metrics

    win = _window(window, dataset)
    if not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"fps expected a positive number, got {fps!r}")
    if not isinstance(reference_conversation, list):
        raise TypeError(f"reference_conversation expected a list of turns, got {type(reference_conversation).__name__}")
    if not isinstance(predictions, list):
        raise TypeError(f"predictions expected a list of turns, got {type(predictions).__name__}")
    preds = _turns(predictions, "predictions")
    refs = _turns([t for t in reference_conversation if isinstance(t, dict) and t.get("role") == "assistant"],
                  "reference_conversation (assistant turns)")
    emb = embedder or default_embedder()
    pairs, redundant, missed = match_dialogue(preds, refs, win, float(fps), emb)
    good = [p for p in pairs if p[2] > SEMANTIC_THRESHOLD]
    n_g = len(good)
    out = {
        **counts_to_metrics(len(pairs), n_g, len(redundant), len(missed)),
        "semantic_score": sum(p[2] for p in good) / n_g if n_g else 0.0,
        "time_diff": sum(abs(p[3]) for p in good) / n_g if n_g else 0.0,
        "window": list(win), "fps": float(fps), "embedder": getattr(emb, "name", type(emb).__name__),
        "semantic_threshold": SEMANTIC_THRESHOLD,
    }
    if text_metrics:
        out.update(_text_metrics([(preds[i][1], refs[j][1]) for i, j, _, _ in good]))
        out.update(weighted_text_metrics({k: out[k] for k in NAMES}, out["jaccard_index"]))
    else:
        out.update({k: None for k in NAMES})
    return out
