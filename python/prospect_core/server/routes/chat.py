"""POST /v1/chat/completions: OpenAI's chat completions, whole or streamed as server-sent events."""

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from prospect_core.server import sse
from prospect_core.server.chat import Completion, render
from prospect_core.server.errors import APIError
from prospect_core.server.schemas import ChatRequest
from prospect_core.server.state import ServerState, State, finish_unless_gone

router = APIRouter()


@dataclass
class Reply:
    """One completion's identity and the OpenAI bodies that carry it."""

    model: str
    prompt_tokens: int
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, n: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}

    def completion(self, text: str, finish: str, n: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": self.usage(n),
        }

    def chunk(self, delta: dict | None = None, finish: str | None = None, **extra: Any) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        return sse.event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(req: ChatRequest, request: Request, st: State) -> dict[str, Any] | StreamingResponse:
    st.check_text(req.texts())
    text, pairs = render(req.messages, st.engine.backend.image_seq_len)
    limit = st.limits.max_images_per_request
    if len(pairs) > limit:
        raise APIError(400, f"messages: expected at most {limit} images per request, got {len(pairs)}", "messages")
    imgs = await st.images(pairs, "messages")
    job = await st.on_engine(Completion, st.engine, st.preprocess, req, text, imgs, st.limits.max_tokens)
    reply = Reply(st.model_id, job.prompt_tokens)
    if req.stream:
        usage = req.stream_options is not None and req.stream_options.include_usage
        return StreamingResponse(_chunks(st, job, reply, usage), media_type="text/event-stream")
    gone = threading.Event()
    work = asyncio.ensure_future(st.on_engine(job.run, None, gone.is_set))
    text, finish, n = await finish_unless_gone(work, request, gone)
    return reply.completion(text, finish, n)


async def _chunks(st: ServerState, job: Completion, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    stream = sse.ThreadStream(st.pool, job.run)
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        async for piece in stream.pieces():
            yield reply.chunk({"content": piece})
        _, finish, n = stream.result
        yield reply.chunk({}, finish)
        if include_usage:
            yield reply.chunk(usage=reply.usage(n))
        yield sse.DONE
    finally:
        stream.cancel()  # a client that hung up stops the decode at the next token
