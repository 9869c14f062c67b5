"""The strategy interface, as the pipeline our users come from defines it.

A strategy decides when (`should_reduce_cache`) and how (`handle_overflow`) the
cache shrinks. `past_key_values` may be a tuple of (key, value) per layer, a
transformers DynamicCache, or a `prospect_core.KVCache`; the surgery itself runs
in the C++ core. A returned cache of None means "emptied": the caller starts
again from its prompt, and from the returned `last_msg` when it is a summary.
"""

from abc import ABC, abstractmethod
from enum import Enum

import torch

from prospect_core import _C as core


class ContextStrategy(Enum):
    DROP_ALL = "drop_all"
    DROP_MIDDLE = "drop_middle"
    SUMMARIZE_AND_DROP = "summarize_and_drop"
    SUMMARIZE_WITH_DST = "summarize_with_dst"


def cache_length(past_key_values) -> int:
    """Tokens held by a tuple, a DynamicCache or a KVCache (0 for None)."""
    if past_key_values is None:
        return 0
    if isinstance(past_key_values, core.KVCache):
        return past_key_values.length
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    return int(past_key_values[0][0].shape[2])


def cache_layers(past_key_values):
    """[(keys, values)] per filled layer of a tuple, DynamicCache or KVCache: views, no copy."""
    if isinstance(past_key_values, core.KVCache):
        return [(past_key_values.keys(i), past_key_values.values(i)) for i in range(past_key_values.num_layers)]
    if hasattr(past_key_values, "layers"):  # transformers >= 4.54
        return [
            (layer.keys, layer.values)
            for layer in past_key_values.layers
            if layer.keys is not None and layer.keys.dim() == 4
        ]
    if hasattr(past_key_values, "key_cache"):
        return list(zip(past_key_values.key_cache, past_key_values.value_cache))
    return [(k, v) for k, v, *_ in past_key_values]


def check_int(name, value, low, high=None):
    """value must be an int in [low, high); high is a max_seq_len, so the message names it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value >= high):
        span = f"[{low}, max_seq_len={high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} expected an int in {span}, got {value!r}")


class BaseContextStrategy(ABC):
    """Subclass it for a strategy of your own: implement `handle_overflow` and `name`, and register the class
    with ContextStrategyFactory.register to use it by name."""

    def __init__(self, max_seq_len: int, reserved_seq_len: int = 128, **kwargs):
        check_int("max_seq_len", max_seq_len, 1)
        check_int("reserved_seq_len", reserved_seq_len, 0, max_seq_len)
        if kwargs:
            raise ValueError(f"{type(self).__name__}: unknown config keys {sorted(kwargs)}")
        self.max_seq_len = max_seq_len
        self.reserved_seq_len = reserved_seq_len
        self.ctxlen_to_reduce = max_seq_len - reserved_seq_len

    @property
    @abstractmethod
    def name(self) -> str:
        """The strategy's name, as the factory knows it."""

    def should_reduce_cache(self, current_seq_len: int) -> bool:
        return current_seq_len >= self.ctxlen_to_reduce

    @abstractmethod
    def handle_overflow(self, past_key_values, last_msg, **context):
        """Returns (new past_key_values or None, new last_msg)."""

    def compress_cache(self, past_key_values, attention_mask=None, **context):
        """handle_overflow, plus the attention mask cut to match: returns (cache, mask).

        A summary is not thrown away: when handle_overflow empties the cache and returns a summary text, and
        `model` and `processor` are in the context, the returned cache holds the summary, prefilled."""
        old_len = cache_length(past_key_values)
        new_cache, _ = self.handle_overflow(past_key_values, None, **context)
        restart = self.restart_text() if new_cache is None else None
        if restart and "model" in context and "processor" in context:
            new_cache = prefill_text(context["model"], context["processor"], restart)
            return new_cache, _ones_then_new(attention_mask, old_len, cache_length(new_cache))
        if new_cache is None:  # emptied: as the original, the mask is left to the caller
            return new_cache, attention_mask
        return new_cache, self._update_attention_mask(attention_mask, old_len, cache_length(new_cache))

    def _update_attention_mask(self, attention_mask, old_len, new_len):
        """The cache kept its first new_len tokens; columns past the old cache (new input) stay."""
        if attention_mask is None or new_len == old_len:
            return attention_mask
        return torch.cat([attention_mask[:, :new_len], attention_mask[:, old_len:]], dim=1)

    def restart_text(self):
        """What an emptied cache restarts from (a summary strategy's summary), or None."""
        return None

    def overflow_headroom(self, summary_room: int | None = None) -> int:
        """Tokens handle_overflow itself appends before the cache shrinks (a summary's request and reply);
        summary_room: the most a summary may take, when the caller bounds it."""
        return 0

    def config(self) -> dict:
        return {"strategy": self.name, "max_seq_len": self.max_seq_len, "reserved_seq_len": self.reserved_seq_len}


def _ones_then_new(attention_mask, old_len, new_len):
    if attention_mask is None:
        return None
    head = attention_mask.new_ones(attention_mask.shape[0], new_len)
    return torch.cat([head, attention_mask[:, old_len:]], dim=1)


def prefill_text(model, processor, text):
    """A fresh cache holding `text`, through the model's own API: fast_greedy_generate keeps its input and
    every generated token but the last in the cache, so one generated token leaves exactly the text."""
    ids = processor.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    _, cache = model.fast_greedy_generate(
        inputs_embeds=model.joint_embed(input_ids=ids), past_key_values=None, max_length=1
    )
    return cache


class NoneStrategy(BaseContextStrategy):
    """Stateless: every step starts from scratch, so the cache never needs shrinking."""

    name = "none"

    def should_reduce_cache(self, current_seq_len):
        return False

    def handle_overflow(self, past_key_values, last_msg, **context):
        return past_key_values, last_msg
