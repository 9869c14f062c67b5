"""The HTTP routes: OpenAI chat completions plus stateful video sessions, over one engine.

Model work runs on one engine thread, in the order requests reach it; the event loop only
parses, decodes images and streams bytes.
"""

import asyncio
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from prospect_core.frames import FramePreprocessor
from prospect_core.server import errors
from prospect_core.server.chat import Completion, render
from prospect_core.server.errors import APIError
from prospect_core.server.images import image_url_of, load_image
from prospect_core.server.schemas import ChatRequest, FramesRequest, SessionCreate, SessionMessage
from prospect_core.server.sessions import SessionStore


@dataclass
class ServerLimits:
    max_sessions: int = 16
    max_cache_mb: float = 2048
    session_ttl_s: float = 600
    session_max_seq_len: int = 4096
    max_body_mb: float = 32
    max_image_mb: float = 16
    max_image_pixels: int = 4096 * 4096
    max_tokens: int = 1024
    max_frames_per_request: int = 64
    allow_local_images: str | None = None


class BodyLimit:
    """Refuses bodies over the limit with 413, whether or not the client sent Content-Length."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        # Read the body here, so an over-long one is refused before the app parses any of it.
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await self._refuse(send)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnect notices, as the server sends them

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        body = json.dumps(errors.error_body(413, f"request body exceeds the limit of {self.limit} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(engine, limits: ServerLimits | None = None, model_id: str | None = None) -> FastAPI:
    limits = limits or ServerLimits()
    model_id = model_id or engine.path.name
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prospect-engine")
    store = SessionStore(engine, limits.max_sessions, int(limits.max_cache_mb * 2**20), limits.session_ttl_s,
                         min(limits.session_max_seq_len, engine.backend.max_position_embeddings))
    preprocess = FramePreprocessor(engine.processor)
    local_dir = Path(limits.allow_local_images).resolve() if limits.allow_local_images else None
    started = time.time()

    async def on_engine(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def images(pairs):
        """[(param, url)] -> [(param, array)], decoded off the event loop; 400 on the first bad one."""
        def decode():
            return [(p, load_image(u, p, int(limits.max_image_mb * 2**20), limits.max_image_pixels, local_dir))
                    for p, u in pairs]
        return await run_in_threadpool(decode)

    async def expire_idle():
        while True:
            await asyncio.sleep(max(0.05, min(limits.session_ttl_s / 4, 5.0)))
            store.expire()

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(expire_idle())
        yield
        task.cancel()
        pool.shutdown(wait=True)

    app = FastAPI(title="prospect", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=int(limits.max_body_mb * 2**20))
    errors.install(app)
    app.state.engine, app.state.sessions, app.state.limits = engine, store, limits

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "model_loaded": True, "backend": engine.backend.name,
                "device": str(engine.device), "dtype": engine.dtype, "uptime_s": round(time.time() - started, 3),
                "sessions": len(store.sessions), "cache_bytes_used": store.used_bytes}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": int(started),
                                            "owned_by": "prospect"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        text, pairs = render(req.messages, engine.backend.image_seq_len)
        imgs = await images(pairs)
        job = await on_engine(Completion, engine, preprocess, req, text, imgs, limits.max_tokens)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = lambda n: {"prompt_tokens": job.prompt_tokens, "completion_tokens": n,  # noqa: E731
                           "total_tokens": job.prompt_tokens + n}
        if not req.stream:
            text, finish, n = await on_engine(job.run)
            return {"id": cid, "object": "chat.completion", "created": created, "model": model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish, "logprobs": None}],
                    "usage": usage(n)}
        return StreamingResponse(_sse(job, cid, created, usage, req, request), media_type="text/event-stream")

    async def _sse(job, cid, created, usage, req, request):
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        gone = False

        def chunk(delta=None, finish=None, **extra):
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish,
                                                  "logprobs": None}]
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                    "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        run = loop.run_in_executor(pool, lambda: job.run(lambda d: loop.call_soon_threadsafe(queue.put_nowait, d),
                                                         lambda: gone))
        run.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        try:
            yield chunk({"role": "assistant", "content": ""})
            while (piece := await queue.get()) is not None:
                yield chunk({"content": piece})
            text, finish, n = await run
            yield chunk({}, finish)
            if req.stream_options is not None and req.stream_options.include_usage:
                yield chunk(usage=usage(n))
            yield "data: [DONE]\n\n"
        finally:
            gone = True  # a client that hung up stops the decode at the next token

    # ---- sessions ------------------------------------------------------------------------------
    @app.post("/v1/sessions")
    async def create_session(body: SessionCreate | None = None):
        body = body or SessionCreate()
        n = store.session_len(body)
        nbytes = store.reserve(n)
        try:
            runner = await on_engine(store.build, body, n)
        except (ValueError, TypeError) as e:
            store.release(nbytes)
            raise APIError(400, f"session: {e}", "context_strategy_config") from None
        except BaseException:
            store.release(nbytes)
            raise
        s = store.add(runner, nbytes)
        return {"id": s.id, "object": "session", "created": int(s.created), "context_strategy": runner.strategy.config(),
                "talk_policy": runner.talk_policy, "capacity": runner.cache.capacity}

    async def in_session(sid, fn, *args):
        s = store.get(sid)
        async with s.lock:
            store.get(sid)  # deleted while this request waited
            try:
                return await on_engine(fn, *args)
            except (ValueError, TypeError) as e:
                field = re.match(r"^([\w\[\]\.]+): ", str(e))  # our messages start with the argument's name
                raise APIError(400, str(e), field.group(1) if field else None) from None
            finally:
                s.last_used = time.time()

    @app.post("/v1/sessions/{sid}/frames")
    async def frames(sid: str, body: FramesRequest):
        s = store.get(sid)
        if len(body.frames) > limits.max_frames_per_request:
            raise APIError(400, f"frames: expected at most {limits.max_frames_per_request} frames per request, "
                                f"got {len(body.frames)}", "frames")
        last = None
        for k, f in enumerate(body.frames):
            if last is not None and f.time < last:
                raise APIError(400, f"frames[{k}].time: expected times in order, got {f.time} after {last}",
                               f"frames[{k}].time")
            last = f.time
        imgs = await images([(f"frames[{k}].image_url", image_url_of(f.image_url)) for k, f in enumerate(body.frames)])
        return {"results": await in_session(sid, s.add_frames, [(f.time, img) for f, (_, img) in
                                                                 zip(body.frames, imgs)])}

    @app.post("/v1/sessions/{sid}/messages")
    async def messages(sid: str, body: SessionMessage):
        s = store.get(sid)
        if body.max_tokens is not None and body.max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens: expected at most {limits.max_tokens} (the server's limit), got "
                                f"{body.max_tokens}", "max_tokens")
        return await in_session(sid, s.add_message, body.content, body.respond, body.max_tokens)

    @app.get("/v1/sessions/{sid}")
    async def session_info(sid: str):
        s = store.get(sid)
        async with s.lock:
            return s.info()

    @app.delete("/v1/sessions/{sid}")
    async def delete_session(sid: str):
        s = store.get(sid)
        async with s.lock:  # after the requests already queued for it
            store.remove(sid)
        return {"id": sid, "object": "session.deleted", "deleted": True}

    return app
