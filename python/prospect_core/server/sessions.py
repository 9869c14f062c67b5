"""Stateful sessions: each holds a runner (its own KV cache and strategy) over the shared engine.

The store enforces the caps (sessions, cache bytes) and expires idle sessions. A session's
asyncio lock keeps its requests in arrival order; the engine queue runs one at a time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np

from prospect_core import prompt
from prospect_core.config import (
    DEFAULT_LAST_KEEP_LEN,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_NOT_TALK_THRESHOLD,
    DEFAULT_RESERVED_SEQ_LEN,
    DEFAULT_STRATEGY,
    DEFAULT_SUMMARY_MAX_LENGTH,
    DEFAULT_TALK_POLICY,
    FrameRecord,
    RunnerConfig,
    TurnRecord,
)
from prospect_core.context_strategies import BaseContextStrategy
from prospect_core.engine import Engine
from prospect_core.runners import StreamRunner
from prospect_core.server.errors import APIError
from prospect_core.server.schemas import SessionCreate


def _public(rec: FrameRecord | TurnRecord) -> dict[str, Any]:
    """A step's record as the API shows it (a user turn has no vision time or silence probability)."""
    return {
        "time": rec.time,
        "frame_index": rec.frame_index,
        "talked": rec.talked,
        "text": rec.text,
        "cache_len_before": rec.cache_len_before,
        "cache_len_after": rec.cache_len_after,
        "strategy_applied": rec.strategy_applied,
        "silence_prob": getattr(rec, "silence_prob", None),
        "vision_ms": getattr(rec, "vision_ms", None),
        "prefill_ms": rec.prefill_ms,
        "decode_ms": rec.decode_ms,
        "cache_length": rec.cache_len_after,
    }


def session_config(body: SessionCreate, max_seq_len: int, max_tokens: int) -> RunnerConfig:
    """A session's runner settings: what the body asks for, else the defaults, scaled down for a context
    shorter than the DEFAULT_MAX_SEQ_LEN they suit."""
    cfg = dict(body.context_strategy_config or {})
    cfg.pop("max_seq_len", None)
    reserved = cfg.pop("reserved_seq_len", min(DEFAULT_RESERVED_SEQ_LEN, max_seq_len // 4))
    strategy = body.context_strategy or DEFAULT_STRATEGY
    if strategy == "drop_middle":
        cfg.setdefault("last_keep_len", min(DEFAULT_LAST_KEEP_LEN, max_seq_len // 4))
    if strategy == "summarize_and_drop":
        cfg.setdefault("summary_max_length", min(DEFAULT_SUMMARY_MAX_LENGTH, max_seq_len // 8))
    threshold = body.not_talk_threshold
    # temperature, top_p and seed as the chat completions read them; the runner samples frame i with seed + i.
    sampling = body.sampling(body.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, max_seq_len // 4, max_tokens))
    assert sampling.seed is not None  # without one in the body, sampling() draws one
    return RunnerConfig(
        max_seq_len=max_seq_len,
        reserved_seq_len=reserved,
        context_strategy_type=strategy,
        context_strategy_config=cfg,
        system_prompt=body.system_prompt,
        talk_policy=body.talk_policy or DEFAULT_TALK_POLICY,
        not_talk_threshold=DEFAULT_NOT_TALK_THRESHOLD if threshold is None else threshold,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
    )


def sampling_info(runner: StreamRunner) -> dict[str, Any]:
    """How a session's replies are sampled, as its create and info responses show it."""
    sp = runner.sampling
    return {"temperature": sp.temperature, "top_p": sp.top_p, "seed": sp.seed, "max_new_tokens": sp.max_new_tokens}


def kept_on_compress(strategy: BaseContextStrategy, engine: Engine, unpinned: int) -> int:
    """The most tokens besides the pinned anchor that a compression can leave: drop_middle's newest spans
    (at most last_keep_len of the `unpinned` tokens there are), or a summary restarted as a system turn."""
    cfg = strategy.config()
    kept = min(cfg.get("last_keep_len", 0), unpinned)
    if "summary_max_length" in cfg:
        kept += cfg["summary_max_length"] + len(engine.ids(prompt.system_turn(".", first=True))[0])
    return kept


class Session:
    def __init__(self, sid, runner, nbytes):
        self.id, self.runner, self.nbytes = sid, runner, nbytes
        self.created = self.last_used = time.time()
        self.lock = asyncio.Lock()
        self.frames = self.turns = self.compressions = 0
        self.last_time = 0.0

    # These run on the engine thread. Each checks its whole request before it changes anything, so that a
    # refused request leaves the session exactly as it was.
    def _room(self, later=False):
        """The most tokens one input may take: an input refused by this bound is refused before a compression
        could cut the cache to make room for it. later: for an input after others in the same request, when
        the cache may hold more."""
        r = self.runner
        pinned = sum(len(s) for s in r.cache.spans if s.pinned)
        unpinned = r.cache.capacity if later else r.cache.length - pinned
        owed = len(r.engine.ids(prompt.AFTER_REPLY)[0])  # the close of the last reply goes in front
        return r.cache.capacity - pinned - kept_on_compress(r.strategy, r.engine, unpinned) - owed

    def _check_fits(self, text, param, what, later=False):
        n = len(self.runner.engine.ids(text)[0])
        room = self._room(later)
        if n > room:
            raise APIError(
                400,
                f"{param}: expected {what} of at most {room} tokens (the session's context of "
                f"{self.runner.cache.capacity} less its pinned anchor and what a compression "
                f"keeps), got {n}",
                param,
            )

    def add_frames(self, frames: list[tuple[float, np.ndarray]]) -> list[dict[str, Any]]:
        """frames: [(time, HxWx3 uint8)] -> one result per frame, in order."""
        if frames and frames[0][0] < self.last_time:
            raise ValueError(
                f"frames[0].time: expected >= the session's last frame time {self.last_time}, got {frames[0][0]}"
            )
        image_seq_len = self.runner.backend.image_seq_len
        for k, (t, _) in enumerate(frames):
            self._check_fits(
                prompt.frame_turn(t, image_seq_len) + prompt.ASSISTANT_PROMPT, f"frames[{k}]", "a frame", later=k > 0
            )
        results = []
        for k, (t, image) in enumerate(frames):
            rec = self.runner.add_frame(image, self.frames, t, where=f"frames[{k}].image_url")
            self.frames += 1
            self.last_time = t
            self.compressions += rec.strategy_applied is not None
            results.append(_public(rec))
        return results

    def add_message(self, content: str, respond: bool, max_tokens: int | None = None) -> dict[str, Any]:
        self._check_fits(
            prompt.user_turn(content) + (prompt.ASSISTANT_PROMPT if respond else ""), "content", "a message"
        )
        rec = self.runner.add_user_turn(
            content, frame_index=max(self.frames - 1, 0), t=self.last_time, respond=respond, max_new_tokens=max_tokens
        )
        self.turns += 1
        self.compressions += rec.strategy_applied is not None
        out = _public(rec)
        out["usage"] = {"completion_tokens": len(rec.tokens or [])}
        return out

    def info(self) -> dict[str, Any]:
        r = self.runner
        cache = r.cache
        return {
            "id": self.id,
            "object": "session",
            "created": int(self.created),
            "last_used": int(self.last_used),
            "system_prompt": r.system_prompt,
            "talk_policy": r.talk_policy,
            "context_strategy": r.strategy.config(),
            "sampling": sampling_info(r),
            "frames": self.frames,
            "turns": self.turns,
            "compressions": self.compressions,
            "last_time": self.last_time,
            "cache_length": cache.length,
            "capacity": cache.capacity,
            "next_position": cache.next_position,
            "cache_bytes": self.nbytes,
            "spans": [
                {
                    "id": s.id,
                    "kind": s.kind,
                    "frame_index": s.frame_index,
                    "start": s.start,
                    "end": s.end,
                    "first_position": s.first_position,
                    "pinned": s.pinned,
                }
                for s in cache.spans
            ],
            "summaries": list(getattr(r.strategy, "summaries", [])),
        }


class SessionStore:
    def __init__(self, engine, max_sessions, max_cache_bytes, ttl_s, max_seq_len, max_tokens):
        self.engine, self.max_sessions, self.max_cache_bytes = engine, max_sessions, max_cache_bytes
        self.ttl_s, self.max_seq_len, self.max_tokens = ttl_s, max_seq_len, max_tokens
        self.sessions: dict[str, Session] = {}
        self.reserved = 0  # bytes of sessions being built
        self.building = 0  # sessions being built: they count against max_sessions already
        self.bytes_per_token = engine.backend.make_cache(1).capacity_bytes()

    @property
    def used_bytes(self):
        return self.reserved + sum(s.nbytes for s in self.sessions.values())

    def session_len(self, body):
        """The new session's context length: context_strategy_config's max_seq_len, or the server's."""
        n = (body.context_strategy_config or {}).get("max_seq_len", self.max_seq_len)
        limit = self.engine.backend.max_position_embeddings
        if not isinstance(n, int) or isinstance(n, bool) or not 64 <= n <= limit:
            raise APIError(
                400,
                f"context_strategy_config.max_seq_len: expected an int in [64, {limit}], got {n!r}",
                "context_strategy_config.max_seq_len",
            )
        return n

    def reserve(self, max_seq_len):
        """Claims a slot and room for a new session's cache, or refuses with 429 (too many) / 503 (memory).
        Called on the event loop with no await between check and claim, so concurrent creates cannot overshoot."""
        if len(self.sessions) + self.building >= self.max_sessions:
            raise APIError(
                429,
                f"session limit reached ({self.max_sessions} open); delete one or wait for idle ones to expire",
                code="too_many_sessions",
            )
        nbytes = self.bytes_per_token * max_seq_len
        if self.used_bytes + nbytes > self.max_cache_bytes:
            raise APIError(
                503,
                f"cache memory limit reached: a session of {max_seq_len} tokens needs "
                f"{nbytes / 2**20:.1f} MiB, {(self.max_cache_bytes - self.used_bytes) / 2**20:.1f} "
                f"MiB of {self.max_cache_bytes / 2**20:.0f} MiB are free",
                code="cache_memory_full",
            )
        self.reserved += nbytes
        self.building += 1
        return nbytes

    def release(self, nbytes):
        self.reserved -= nbytes
        self.building -= 1

    def build(self, body: SessionCreate, max_seq_len: int) -> StreamRunner:
        """Runs on the engine thread: the session's runner over the shared engine."""
        runner = StreamRunner(self.engine, config=session_config(body, max_seq_len, self.max_tokens))
        runner.reset(body.knowledge)
        runner.ensure_context()
        return runner

    def add(self, runner, nbytes):
        self.release(nbytes)
        s = Session(uuid.uuid4().hex, runner, runner.cache.capacity_bytes())
        self.sessions[s.id] = s
        return s

    def get(self, sid) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise APIError(
                404,
                f"no session '{sid}' (never created, deleted, or expired after {self.ttl_s:g} s idle)",
                "session_id",
                "session_not_found",
            )
        return s

    def remove(self, sid):
        self.sessions.pop(sid, None)

    def expire(self, now=None):
        """Removes sessions idle longer than the TTL and not busy; returns their ids."""
        now = time.time() if now is None else now
        gone = [sid for sid, s in self.sessions.items() if now - s.last_used > self.ttl_s and not s.lock.locked()]
        for sid in gone:
            del self.sessions[sid]
        return gone
