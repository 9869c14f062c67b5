"""Context strategies: what to do when the cache fills up.

A strategy decides when (`should_reduce_cache`) and how (`handle_overflow`) to
shrink the cache. `cache` is the runner's span-aware `prospect_core.KVCache`
(the same object under both backends); a transformers `DynamicCache` or a tuple
also works for drop_all and drop_middle, so a strategy can be used inside an
existing transformers loop. `context` carries at least `model` (the backend),
`tokenizer`, `system_prompt`, `knowledge`, `frame_index` and `time`.
"""

import torch

import prospect_core as core
from prospect import prompt


class BaseContextStrategy:
    """Subclass this for a strategy of your own and register it with ContextStrategyFactory.register."""

    def __init__(self, max_seq_len: int = 4096, reserved_seq_len: int = 128, **config):
        if not isinstance(max_seq_len, int) or max_seq_len <= 0:
            raise ValueError(f"max_seq_len expected a positive int, got {max_seq_len!r}")
        if not isinstance(reserved_seq_len, int) or not 0 <= reserved_seq_len < max_seq_len:
            raise ValueError(f"reserved_seq_len expected an int in [0, max_seq_len={max_seq_len}), "
                             f"got {reserved_seq_len!r}")
        if config:
            raise ValueError(f"{type(self).__name__}: unknown config keys {sorted(config)}")
        self.max_seq_len = max_seq_len
        self.reserved_seq_len = reserved_seq_len

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def ctxlen_to_reduce(self) -> int:
        return self.max_seq_len - self.reserved_seq_len

    def should_reduce_cache(self, current_seq_len: int) -> bool:
        return current_seq_len > self.ctxlen_to_reduce

    def overflow_headroom(self) -> int:
        """Tokens handle_overflow itself appends before it shrinks the cache (summaries)."""
        return 0

    def handle_overflow(self, cache, last_msg, **context):
        raise NotImplementedError

    def config(self) -> dict:
        return {"strategy": self.name, "max_seq_len": self.max_seq_len, "reserved_seq_len": self.reserved_seq_len}


class NoneStrategy(BaseContextStrategy):
    """Stateless: the runner prefills every frame from scratch; the cache never needs shrinking."""

    name = "none"

    def should_reduce_cache(self, current_seq_len):
        return False

    def handle_overflow(self, cache, last_msg, **context):
        return cache, last_msg


class DropAllStrategy(BaseContextStrategy):
    """Empties the cache; the runner then starts again from the system prompt."""

    name = "drop_all"

    def handle_overflow(self, cache, last_msg, **context):
        if isinstance(cache, core.KVCache):
            cache.drop_all()
            return cache, None
        return core.drop_all(cache), None


class DropMiddleStrategy(BaseContextStrategy):
    """Keeps the pinned anchor (system prompt, first user turn, task knowledge) and the newest
    whole spans within last_keep_len tokens; never cuts a frame in half."""

    name = "drop_middle"

    def __init__(self, max_seq_len=4096, reserved_seq_len=128, last_keep_len=512, position_mode="shift", **config):
        super().__init__(max_seq_len, reserved_seq_len, **config)
        if not isinstance(last_keep_len, int) or not 0 <= last_keep_len < max_seq_len:
            raise ValueError(f"last_keep_len expected an int in [0, max_seq_len={max_seq_len}), got {last_keep_len!r}")
        if position_mode not in ("shift", "keep"):
            raise ValueError(f"position_mode expected 'shift' or 'keep', got {position_mode!r}")
        self.last_keep_len, self.position_mode = last_keep_len, position_mode
        self.initial_len = 0  # length of the kept initial cache after the last compression

    def handle_overflow(self, cache, last_msg, **context):
        if not isinstance(cache, core.KVCache):
            # A transformers cache has no spans: keep the first `keep_first` tokens (the caller's
            # initial context) and the last last_keep_len, counting tokens.
            keep_first = int(context.get("keep_first", self.initial_len))
            theta = context.get("rope_theta")
            if self.position_mode == "shift" and theta is None:
                raise ValueError("drop_middle on a transformers cache: context expected rope_theta= "
                                 "(the model's config.text_config.rope_theta) for position_mode='shift'")
            self.initial_len = keep_first
            return core.drop_middle(cache, keep_first, self.last_keep_len, self.position_mode, theta), last_msg
        has_anchor = any(s.pinned and s.kind != "system" for s in cache.spans)
        if has_anchor:
            cache.drop_middle(self.last_keep_len, position_mode=self.position_mode)
        else:  # no user turn yet: as ProAssist, drop everything, but keep the system prompt
            cache.drop_all(keep_pinned=True, position_mode=self.position_mode)
        self.initial_len = sum(len(s) for s in cache.spans if s.pinned)
        return cache, last_msg

    def config(self):
        return {**super().config(), "last_keep_len": self.last_keep_len, "position_mode": self.position_mode}


class SummarizeAndDropStrategy(BaseContextStrategy):
    """Asks the model for a summary from the cache it already has, then restarts the context as
    system prompt + summary (+ task knowledge)."""

    name = "summarize_and_drop"

    def __init__(self, max_seq_len=4096, reserved_seq_len=128, summary_prompt="Please summarize the progress.",
                 summary_max_length=512, **config):
        super().__init__(max_seq_len, reserved_seq_len, **config)
        if not isinstance(summary_prompt, str) or not summary_prompt.strip():
            raise ValueError(f"summary_prompt expected a non-empty string, got {summary_prompt!r}")
        if not isinstance(summary_max_length, int) or not 0 < summary_max_length < max_seq_len:
            raise ValueError(f"summary_max_length expected an int in [1, max_seq_len={max_seq_len}), "
                             f"got {summary_max_length!r}")
        self.summary_prompt, self.summary_max_length = summary_prompt, summary_max_length
        self.summaries = []

    def _prompt_text(self):
        return prompt.user_turn(self.summary_prompt) + prompt.ASSISTANT_PROMPT

    def overflow_headroom(self):
        return 64 + self.summary_max_length  # the prompt (a few tokens; 64 bounds it) and the summary

    def handle_overflow(self, cache, last_msg, **context):
        if not isinstance(cache, core.KVCache):
            raise TypeError("summarize_and_drop needs the runner's KVCache (it generates from it), got "
                            f"{type(cache).__name__}")
        model, tok = context["model"], context["tokenizer"]
        eou = tok.convert_tokens_to_ids(prompt.EOU)
        ids = tok(self._prompt_text(), add_special_tokens=False, return_tensors="pt").input_ids
        if last_msg is not None:  # the close of the last reply goes first
            ids = torch.cat([torch.as_tensor(last_msg).view(1, -1), ids], 1)
        room = cache.capacity - cache.length - ids.shape[1]
        summary = ""
        if room > 0:  # summarise from the full cache: no re-prefill of the history
            r = model.generate(model.embed(ids), cache, min(self.summary_max_length, room), [eou], kind="user",
                               frame_index=context.get("frame_index"), keep_generated_in_cache=False)
            summary = tok.decode(r.tokens, skip_special_tokens=True).strip()
        self.summaries.append({"frame_index": context.get("frame_index"), "time": context.get("time"),
                               "text": summary})
        cache.drop_all()
        restart_context(model, tok, cache, context.get("system_prompt"), context.get("knowledge"), summary)
        return cache, None

    def config(self):
        return {**super().config(), "summary_prompt": self.summary_prompt,
                "summary_max_length": self.summary_max_length}


def restart_context(model, tokenizer, cache, system_prompt, knowledge=None, summary=None):
    """Prefills the anchor into an empty cache: system prompt, then summary and knowledge, all pinned."""
    pieces = [("system", prompt.system_turn(system_prompt or prompt.DEFAULT_SYSTEM_PROMPT, first=True))]
    if summary is not None:
        pieces.append(("summary", prompt.summary_turn(summary)))
    if knowledge:
        pieces.append(("system", prompt.knowledge_turn(knowledge)))
    for kind, text in pieces:
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        model.prefill(model.embed(ids), cache, kind)
        cache.pin(cache.spans[-1].id)


class ContextStrategyFactory:
    _registry = {
        "none": NoneStrategy,
        "drop_all": DropAllStrategy,
        "drop_middle": DropMiddleStrategy,
        "summarize_and_drop": SummarizeAndDropStrategy,
    }

    @classmethod
    def register(cls, name: str, strategy_cls):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name expected a non-empty string, got {name!r}")
        if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, BaseContextStrategy)):
            raise TypeError(f"strategy_cls expected a BaseContextStrategy subclass, got {strategy_cls!r}")
        cls._registry[name] = strategy_cls

    @classmethod
    def known(cls):
        return sorted(cls._registry)

    @classmethod
    def create_strategy(cls, strategy_type: str, max_seq_len: int = 4096, reserved_seq_len: int = 128, **config):
        if strategy_type not in cls._registry:
            raise ValueError(f"strategy_type expected one of {', '.join(cls.known())}, got {strategy_type!r}")
        return cls._registry[strategy_type](max_seq_len=max_seq_len, reserved_seq_len=reserved_seq_len, **config)
