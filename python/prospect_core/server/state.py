"""What every route shares: the limits, the engine and its one thread, the session store, and the helpers that
move work between the event loop and that thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from prospect_core.config import DEFAULT_MAX_SEQ_LEN
from prospect_core.engine import Engine
from prospect_core.frames import FramePreprocessor
from prospect_core.server.errors import APIError
from prospect_core.server.images import load_images
from prospect_core.server.sessions import SessionStore


@dataclass
class ServerLimits:
    max_sessions: int = 16
    max_cache_mb: float = 2048
    session_ttl_s: float = 600
    session_max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    max_body_mb: float = 32
    max_image_mb: float = 16
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 64 * 2**20  # a request's images together, decoded: about 200 MB as RGB
    max_images_per_request: int = 16  # chat completions; frames have their own limit
    max_frames_per_request: int = 64
    max_text_chars: int = 100_000  # a request's text, counted before the engine thread tokenizes it
    max_tokens: int = 1024
    allow_local_images: str | None = None
    read_timeout_s: float = 15  # to receive each whole request, headers and body
    keep_alive_s: float = 5  # an idle connection between requests
    max_connections: int = 64  # open at once; past it, new requests get 503


@dataclass
class ServerState:
    """One server's engine, sessions and limits. Model work runs on `pool`, one thread, in arrival order."""

    engine: Engine
    limits: ServerLimits
    model_id: str
    store: SessionStore
    preprocess: FramePreprocessor
    local_dir: Path | None
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="prospect-engine")
    )
    started: float = field(default_factory=time.time)

    @classmethod
    def create(cls, engine: Engine, limits: ServerLimits, model_id: str) -> ServerState:
        store = SessionStore(
            engine,
            limits.max_sessions,
            int(limits.max_cache_mb * 2**20),
            limits.session_ttl_s,
            min(limits.session_max_seq_len, engine.backend.max_position_embeddings),
            limits.max_tokens,
        )
        local_dir = Path(limits.allow_local_images).resolve() if limits.allow_local_images else None
        return cls(engine, limits, model_id, store, FramePreprocessor(engine.processor), local_dir)

    def uptime_s(self) -> float:
        return time.time() - self.started

    async def on_engine(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the engine thread, after the work queued before it."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def images(self, pairs: list[tuple[str, str]], where: str) -> list[tuple[str, np.ndarray]]:
        """[(param, url)] -> [(param, array)], decoded off the event loop; 400 on the first bad one."""
        lim = self.limits
        return await run_in_threadpool(
            load_images,
            pairs,
            where,
            int(lim.max_image_mb * 2**20),
            lim.max_image_pixels,
            lim.max_request_pixels,
            self.local_dir,
        )

    def check_text(self, texts: list[tuple[str, str]]) -> None:
        """texts: [(param, text)]. Refuses a request whose text together exceeds the limit, naming its longest
        field, before any of it reaches the tokenizer on the engine thread."""
        limit = self.limits.max_text_chars
        total = sum(len(t) for _, t in texts)
        if total > limit:
            param = max(texts, key=lambda x: len(x[1]))[0]
            raise APIError(400, f"{param}: expected at most {limit} characters of text per request, got {total}", param)

    async def expire_idle(self) -> None:
        """Runs for the server's life: removes sessions idle past their TTL."""
        while True:
            await asyncio.sleep(max(0.05, min(self.limits.session_ttl_s / 4, 5.0)))
            self.store.expire()


def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]


async def finish_unless_gone(work: asyncio.Future, request: Request, gone: threading.Event) -> Any:
    """Awaits the engine's work; a client that hangs up first sets `gone`, which stops the work at its next
    token, so an abandoned request does not hold the engine thread."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=0.1)
        if done:
            return work.result()
        if not gone.is_set() and await request.is_disconnected():
            gone.set()
