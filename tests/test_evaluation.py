"""ProAssist metrics on predictions whose precision, recall and F1 are known by construction."""

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

import prospect_core as pc
from prospect_core.evaluation import evaluate_dialogue

REFERENCE = [
    {"role": "user", "time": 0.5, "content": "How do I make tea?"},
    {"role": "assistant", "time": 2.0, "content": "Boil the water in the kettle."},
    {"role": "assistant", "time": 10.0, "content": "Put a tea bag in the cup."},
    {"role": "assistant", "time": 20.0, "content": "Pour the hot water over the tea bag."},
    {"role": "assistant", "time": 30.0, "content": "Wait three minutes, then take the bag out."},
]


class WordEmbedder:
    """Bag-of-words vectors: identical sentences have cosine 1, sentences sharing no word have 0."""

    name = "bag-of-words"

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts):
        rows = []
        for t in texts:
            v = torch.zeros(256)
            for w in t.lower().replace(".", "").replace(",", "").split():
                v[self.vocab.setdefault(w, len(self.vocab))] += 1
            rows.append(v / v.norm())
        return torch.stack(rows)


def test_known_precision_recall_f1():
    preds = [
        {"time": 2.5, "text": "Boil the water in the kettle."},  # good (0.5 s late)
        {"time": 10.0, "text": "Put a tea bag in the cup."},  # good
        {"time": 21.0, "text": "Sing loudly now."},  # matched to 20.0 but semantically off
        {"time": 45.0, "text": "Well done."},  # nothing within the window: redundant
    ]  # 30.0 is never predicted: missed
    m = evaluate_dialogue(preds, REFERENCE, window=(-2.0, 4.0), embedder=WordEmbedder(), text_metrics=False)
    # The off-topic turn costs more than 1 against 20.0 (1 - cos 0 + time), so it prefers a silent frame.
    assert (m["matched"], m["good"], m["redundant"], m["missed"]) == (2, 2, 2, 2)
    assert m["precision"] == pytest.approx(2 / 4) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(0.5)
    assert m["missing_rate"] == pytest.approx(2 / 4) and m["redundant_rate"] == pytest.approx(2 / 4)
    assert m["semantic_score"] == pytest.approx(1.0, abs=1e-6) and m["time_diff"] == pytest.approx(0.25)


def test_perfect_and_empty():
    refs = [t for t in REFERENCE if t["role"] == "assistant"]
    perfect = [{"time": t["time"], "text": t["content"]} for t in refs]
    m = evaluate_dialogue(perfect, REFERENCE, dataset="ego4d", embedder=WordEmbedder())
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and m["METEOR"] == pytest.approx(1.0)
    silent = evaluate_dialogue([], REFERENCE, dataset="ego4d", embedder=WordEmbedder(), text_metrics=False)
    assert silent["missed"] == 4 and silent["precision"] == silent["recall"] == silent["f1"] == 0.0


def test_default_embedder_is_offline_minilm():
    m = evaluate_dialogue(
        [{"time": 2.0, "text": "Boil some water in the kettle."}], REFERENCE, dataset="ego4d", text_metrics=False
    )
    assert "MiniLM" in m["embedder"] or "mpnet" in m["embedder"]
    assert m["good"] == 1 and 0.5 < m["semantic_score"] < 1.0


def test_matching_equals_scipy_on_random_costs():
    rng = np.random.default_rng(0)
    for _ in range(200):
        r = int(rng.integers(1, 8))
        c = int(rng.integers(r, 14))
        cost = rng.random((r, c))
        cost[rng.random((r, c)) < 0.3] = np.inf
        try:
            ref_rows, ref_cols = min_weight_full_bipartite_matching(
                csr_matrix(np.where(np.isinf(cost), 0, cost + 1e-9))
            )
            ref = cost[ref_rows, ref_cols].sum()
        except ValueError:
            ref = None
        if ref is None:
            with pytest.raises(ValueError, match="no full matching exists"):
                pc.min_weight_full_matching(torch.tensor(cost))
        else:
            cols = pc.min_weight_full_matching(torch.tensor(cost))
            assert len(set(cols)) == r
            assert cost[np.arange(r), cols].sum() == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        ({}, ValueError, "expected window=\\(left, right\\) seconds or dataset="),
        ({"dataset": "youtube"}, ValueError, "dataset expected one of ego4d"),
        ({"window": (1, 2)}, ValueError, "window expected \\(left <= 0, right >= 0\\)"),
        ({"window": (-1, 1), "fps": 0}, ValueError, "fps expected a positive number"),
    ],
)
def test_argument_errors(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        evaluate_dialogue([], REFERENCE, embedder=WordEmbedder(), **kwargs)
    with pytest.raises(ValueError, match="predictions\\[0\\] expected a dict with 'time'"):
        evaluate_dialogue([{"text": "x"}], REFERENCE, window=(-1, 1), embedder=WordEmbedder())
