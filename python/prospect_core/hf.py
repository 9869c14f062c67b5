"""The transformers swap-in: a `Cache` backed by prospect's KVCache, and the hf backend.

`ProspectCache(kv)` is accepted as `past_key_values` by transformers' SmolVLM and
Llama forward and generate(): keys and values are written in place into the
preallocated KVCache (no torch.cat per step), and each forward is recorded as a
span, so prospect's span-aware surgery works on caches transformers filled.

It works with transformers 4.57 and 5.x, whose cache-layer interfaces differ: the
maximum-length query (4.57 get_max_cache_shape, 5.x get_max_length), get_mask_sizes's
argument (4.57 the cache_position tensor, 5.x the query length), lazy_initialization's
(4.57 keys only, 5.x keys and values) and crop's (4.57 a length to keep or, negative, a
count to remove; 5.x a negative count). ProspectLayer answers both.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import SmolVLMForConditionalGeneration
from transformers.cache_utils import Cache, CacheLayerMixin

from prospect_core import _C as core
from prospect_core.config import DEFAULT_DEVICE, DEFAULT_DTYPE
from prospect_core.model import resolve_model_path, rope_theta, torch_dtype_of
from prospect_core.sampling import GenerateResult, python_generate


class ProspectLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False
    is_croppable = True

    def __init__(self, owner, index):
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states=None):  # 4.57 passes the keys only
        pass

    @property
    def keys(self):
        return self.owner.kv.keys(self.index)

    @keys.setter
    def keys(self, value):  # transformers' base __init__ assigns None; the storage is ours
        pass

    @property
    def values(self):
        return self.owner.kv.values(self.index)

    @values.setter
    def values(self, value):
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        return self.owner._update(self.index, key_states, value_states)

    def get_seq_length(self):
        return self.owner.kv.length

    def get_mask_sizes(self, query):
        # 5.x passes the query length; 4.57 the query's cache_position tensor.
        query_length = query.shape[0] if isinstance(query, torch.Tensor) else int(query)
        return self.owner.kv.length + query_length, 0

    def get_max_length(self):  # transformers 5.x
        return self.owner.kv.capacity

    get_max_cache_shape = get_max_length  # transformers 4.57

    def reset(self):
        self.owner.kv.drop_all()

    def crop(self, n):
        # Negative: remove -n tokens (both versions). Positive: keep the first n (4.57's max_length).
        kv = self.owner.kv
        if self.index == 0 and n:
            target = max(kv.length + n, 0) if n < 0 else min(n, kv.length)
            if target < kv.length:
                kv.truncate(target)


class ProspectCache(Cache):
    """A transformers Cache whose storage is a prospect_core.KVCache.

    Every forward appends one span. Declare what it is with `next_span(kind, frame_index)`
    before the call; undeclared forwards (e.g. generate()'s decode steps) extend an
    undeclared span, or open one of kind "other".
    """

    def __init__(self, kv: core.KVCache):
        if not isinstance(kv, core.KVCache):
            raise TypeError(f"kv expected a prospect_core.KVCache, got {type(kv).__name__}")
        self.kv = kv
        self._declared = None
        self._last_undeclared = False
        super().__init__(layers=[ProspectLayer(self, i) for i in range(kv.num_layers)])

    def next_span(self, kind: str = "other", frame_index: int | None = None, extend: bool = False) -> ProspectCache:
        self._declared = (kind, frame_index, extend)
        return self

    def _update(self, layer, key_states, value_states):
        kv = self.kv
        start, n = kv.length, key_states.shape[2]
        kv.write(layer, key_states, value_states)
        keys = kv.key_buffer(layer)[:, :, : start + n]
        values = kv.value_buffer(layer)[:, :, : start + n]
        if layer == kv.num_layers - 1:
            if self._declared is not None:
                kind, frame_index, extend = self._declared
                kv.commit_extend(n) if extend else kv.commit(n, kind, frame_index)
                self._declared, self._last_undeclared = None, False
            elif self._last_undeclared and kv.spans:
                kv.commit_extend(n)
            else:
                kv.commit(n, "other")
                self._last_undeclared = True
        return keys, values


class HFBackend:
    """transformers' SmolVLMForConditionalGeneration with a ProspectCache, driven from Python."""

    name = "hf"

    def __init__(self, path: Any, dtype: str = DEFAULT_DTYPE, device: str = DEFAULT_DEVICE):
        torch_dtype = torch_dtype_of(dtype)
        self.model = (
            SmolVLMForConditionalGeneration.from_pretrained(resolve_model_path(path), dtype=torch_dtype)
            .to(device)
            .eval()
        )
        cfg = self.model.config
        self.dtype, self.device = torch_dtype, torch.device(device)
        self.image_token_id = cfg.image_token_id
        self.image_seq_len = self.model.model.image_seq_len
        self.max_position_embeddings = cfg.text_config.max_position_embeddings
        self._caches = {}

    def make_cache(self, capacity: int) -> core.KVCache:
        t = self.model.config.text_config
        head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
        theta = rope_theta(t)
        return core.KVCache(
            t.num_hidden_layers,
            t.num_key_value_heads,
            head_dim,
            capacity,
            dtype=self.dtype,
            device=str(self.device),
            rope_theta=float(theta),
        )

    def _wrap(self, kv):
        pc = self._caches.get(id(kv))
        if pc is None or pc.kv is not kv:
            pc = self._caches[id(kv)] = ProspectCache(kv)
        return pc

    @torch.no_grad()
    def image_features(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        pv = pixel_values.to(self.device, self.dtype)
        mask = pixel_attention_mask.to(self.device) if pixel_attention_mask is not None else None
        out = self.model.model.get_image_features(pv, mask)
        out = getattr(out, "pooler_output", out)  # 5.x: an output object; 4.57: the [N, L, H] tensor
        L = self.image_seq_len
        return torch.cat(list(out)).view(-1, L, out[0].shape[-1])

    @torch.no_grad()
    def embed(self, ids: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        text = self.model.get_input_embeddings()(ids.to(self.device))
        if features is None:
            return text
        return core.joint_embed(ids.to(self.device), text, features.to(text.dtype), self.image_token_id)

    @torch.no_grad()
    def prefill(
        self, embeds: torch.Tensor, cache: core.KVCache, kind: str, frame_index: int | None = None, extend: bool = False
    ) -> torch.Tensor:
        pc = self._wrap(cache).next_span(kind, frame_index, extend)
        T = embeds.shape[1]
        if cache.length + T > cache.capacity:
            raise ValueError(f"cache full: {T} new tokens at length {cache.length} exceed capacity {cache.capacity}")
        # Explicit positions: after surgery in "keep" mode they are not the cache length.
        pos = torch.arange(cache.next_position, cache.next_position + T, device=self.device).unsqueeze(0)
        try:
            out = self.model(
                inputs_embeds=embeds, past_key_values=pc, position_ids=pos, use_cache=True, logits_to_keep=1
            )
        except Exception:
            cache.discard_pending()
            raise
        return out.logits[:, -1]

    def generate(self, *args: Any, **kwargs: Any) -> GenerateResult:
        """sampling.python_generate over this backend's forward, with the same arguments as
        NativeBackend.generate (embeds, cache, sampling, stop_token_ids, silence=, kind=, ...)."""
        with torch.no_grad():
            return python_generate(self, *args, **kwargs)
