"""What the runner and the strategies call on a model, whichever engine runs it.

Both backends take token ids and pixel_values, keep their keys and values in a
`prospect_core.KVCache`, and record spans there, so strategies cut the same
spans whichever backend is in use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from prospect_core import _C as core
from prospect_core.config import DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_WEIGHTS, SamplingParams
from prospect_core.model import load_model

# What a span of the cache holds, as the C++ core names it.
SpanKind = Literal["system", "user", "assistant", "frame", "summary", "other"]


class NativeBackend:
    """The C++ engine: vision, prefill and the decode loop never enter Python per token."""

    name = "native"

    def __init__(
        self, path: Any, dtype: str = DEFAULT_DTYPE, device: str = DEFAULT_DEVICE, weights: str = DEFAULT_WEIGHTS
    ):
        self.model = load_model(path, dtype, device, weights)
        cfg = self.model.config
        self.image_token_id = cfg["image_token_id"]
        self.image_seq_len = cfg["image_seq_len"]
        self.max_position_embeddings = cfg["text_config"]["max_position_embeddings"]
        self.device = torch.device(device)

    def make_cache(self, capacity: int) -> core.KVCache:
        return self.model.make_cache(capacity)

    def image_features(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model.image_features(pixel_values, pixel_attention_mask)

    def embed(self, ids: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """ids [1, T] (+ image features [N, L, H]) -> embeds [1, T, H]."""
        text = self.model.embed_tokens(ids)
        if features is None:
            return text
        return core.joint_embed(ids.to(text.device), text, features, self.image_token_id)

    def prefill(
        self,
        embeds: torch.Tensor,
        cache: core.KVCache,
        kind: SpanKind,
        frame_index: int | None = None,
        extend: bool = False,
    ) -> torch.Tensor:
        if extend:
            raise ValueError("extend=True is for the Python decode loop; the native engine decodes in C++")
        return self.model.prefill(embeds, cache, kind, frame_index)

    def generate(
        self,
        embeds: torch.Tensor,
        cache: core.KVCache,
        sampling: SamplingParams,
        stop_token_ids: Sequence[int] = (),
        *,
        silence: tuple[int, float] | None = None,
        kind: SpanKind = "user",
        frame_index: int | None = None,
        keep_generated_in_cache: bool = True,
        on_token: Callable[[int], Any] | None = None,
    ) -> Any:
        """Prefill and the whole decode loop in C++ (SmolVLM.greedy_generate), as `sampling` says; returns its
        GenerateResult."""
        sp = SamplingParams.check(sampling)
        return self.model.greedy_generate(
            embeds,
            cache,
            sp.max_new_tokens,
            list(stop_token_ids),
            keep_generated_in_cache=keep_generated_in_cache,
            silence=silence,
            span_kind=kind,
            frame_index=frame_index,
            temperature=sp.temperature,
            top_p=sp.top_p,
            seed=sp.seed,
            on_token=on_token,
        )


BACKENDS = ("native", "hf")


def make_backend(
    name: str, path: Any, dtype: str = DEFAULT_DTYPE, device: str = DEFAULT_DEVICE, weights: str = DEFAULT_WEIGHTS
) -> Any:
    """NativeBackend or HFBackend, which have the same methods. Quantized weights are the native engine's."""
    if name == "native":
        return NativeBackend(path, dtype, device, weights)
    if name == "hf":
        if weights != DEFAULT_WEIGHTS:
            raise ValueError(f"weights={weights!r} expected backend 'native' (the hf backend runs dense weights)")
        # Imported here: prospect_core.hf imports transformers (seconds, and an optional dependency).
        from prospect_core.hf import HFBackend

        return HFBackend(path, dtype, device)
    raise ValueError(f"backend expected one of {', '.join(BACKENDS)}, got {name!r}")
