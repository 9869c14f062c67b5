"""StreamRunner: a video frame by frame through SmolVLM2, with the KV cache kept across frames.

The API mirrors the research pipeline it replaces (`run_inference_on_video`),
and adds `stream`, which yields one record per frame as it happens.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch

from prospect_core import _C as core
from prospect_core import prompt
from prospect_core.config import (
    DEFAULT_BACKEND,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_FPS,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_SEQ_LEN,
    DEFAULT_NOT_TALK_THRESHOLD,
    DEFAULT_RESERVED_SEQ_LEN,
    DEFAULT_SEED,
    DEFAULT_STRATEGY,
    DEFAULT_TALK_POLICY,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    DEFAULT_WEIGHTS,
    NATIVE_STRATEGY_DEFAULTS,
    SEED_LIMIT,
    TALK_POLICIES,
    FrameRecord,
    RunnerConfig,
    RunTotals,
    SamplingParams,
    TurnRecord,
)
from prospect_core.context_strategies import ContextStrategyFactory
from prospect_core.engine import Engine
from prospect_core.frames import FramePreprocessor, frame_change, thumbnail

__all__ = ["NATIVE_STRATEGY_DEFAULTS", "TALK_POLICIES", "StreamRunner", "restart_context", "summary_ids"]

SUMMARY_REQUEST_TOKENS = 64  # bounds a summary request, as summarize_and_drop's overflow_headroom counts it


def _text_ids(tokenizer: Any, text: str) -> torch.Tensor:
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]


def summary_ids(tokenizer: Any, summary: str, budget: int | None = None) -> torch.Tensor:
    """The summary turn's ids, cut to `budget` tokens if it is longer (the end of the summary goes)."""
    ids = _text_ids(tokenizer, prompt.summary_turn(summary))
    if budget is None or len(ids) <= budget:
        return ids
    head, tail = (_text_ids(tokenizer, part) for part in prompt.summary_turn("\0").split("\0"))
    body = _text_ids(tokenizer, summary)[: max(0, budget - len(head) - len(tail))]
    return torch.cat([head, body, tail]) if len(head) + len(tail) <= budget else ids[:0]


def restart_context(
    model: Any,
    tokenizer: Any,
    cache: core.KVCache,
    system_prompt: str | None,
    knowledge: str | None = None,
    summary: str | None = None,
    summary_budget: int | None = None,
) -> None:
    """Prefills the anchor into an empty cache: system prompt, then summary and knowledge, all pinned.
    summary_budget: the most tokens the summary turn may take (it is cut to fit)."""
    pieces = [
        ("system", _text_ids(tokenizer, prompt.system_turn(system_prompt or prompt.DEFAULT_SYSTEM_PROMPT, first=True)))
    ]
    if summary is not None:
        pieces.append(("summary", summary_ids(tokenizer, summary, summary_budget)))
    if knowledge:
        pieces.append(("system", _text_ids(tokenizer, prompt.knowledge_turn(knowledge))))
    for kind, ids in pieces:
        if len(ids) == 0:
            continue
        model.prefill(model.embed(ids.unsqueeze(0)), cache, kind)
        cache.pin(cache.spans[-1].id)


def check_time(name: str, t: object) -> None:
    """Seconds into the video: a finite number >= 0 (a frame's timestamp is printed from it)."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < math.inf:
        raise ValueError(f"{name} expected seconds, a finite number >= 0, got {t!r}")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class StreamRunner:
    """model_name: a checkpoint folder, a Hugging Face id in the local cache, or a loaded
    prospect.Engine to share its weights (then backend, torch_dtype and device come from it).

    The settings are a RunnerConfig: pass `config=RunnerConfig(...)`, or its fields as keyword arguments
    (as the pipeline this mirrors takes them); with `config`, the keyword arguments are not read."""

    def __init__(
        self,
        model_name: Any,
        device: str = DEFAULT_DEVICE,
        torch_dtype: str = DEFAULT_DTYPE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = DEFAULT_TEMPERATURE,
        use_kv_cache: bool = True,
        context_strategy_type: str = DEFAULT_STRATEGY,
        context_strategy_config: dict[str, Any] | None = None,
        max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
        reserved_seq_len: int = DEFAULT_RESERVED_SEQ_LEN,
        backend: str = DEFAULT_BACKEND,
        talk_policy: str = DEFAULT_TALK_POLICY,
        not_talk_threshold: float = DEFAULT_NOT_TALK_THRESHOLD,
        system_prompt: str | None = None,
        split_frames: bool = False,
        seed: int = DEFAULT_SEED,
        top_p: float = DEFAULT_TOP_P,
        weights: str = DEFAULT_WEIGHTS,
        skip_threshold: float | None = None,
        *,
        config: RunnerConfig | None = None,
    ):
        if config is None:
            config = RunnerConfig(
                device=device,
                torch_dtype=torch_dtype,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                use_kv_cache=use_kv_cache,
                context_strategy_type=context_strategy_type,
                context_strategy_config=context_strategy_config,
                max_seq_len=max_seq_len,
                reserved_seq_len=reserved_seq_len,
                backend=backend,
                talk_policy=talk_policy,
                not_talk_threshold=not_talk_threshold,
                system_prompt=system_prompt,
                split_frames=split_frames,
                seed=seed,
                top_p=top_p,
                weights=weights,
                skip_threshold=skip_threshold,
            )
        elif not isinstance(config, RunnerConfig):
            raise TypeError(f"config expected a RunnerConfig or None, got {type(config).__name__}")
        self._start(model_name, config)

    def _start(self, model_name: Any, c: RunnerConfig) -> None:
        """The strategy, the engine (loaded, or the one given), the cache; refuses a context too small for one
        frame and its reply."""
        self.config = c
        self.strategy = ContextStrategyFactory.create_strategy(
            c.strategy, max_seq_len=c.max_seq_len, reserved_seq_len=c.reserved_seq_len, **c.strategy_kwargs()
        )
        if c.max_new_tokens >= c.max_seq_len:
            raise ValueError(f"max_new_tokens expected < max_seq_len ({c.max_seq_len}), got {c.max_new_tokens}")

        engine = (
            model_name
            if isinstance(model_name, Engine)
            else Engine(model_name, c.backend, c.torch_dtype, c.device, c.weights)
        )
        self.max_positions = engine.backend.max_position_embeddings
        if c.max_seq_len > self.max_positions:
            raise ValueError(
                f"max_seq_len expected <= the model's max_position_embeddings ({self.max_positions}), "
                f"got {c.max_seq_len}"
            )
        self.engine = engine
        self.model_path, self.backend, self.processor = engine.path, engine.backend, engine.processor
        self.tokenizer, self.eou_id, self.device = engine.tokenizer, engine.eou_id, engine.device
        self.preprocess = FramePreprocessor(self.processor, c.split_frames)
        self.sampling = c.sampling
        self.max_new_tokens, self.temperature, self.seed = c.max_new_tokens, float(c.temperature), c.seed
        self.max_seq_len, self.reserved_seq_len = c.max_seq_len, c.reserved_seq_len
        self.talk_policy, self.not_talk_threshold = c.talk_policy, float(c.not_talk_threshold)
        self.system_prompt = c.system_prompt or prompt.DEFAULT_SYSTEM_PROMPT
        self.use_kv_cache = self.strategy.name != "none"
        self.cache = self.backend.make_cache(c.max_seq_len)
        self._prompt_ids = self._ids(prompt.ASSISTANT_PROMPT)[0]
        self._empty = torch.zeros(0, dtype=torch.long)
        step = (
            len(_text_ids(self.tokenizer, prompt.system_turn(self.system_prompt, first=True)))
            + len(_text_ids(self.tokenizer, prompt.frame_turn(0, self.backend.image_seq_len)))
            + len(self._prompt_ids)
            + c.max_new_tokens
        )
        if step > c.max_seq_len:  # no strategy could make room for even one frame
            raise ValueError(
                f"max_seq_len expected >= {step} (the system prompt, one frame and a reply of "
                f"max_new_tokens={c.max_new_tokens}), got {c.max_seq_len}"
            )
        self.reset()

    # ---- helpers -------------------------------------------------------------------------
    def _ids(self, text):
        return self.engine.ids(text)

    def _summary_room(self, incoming):
        """The most tokens a summary turn may take: a third of what the anchor, the next step (its input and a
        reply) and a summary request leave in the cache. The other thirds are the room the next summary is
        generated in and the frames in between, so the stream goes on before it summarises again."""
        free = self.max_seq_len - self._anchor_len - incoming - self.max_new_tokens - SUMMARY_REQUEST_TOKENS
        return max(0, free // 3)

    def _compress(self, frame_index, t, incoming=0):
        self._summary_budget = self._summary_room(incoming)
        # What the strategies read: where the stream is, and how to ask this runner's model for a summary.
        cache, msg = self.strategy.handle_overflow(
            self.cache, self._last_msg, frame_index=frame_index, time=t, summarize=self._summarize
        )
        if cache is not None:
            self.cache, self._last_msg = cache, msg
            return self.strategy.name
        # Emptied: what was owed goes with it; a summary, if the strategy made one, restarts the context.
        self.cache.drop_all()
        self._last_msg = None
        if isinstance(msg, str):
            restart_context(
                self.backend,
                self.tokenizer,
                self.cache,
                self.system_prompt,
                self._knowledge,
                msg,
                summary_budget=self._summary_budget,
            )
        return self.strategy.name

    def _summarize(self, text, max_tokens):
        """The model's answer to a summary request, generated from the whole cache; the cache is left as it was."""
        ids = self._ids(prompt.user_turn(text) + prompt.ASSISTANT_PROMPT)
        if self._last_msg is not None:  # the close of the last reply goes first
            ids = torch.cat([self._last_msg.view(1, -1), ids], 1)
        room = self.cache.capacity - self.cache.length - ids.shape[1]
        wrap = len(summary_ids(self.tokenizer, ""))
        max_tokens = min(max_tokens, room, self._summary_budget - wrap)  # the summary must fit where it goes
        if max_tokens <= 0:
            return ""
        r = self.backend.generate(
            self.backend.embed(ids),
            self.cache,
            SamplingParams(max_new_tokens=max_tokens),  # a summary is greedy, whatever the replies' settings
            [self.eou_id],
            kind="user",
            keep_generated_in_cache=False,
        )
        self.cache.truncate(self.cache.length - ids.shape[1])  # the request goes too
        return self._decode(r.tokens)

    def _make_room(self, incoming, frame_index, t):
        """Compresses first if `incoming` tokens and a reply would not fit; refills an empty cache with the
        anchor. Returns the strategy's name if it ran."""
        applied = None
        need = incoming + self.max_new_tokens + self.strategy.overflow_headroom(self._summary_room(incoming))
        need += len(self._last_msg) if self._last_msg is not None else 0
        if self.cache.length > 0 and self.cache.length + need > self.max_seq_len:
            applied = self._compress(frame_index, t, incoming)
        self.ensure_context()
        if self.cache.next_position + incoming + self.max_new_tokens > self.max_positions:
            # position_mode "keep" counts on past the model's positions: renumber the survivors from 0.
            self.cache.drop_spans([], "shift")
        self._last_incoming = incoming
        return applied

    def _take_last_msg(self):
        """The close of the last reply, owed in front of whatever comes next."""
        prefix = self._last_msg if self._last_msg is not None else self._empty
        self._last_msg = None
        return prefix

    def _turn_ids(self, turns):
        return [(turn, self._ids(self._turn_text(turn))[0]) for turn in turns]

    def _prefill_turns(self, turn_ids, frame_index):
        """Appends [(turn, ids)] (system or user) as spans; pins the first user turn as the anchor.
        Returns the ids still owed in front of the next input."""
        prefix = self._take_last_msg()
        for turn, own in turn_ids:
            ids = torch.cat([prefix, own]).unsqueeze(0)
            kind = "user" if turn["role"] == "user" else "system"
            self.backend.prefill(self.backend.embed(ids), self.cache, kind, frame_index)
            if kind == "user" and not self._anchor_pinned:
                self.cache.pin(self.cache.spans[-1].id)
                self._anchor_pinned = True
            prefix = self._empty
        return prefix

    def _stateless_context(self, reserve, frame_index):
        """Stateless: system prompt + the newest turns of the conversation that fit, from scratch."""
        self.cache.drop_all()
        restart_context(self.backend, self.tokenizer, self.cache, self.system_prompt, self._knowledge)
        budget = self.max_seq_len - self.cache.length - self.max_new_tokens - reserve
        kept = []
        for h in reversed(self._history):
            n = len(self._ids(h)[0])
            if n > budget:
                break
            kept.insert(0, h)
            budget -= n
        if kept:
            self._prefill_text("".join(kept), "user", frame_index)

    def _prefill_text(self, text, kind, frame_index=None):
        self.backend.prefill(self.backend.embed(self._ids(text)), self.cache, kind, frame_index)

    def _decode(self, tokens):
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    @staticmethod
    def _validate(video):
        if not isinstance(video, dict):
            raise TypeError(f"video_data expected a dict, got {type(video).__name__}")
        if "frames" not in video and "video_path" not in video:
            raise ValueError("video_data expected 'frames' (a list of images) or 'video_path', got neither")
        fps = video.get("fps", DEFAULT_FPS)
        if not isinstance(fps, (int, float)) or not fps > 0 or math.isinf(fps):
            raise ValueError(f"video_data['fps'] expected a positive number, got {fps!r}")
        conv = video.get("conversation", [])
        if not isinstance(conv, list):
            raise TypeError(f"video_data['conversation'] expected a list of turns, got {type(conv).__name__}")
        for i, turn in enumerate(conv):
            if not isinstance(turn, dict) or not {"role", "time", "content"} <= set(turn):
                raise ValueError(
                    f"video_data['conversation'][{i}] expected a dict with role, time, content; got {turn!r}"
                )
            if turn["role"] not in ("system", "user", "assistant"):
                raise ValueError(
                    f"video_data['conversation'][{i}]['role'] expected system, user or assistant, got {turn['role']!r}"
                )
            if not isinstance(turn["time"], (int, float)) or not 0 <= turn["time"] < math.inf:
                raise ValueError(f"video_data['conversation'][{i}]['time'] expected seconds >= 0, got {turn['time']!r}")
        return float(fps), conv

    def _frames(self, video, fps):
        limit = video.get("max_frames")
        if "frames" in video:
            frames = video["frames"]
            if not hasattr(frames, "__iter__"):
                raise TypeError(f"video_data['frames'] expected a list of images, got {type(frames).__name__}")
        else:
            if not getattr(core, "has_opencv", False):
                raise RuntimeError(
                    "video_path needs prospect_core.VideoReader, which this build lacks "
                    "(rebuild with OpenCV: apt-get install libopencv-dev)"
                )
            frames = (f for _, f in core.VideoReader(str(video["video_path"]), fps=fps))
        for i, f in enumerate(frames):
            if limit is not None and i >= limit:
                break
            yield i, (i + 1) / fps, f

    def _turn_text(self, turn):
        return (
            prompt.user_turn(turn["content"])
            if turn["role"] == "user"
            else prompt.system_turn(turn["content"], first=False)
        )

    # ---- one step at a time (what stream() and server sessions call) --------------------------
    def reset(self, knowledge: str | None = None) -> None:
        """Starts a new stream: an empty cache, no summaries, nothing owed from a last reply."""
        self.cache.drop_all()
        if hasattr(self.strategy, "summaries"):
            self.strategy.summaries.clear()
        self._knowledge = knowledge
        self._last_msg, self._anchor_pinned = None, False
        self._last_incoming, self._summary_budget = 0, self.max_seq_len
        self._anchor_len = len(_text_ids(self.tokenizer, prompt.system_turn(self.system_prompt, first=True)))
        if knowledge:
            self._anchor_len += len(_text_ids(self.tokenizer, prompt.knowledge_turn(knowledge)))
        self._history: list[str] = []  # the conversation so far as text, for the stateless baseline
        self._kept_thumbnail: torch.Tensor | None = None  # the last processed frame's, for skip_threshold

    def ensure_context(self) -> None:
        """Prefills the anchor (system prompt, task knowledge) if the cache is empty."""
        if self.cache.length == 0:
            restart_context(self.backend, self.tokenizer, self.cache, self.system_prompt, self._knowledge)
            self._anchor_pinned = False

    def add_frame(
        self,
        frame: Any,
        frame_index: int,
        t: float,
        turns: Iterable[dict] = (),
        talk: bool = True,
        where: str = "frame",
    ) -> FrameRecord:
        """One frame at time t (seconds), after the system/user turns placed before it. talk=False only
        watches; otherwise the talk policy decides. With skip_threshold set, a frame nearly the last kept one
        and bringing no turn goes no further (its record says skipped). Returns the frame's record."""
        check_time("t", t)
        turns = list(turns)
        if self.config.skip_threshold is not None:
            # A turn, or an annotated reply, at this frame needs the frame: only quiet frames are skipped.
            thumb = thumbnail(frame, where)
            if (
                not turns
                and not (self.talk_policy == "annotations" and talk)
                and self._kept_thumbnail is not None
                and frame_change(thumb, self._kept_thumbnail) < self.config.skip_threshold
            ):
                n, p = self.cache.length, self.cache.next_position
                return FrameRecord(frame_index, t, n, cache_len_peak=n, max_position=p, cache_len_after=n, skipped=True)
            self._kept_thumbnail = thumb
        rec = FrameRecord(frame_index=frame_index, time=t, cache_len_before=self.cache.length)
        if self.config.skip_threshold is not None:
            rec.skipped = False
        pixel_values, mask, rows, cols = self.preprocess(frame, where)
        frame_ids = self._ids(prompt.frame_turn(t, self.backend.image_seq_len, rows, cols))[0]
        prompt_ids = self._prompt_ids if talk else self._empty

        t0 = time.perf_counter()
        features = self.backend.image_features(pixel_values, mask)
        rec.vision_ms = (time.perf_counter() - t0) * 1e3

        t0 = time.perf_counter()
        if not self.use_kv_cache:
            self._history += [self._turn_text(x) for x in turns]
            self._stateless_context(len(frame_ids) + len(prompt_ids), frame_index)
        else:
            turn_ids = self._turn_ids(turns)
            incoming = len(frame_ids) + len(prompt_ids) + sum(len(ids) for _, ids in turn_ids)
            rec.strategy_applied = self._make_room(incoming, frame_index, t)
            frame_ids = torch.cat([self._prefill_turns(turn_ids, frame_index), frame_ids])
        rec.prefill_ms = (time.perf_counter() - t0) * 1e3

        ids = torch.cat([frame_ids, prompt_ids]).unsqueeze(0)
        embeds = self.backend.embed(ids, features)
        if talk:
            silence = (self.eou_id, self.not_talk_threshold) if self.talk_policy == "silence_threshold" else None
            room = self.cache.capacity - self.cache.length - ids.shape[1]
            r = self._generate(embeds, min(self.max_new_tokens, room), frame_index, kind="frame", silence=silence)
            rec.prefill_ms += r.prefill_ms
            rec.decode_ms, rec.silence_prob = r.decode_ms, r.silence_prob
            if r.tokens:
                rec.text = self._decode(r.tokens)
                self._last_msg = self._ids(prompt.AFTER_REPLY)[0]
                if not self.use_kv_cache:  # only the stateless baseline re-reads the conversation
                    self._history.append(prompt.assistant_turn(rec.text))
            else:  # silent: take the "Assistant:" prompt back out of the cache
                self.cache.truncate(self.cache.length - len(prompt_ids))
        else:
            t0 = time.perf_counter()
            self.backend.prefill(embeds, self.cache, "frame", frame_index)
            rec.prefill_ms += (time.perf_counter() - t0) * 1e3
        rec.talked = rec.text is not None
        self._finish(rec, frame_index, t)
        return rec

    def add_user_turn(
        self,
        text: str,
        frame_index: int | None = None,
        t: float | None = None,
        respond: bool = False,
        max_new_tokens: int | None = None,
        on_token: Callable[[int], Any] | None = None,
    ) -> TurnRecord:
        """A user turn between frames. respond=True: the assistant answers at once (no silence rule);
        returns the record with the reply's text (None when not asked to respond)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text expected a non-empty string, got {text!r}")
        if t is not None:
            check_time("t", t)
        turn = {"role": "user", "content": text}
        rec = TurnRecord(frame_index=frame_index, time=t, cache_len_before=self.cache.length)
        prompt_ids = self._prompt_ids if respond else self._empty
        t0 = time.perf_counter()
        if not self.use_kv_cache:
            self._history.append(self._turn_text(turn))
            if respond:
                self._stateless_context(len(prompt_ids), frame_index)
        else:
            turn_ids = self._turn_ids([turn])
            rec.strategy_applied = self._make_room(len(turn_ids[0][1]) + len(prompt_ids), frame_index, t)
            self._prefill_turns(turn_ids, frame_index)  # takes the owed close of the last reply with it
        rec.prefill_ms = (time.perf_counter() - t0) * 1e3
        if respond:
            limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
            room = self.cache.capacity - self.cache.length - len(prompt_ids)
            r = self._generate(
                self.backend.embed(prompt_ids.unsqueeze(0)),
                min(limit, room),
                frame_index,
                kind="assistant",
                on_token=on_token,
            )
            rec.prefill_ms += r.prefill_ms
            rec.decode_ms = r.decode_ms
            rec.text = self._decode(r.tokens)
            rec.tokens = list(r.tokens)
            self._last_msg = self._ids(prompt.AFTER_REPLY)[0]  # even an empty reply is closed
            if not self.use_kv_cache:
                self._history.append(prompt.assistant_turn(rec.text))
        rec.talked = rec.text is not None
        self._finish(rec, frame_index, t)
        return rec

    def next_reply_logits(self, text: str) -> torch.Tensor:
        """Logits [1, V] of the first reply token after a user turn `text`, as add_user_turn(text,
        respond=True) would see them without a compression; the cache is left as it was."""
        if not self.use_kv_cache:
            raise ValueError("next_reply_logits reads the kept cache; the stateless 'none' strategy keeps none")
        owed = self._last_msg if self._last_msg is not None else self._empty
        ids = torch.cat([owed, self._ids(prompt.user_turn(text))[0], self._prompt_ids]).unsqueeze(0)
        if self.cache.length + ids.shape[1] > self.cache.capacity:
            raise ValueError(
                f"text: {ids.shape[1]} tokens do not fit in the {self.cache.capacity - self.cache.length} "
                "left in the cache"
            )
        start = self.cache.length
        try:
            return self.backend.prefill(self.backend.embed(ids), self.cache, "user")
        finally:
            self.cache.truncate(start)

    def _generate(self, embeds, limit, frame_index, kind, silence=None, on_token=None):
        """A reply of at most `limit` tokens (none if negative), sampled with this runner's settings; frame i
        samples with seed + i, so a rerun says the same."""
        sampling = replace(
            self.sampling, max_new_tokens=max(0, limit), seed=(self.seed + (frame_index or 0)) % SEED_LIMIT
        )
        return self.backend.generate(
            embeds,
            self.cache,
            sampling,
            [self.eou_id],
            silence=silence,
            kind=kind,
            frame_index=frame_index,
            on_token=on_token,
        )

    def _finish(self, rec, frame_index, t):
        """The cache's state after a step, and the compression the strategy asks for after it, if any."""
        rec.cache_len_peak, rec.max_position = self.cache.length, self.cache.next_position
        if self.use_kv_cache and self.strategy.should_reduce_cache(self.cache.length):
            rec.strategy_applied = self._compress(frame_index, t, self._last_incoming)
        rec.cache_len_after = self.cache.length

    # ---- the stream ------------------------------------------------------------------------
    def stream(self, video_data: dict) -> Iterator[FrameRecord]:
        """Yields one record per frame (see add_frame)."""
        fps, conv = self._validate(video_data)
        turns = sorted(conv, key=lambda t: t["time"])
        inputs = [t for t in turns if t["role"] in ("system", "user")]
        talk_frames = {math.floor(t["time"] * fps) for t in turns if t["role"] == "assistant"}
        self.reset(video_data.get("knowledge"))
        next_input = 0
        for i, t, frame in self._frames(video_data, fps):
            # Turns before this frame: ProAssist places a turn at frame floor(time * fps).
            new_turns = []
            while next_input < len(inputs) and math.floor(inputs[next_input]["time"] * fps) <= i:
                new_turns.append(inputs[next_input])
                next_input += 1
            talk = self.talk_policy != "annotations" or i in talk_frames
            yield self.add_frame(frame, i, t, new_turns, talk, where=f"video_data['frames'][{i}]")

    def run_inference_on_video(self, video_data: dict) -> dict[str, Any]:
        """Runs the whole video; returns predictions, per-frame records, summaries and totals, as plain dicts
        (what compare writes as JSON)."""
        t_start = time.perf_counter()
        frames = list(self.stream(video_data))
        elapsed = time.perf_counter() - t_start
        return {
            "video_id": video_data.get("video_id"),
            "predictions": [{"time": f.time, "frame_index": f.frame_index, "text": f.text} for f in frames if f.talked],
            "frames": [f.to_dict() for f in frames],
            "summaries": list(getattr(self.strategy, "summaries", [])),
            "totals": RunTotals.of_frames(frames, elapsed, _peak_memory_mb(self.device)).to_dict(),
        }
