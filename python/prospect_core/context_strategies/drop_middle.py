"""drop_middle: keep the initial context and the newest tokens, drop what lies between.

By default it does what the pipeline our users come from does, bit for bit:
`set_initial_cache` snapshots the first cache; on overflow the cache becomes
that snapshot + its last `last_keep_len` tokens, cut token-exact, and tokens
added later take position = cache length (position_mode="length"). The C++
core does the cut in place instead of concatenating copies.

Options: cut="span" keeps the pinned anchor and the newest *whole* spans of a
KVCache (a frame is never cut in half), and position_mode="shift" re-rotates
the kept tail so positions stay contiguous. StreamRunner uses both.
"""

import torch

from prospect_core import _C as core
from prospect_core.context_strategies.base_strategy import BaseContextStrategy, cache_layers, cache_length, check_int

CUTS = ("token", "span")
POSITION_MODES = ("length", "keep", "shift")


class DropMiddleStrategy(BaseContextStrategy):
    name = "drop_middle"

    def __init__(
        self,
        max_seq_len: int,
        reserved_seq_len: int = 128,
        last_keep_len: int = 512,
        cut: str = "token",
        position_mode: str = "length",
        **kwargs,
    ):
        super().__init__(max_seq_len, reserved_seq_len, **kwargs)
        check_int("last_keep_len", last_keep_len, 0, max_seq_len)
        if cut not in CUTS:
            raise ValueError(f"cut expected one of {', '.join(CUTS)}, got {cut!r}")
        if position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode expected one of {', '.join(POSITION_MODES)}, got {position_mode!r}")
        self.last_keep_len, self.cut, self.position_mode = last_keep_len, cut, position_mode
        self.init_kv_cache = None
        self.initial_len = 0  # tokens kept at the front by the last compression

    def set_initial_cache(self, past_key_values):
        """Snapshots the initial cache. A tuple is kept as given (its tensors are the snapshot); a DynamicCache
        or KVCache grows in place, so its tokens are copied out."""
        if past_key_values is None or isinstance(past_key_values, tuple):
            self.init_kv_cache = past_key_values
        else:
            self.init_kv_cache = tuple((k.clone(), v.clone()) for k, v in cache_layers(past_key_values))

    def handle_overflow(self, past_key_values, last_msg, **context):
        if isinstance(past_key_values, core.KVCache) and self.cut == "span":
            return self._span_cut(past_key_values), last_msg
        if "keep_first" in context:  # a caller that knows its initial context by length, not by snapshot
            check_int("keep_first", context["keep_first"], 0)
            init, init_len = None, context["keep_first"]
        elif self.init_kv_cache is None:
            return past_key_values, last_msg  # nothing to keep yet: as the original, leave the cache as it is
        else:
            init, init_len = self.init_kv_cache, cache_length(self.init_kv_cache)
        curr = cache_length(past_key_values)
        if curr < self.last_keep_len:
            return past_key_values, last_msg
        if init_len > curr:
            if init is not None and isinstance(past_key_values, tuple):  # as the original: the snapshot alone
                return tuple((k.clone(), v.clone()) for k, v in cache_layers(init)), last_msg
            raise ValueError(
                f"drop_middle: the initial cache ({init_len} tokens) is longer than the cache to cut "
                f"({curr} tokens); call set_initial_cache again after emptying the cache"
            )
        start = max(curr - self.last_keep_len, init_len)
        if init is not None:
            self._restore_initial(past_key_values, init, init_len)
        theta = context.get("rope_theta")
        if self.position_mode == "shift" and theta is None and not isinstance(past_key_values, core.KVCache):
            raise ValueError(
                "drop_middle: position_mode='shift' on a transformers cache needs rope_theta= "
                "(the model's config.text_config.rope_theta) in the context"
            )
        self.initial_len = init_len
        if start == init_len:  # nothing between the snapshot and the kept tail
            return past_key_values, last_msg
        if isinstance(past_key_values, core.KVCache):
            past_key_values.drop_range(init_len, start, position_mode=self.position_mode)
            return past_key_values, last_msg
        return core.drop_middle(past_key_values, init_len, curr - start, self.position_mode, theta), last_msg

    @staticmethod
    def _restore_initial(past_key_values, init, init_len):
        """The kept head is the snapshot: write it over the cache's first tokens unless they are the same memory."""
        for (k, v), (ik, iv) in zip(cache_layers(past_key_values), cache_layers(init)):
            if k.data_ptr() == ik.data_ptr() and k.stride() == ik.stride():
                continue
            k.narrow(2, 0, init_len).copy_(ik)
            v.narrow(2, 0, init_len).copy_(iv)

    def _span_cut(self, cache):
        """The pinned anchor (system prompt, first user turn, knowledge) + the newest whole spans that fit."""
        if any(s.pinned and s.kind != "system" for s in cache.spans):
            cache.drop_middle(self.last_keep_len, position_mode=self.position_mode)
        else:  # no user turn yet: as the original, drop everything, but keep the system prompt
            cache.drop_all(keep_pinned=True, position_mode=self.position_mode)
        self.initial_len = sum(len(s) for s in cache.spans if s.pinned)
        return cache

    def _update_attention_mask(self, attention_mask, old_len, new_len):
        if attention_mask is None or new_len == old_len:
            return attention_mask
        tail = new_len - self.initial_len
        return torch.cat([attention_mask[:, : self.initial_len], attention_mask[:, old_len - tail :]], dim=1)

    def config(self):
        return {
            **super().config(),
            "last_keep_len": self.last_keep_len,
            "cut": self.cut,
            "position_mode": self.position_mode,
        }
