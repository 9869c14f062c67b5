"""Dialogue evaluation as ProAssist does it: match predicted turns to reference turns, then score."""

from prospect_core.evaluation.embedder import SentenceEmbedder, default_embedder
from prospect_core.evaluation.matching import WINDOWS, evaluate_dialogue, match_dialogue

__all__ = ["WINDOWS", "evaluate_dialogue", "match_dialogue", "SentenceEmbedder", "default_embedder"]
