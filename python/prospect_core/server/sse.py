"""Server-sent events: a worker on the engine thread hands text pieces to the event loop, which sends each as
one `data:` event as soon as it arrives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

DONE = "data: [DONE]\n\n"

# run(on_delta, cancelled): calls on_delta(piece) for each piece, stops once cancelled() is true; returns a result.
StreamingWork = Callable[[Callable[[str], None], Callable[[], bool]], Any]


def event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


class ThreadStream:
    """Runs `work` on `pool` and yields its pieces on the event loop; `result` is what it returned, once
    `pieces()` is done. `cancel()` (the client hung up) makes cancelled() true: the work stops at its next
    token instead of holding the engine thread."""

    def __init__(self, pool: Executor, work: StreamingWork):
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._cancelled = False
        self.result: Any = None

        def on_delta(piece: str) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, piece)

        self._future = loop.run_in_executor(pool, work, on_delta, lambda: self._cancelled)
        self._future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._queue.put_nowait, None))

    async def pieces(self) -> AsyncIterator[str]:
        while (piece := await self._queue.get()) is not None:
            yield piece
        self.result = await self._future

    def cancel(self) -> None:
        self._cancelled = True
