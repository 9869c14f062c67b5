"""A loaded checkpoint: the backend that runs it and the processor that feeds it.

One Engine can serve many runners (the server gives each session its own
runner, cache and strategy over one Engine), so the weights are loaded once.
"""

from pathlib import Path

import torch

from prospect_core import prompt
from prospect_core.backends import BACKENDS, make_backend
from prospect_core.config import DEFAULT_BACKEND, DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_WEIGHTS
from prospect_core.model import resolve_model_path, torch_dtype_of


class Engine:
    def __init__(
        self,
        model_name: str | Path,
        backend: str = DEFAULT_BACKEND,
        torch_dtype: str = DEFAULT_DTYPE,
        device: str = DEFAULT_DEVICE,
        weights: str = DEFAULT_WEIGHTS,
    ):
        torch_dtype_of(torch_dtype, "torch_dtype")  # a name in DTYPES; checked before anything loads
        if backend not in BACKENDS:
            raise ValueError(f"backend expected one of {', '.join(BACKENDS)}, got {backend!r}")
        # Imported here: `import prospect_core` imports this module, and transformers takes seconds to import.
        from transformers import AutoProcessor

        path = resolve_model_path(model_name)
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
            raise FileNotFoundError(
                f"model_name: {path} has no tokenizer files (expected tokenizer.json, "
                "tokenizer.model or vocab.json next to config.json)"
            )
        self.path, self.dtype, self.device = path, torch_dtype, torch.device(device)
        self.weights = weights
        self.backend = make_backend(backend, path, torch_dtype, device, weights)
        self.processor = AutoProcessor.from_pretrained(path)
        self.tokenizer = self.processor.tokenizer
        self.eou_id = self.tokenizer.convert_tokens_to_ids(prompt.EOU)
        if prompt.EOU not in self.tokenizer.get_vocab():  # else the id is the unknown token's: replies never stop
            raise ValueError(
                f"model_name: the tokenizer of {path} has no {prompt.EOU} token, which ends every "
                "SmolVLM2 turn (expected a SmolVLM2 tokenizer)"
            )

    def ids(self, text: str) -> torch.Tensor:
        """Token ids [1, T] of text, no special tokens added."""
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids

    def __repr__(self):
        return (
            f"Engine({str(self.path)!r}, backend={self.backend.name!r}, dtype={self.dtype!r}, device={self.device}, "
            f"weights={self.weights!r})"
        )
