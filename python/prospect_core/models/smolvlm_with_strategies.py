"""SmolVLMWithStrategies: the original's model API (joint_embed, fast_greedy_generate, generate) on the native
engine.

Caches cross as the original passes them: a tuple of (key, value) per layer,
a transformers DynamicCache, or prospect's KVCache. Inside, every call runs on
a preallocated KVCache. The tuple this model returned last, or what in-place
surgery made of it, is continued in place (its tensors view that storage); any
other cache, an older tuple of ours included, is copied in, so no tuple handed
out earlier changes under its holder.
"""

import json
from types import SimpleNamespace

import torch

from prospect_core import _C as core
from prospect_core.config import SamplingParams
from prospect_core.context_strategies.base_strategy import cache_length
from prospect_core.model import dtype_name, load_model, resolve_model_path, rope_theta


def _device_name(device_map) -> str:
    if device_map is None:
        return "cpu"
    if device_map == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, torch.device):
        return str(device_map)
    if isinstance(device_map, str):
        return device_map
    raise ValueError(f"device_map expected 'cpu', 'cuda', 'cuda:N' or 'auto', got {device_map!r}")


def _model_config(path):
    raw = json.loads((path / "config.json").read_text())
    text = raw.get("text_config", {})
    eos = raw.get("eos_token_id", text.get("eos_token_id"))
    return SimpleNamespace(
        **{
            **raw,
            "eos_token_id": eos,
            "max_seq_len": raw.get("max_seq_len", 4096),
            "text_config": SimpleNamespace(**text),
        }
    )


class SmolVLMWithStrategies:
    def __init__(self, engine: "core.SmolVLM", path):
        self.engine = engine
        self.path = path
        self.config = _model_config(path)
        self.inplace_output_ids = None
        self._kv = None  # the KVCache behind the tuples this model returns
        self._last_out = None  # the last tuple returned (continued in place)
        self._handed_out = set()  # ids of the earlier ones (copied if passed back: they must not change)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *args,
        torch_dtype=None,
        dtype=None,
        device_map=None,
        cache_dir=None,
        trust_remote_code=None,
        **kwargs,
    ):
        """Loads a SmolVLM2 checkpoint (folder, or an id in the local HF cache) into the C++ engine."""
        if args or kwargs:
            raise TypeError(f"from_pretrained: unsupported arguments {list(args) + sorted(kwargs)}")
        path = resolve_model_path(pretrained_model_name_or_path, cache_dir)
        return cls(
            load_model(path, dtype_name(dtype if dtype is not None else torch_dtype), _device_name(device_map)), path
        )

    @property
    def device(self):
        return self.engine.device

    @property
    def dtype(self):
        return self.engine.dtype

    def eval(self):
        return self

    def get_input_embeddings(self):
        return self.engine.embed_tokens

    def _stop_ids(self, eos=None):
        eos = self.config.eos_token_id if eos is None else eos
        return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else ([] if eos is None else [int(eos)])

    # ---- the original's API -------------------------------------------------------------------
    def joint_embed(self, input_ids, pixel_values=None, **kwargs):
        """(input_ids, pixel_values, kwargs), as the original returns it; fast_greedy_generate embeds them."""
        return (input_ids, pixel_values, kwargs)

    def _embeds(self, inputs_embeds):
        if isinstance(inputs_embeds, tuple) and len(inputs_embeds) == 3:
            ids, pixel_values, extra = inputs_embeds
            if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1:
                raise ValueError(f"inputs_embeds: input_ids expected a [1, T] tensor, got {ids!r:.80}")
            mask = (extra or {}).get("pixel_attention_mask")
            return self.engine.joint_embed(ids.to(self.device), pixel_values, mask)
        if isinstance(inputs_embeds, torch.Tensor) and inputs_embeds.dim() == 3 and inputs_embeds.shape[0] == 1:
            return inputs_embeds.to(self.device, self.dtype)
        raise TypeError(
            "inputs_embeds expected embeddings [1, T, H] or joint_embed's (input_ids, pixel_values, "
            f"kwargs), got {type(inputs_embeds).__name__}"
        )

    def _cache_for(self, past_key_values, need):
        """A KVCache holding past_key_values with room for `need` more tokens."""
        if isinstance(past_key_values, core.KVCache):
            if past_key_values.length + need > past_key_values.capacity:
                raise ValueError(
                    f"past_key_values: a KVCache of capacity {past_key_values.capacity} cannot take "
                    f"{need} more tokens at length {past_key_values.length}"
                )
            return past_key_values
        length = cache_length(past_key_values)
        capacity = max(int(self.config.max_seq_len), 2 * (length + need))
        kv = self._kv
        ours = past_key_values is self._last_out or id(past_key_values) not in self._handed_out
        if (
            ours
            and isinstance(past_key_values, tuple)
            and kv is not None
            and length <= kv.length
            and length + need <= kv.capacity
            and _views_of(past_key_values, kv)
        ):
            kv.truncate(length)  # surgery on the tuple moved the data in place; the next token takes `length`
            return kv
        self._kv, self._last_out, self._handed_out = None, None, set()  # a new storage from here on
        if past_key_values is None or length == 0:
            return self.engine.make_cache(capacity)
        return core.KVCache.from_past_key_values(
            past_key_values, capacity=capacity, rope_theta=rope_theta(self.config.text_config)
        )

    @torch.no_grad()
    def fast_greedy_generate(
        self, inputs_embeds, past_key_values=None, max_length: int = 100, verbose: bool = False, **kwargs
    ):
        """(output_ids [1, n], past_key_values). Greedy unless do_sample=True (then temperature, top_p, seed).
        As the original: output_ids ends with the end token when one came; the cache holds the input and every
        output token but the last."""
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length expected an int >= 1, got {max_length!r}")
        embeds = self._embeds(inputs_embeds)
        kv = self._cache_for(past_key_values, embeds.shape[1] + max_length)
        out = self._decode(embeds, kv, max_length, kwargs)
        if isinstance(past_key_values, core.KVCache):
            return out, kv
        if self._last_out is not None:
            self._handed_out.add(id(self._last_out))
        self._kv, self._last_out = kv, kv.to_legacy()
        return out, self._last_out

    def _decode(self, embeds, kv, max_length, kwargs):
        """output_ids [1, n] as the original returns them; kv ends before the last output token."""
        sampling = _sampling(kwargs)
        stops = self._stop_ids(kwargs.get("eos_token_id"))
        r = self.engine.greedy_generate(embeds, kv, max_length, stops, keep_generated_in_cache=True, **sampling)
        tokens = list(r.tokens)
        if len(tokens) < max_length:  # stopped by an end token, which the original returns (it is never fed)
            tokens += stops[:1]  # with several end tokens, the first stands for whichever came
        else:  # the engine fed the last token too; the original's cache ends before it
            kv.truncate(kv.length - 1)
        self.inplace_output_ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        return self.inplace_output_ids

    @torch.no_grad()
    def generate(
        self,
        input_ids=None,
        attention_mask=None,
        pixel_values=None,
        pixel_attention_mask=None,
        max_new_tokens: int = 20,
        **kwargs,
    ):
        """transformers-style: the prompt followed by the new tokens, [1, T + n], from a fresh cache."""
        if input_ids is None or input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"input_ids expected a [1, T] tensor, got {input_ids!r:.80}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens expected an int >= 1, got {max_new_tokens!r}")
        embeds = self.engine.joint_embed(input_ids.to(self.device), pixel_values, pixel_attention_mask)
        kv = self.engine.make_cache(embeds.shape[1] + max_new_tokens)  # its own: the carried cache stays
        out = self._decode(embeds, kv, max_new_tokens, kwargs)
        return torch.cat([input_ids.to(self.device), out], dim=1)


def _sampling(kwargs):
    # pad_token_id has no use at batch 1; eos_token_id replaces the config's end tokens.
    unknown = set(kwargs) - {"do_sample", "temperature", "top_p", "seed", "eos_token_id", "pad_token_id"}
    if unknown:
        raise TypeError(f"unsupported generation arguments {sorted(unknown)}")
    if not kwargs.get("do_sample"):
        return {}
    # transformers' defaults when sampling (temperature 1, no seed); SamplingParams checks the values.
    sp = SamplingParams(
        temperature=kwargs.get("temperature", 1.0), top_p=kwargs.get("top_p", 1.0), seed=kwargs.get("seed")
    )
    return {"temperature": float(sp.temperature), "top_p": float(sp.top_p), "seed": sp.seed}


def _views_of(legacy, kv):
    """True when a tuple's tensors start at the KVCache's storage, layer by layer (the tuple came from it)."""
    if len(legacy) != kv.num_layers:
        return False
    for i in (0, kv.num_layers - 1):
        k, v = legacy[i][0], legacy[i][1]
        if (
            k.data_ptr() != kv.key_buffer(i).data_ptr()
            or v.data_ptr() != kv.value_buffer(i).data_ptr()
            or k.stride() != kv.key_buffer(i).stride()
        ):
            return False
    return True
