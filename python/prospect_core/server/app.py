"""The HTTP routes: OpenAI chat completions plus stateful video sessions, over one engine.

Model work runs on one engine thread, in the order requests reach it; the event loop only
parses, decodes images and streams bytes.
"""

import asyncio
import json
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse

from prospect_core.frames import FramePreprocessor
from prospect_core.server import errors
from prospect_core.server.access import Access, caller_check, site_check
from prospect_core.server.chat import Completion, render
from prospect_core.server.errors import APIError
from prospect_core.server.images import image_url_of, load_images
from prospect_core.server.middleware import BodyLimit, Guard
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
    max_request_pixels: int = 64 * 2**20  # a request's images together, decoded: about 200 MB as RGB
    max_images_per_request: int = 16  # chat completions; frames have their own limit
    max_frames_per_request: int = 64
    max_text_chars: int = 100_000  # a request's text, counted before the engine thread tokenizes it
    max_tokens: int = 1024
    allow_local_images: str | None = None
    read_timeout_s: float = 15  # to receive each whole request, headers and body
    keep_alive_s: float = 5  # an idle connection between requests
    max_connections: int = 64  # open at once; past it, new requests get 503


def check_text(limit, texts):
    """texts: [(param, text)]. Refuses a request whose text together exceeds `limit` characters, naming its
    longest field, before any of it reaches the tokenizer on the engine thread."""
    total = sum(len(t) for _, t in texts)
    if total > limit:
        param = max(texts, key=lambda x: len(x[1]))[0]
        raise APIError(400, f"{param}: expected at most {limit} characters of text per request, got {total}", param)


async def finish_unless_gone(work, request: Request, gone: threading.Event):
    """Awaits the engine's work; a client that hangs up first sets `gone`, which stops the work at its next
    token, so an abandoned request does not hold the engine thread."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=0.1)
        if done:
            return work.result()
        if not gone.is_set() and await request.is_disconnected():
            gone.set()


def create_app(engine, limits: ServerLimits | None = None, model_id: str | None = None,
               access: Access | None = None) -> FastAPI:
    limits, access = limits or ServerLimits(), access or Access()
    model_id = model_id or engine.path.name
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prospect-engine")
    store = SessionStore(engine, limits.max_sessions, int(limits.max_cache_mb * 2**20), limits.session_ttl_s,
                         min(limits.session_max_seq_len, engine.backend.max_position_embeddings), limits.max_tokens)
    preprocess = FramePreprocessor(engine.processor)
    local_dir = Path(limits.allow_local_images).resolve() if limits.allow_local_images else None
    started = time.time()

    async def on_engine(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def images(pairs, where):
        """[(param, url)] -> [(param, array)], decoded off the event loop; 400 on the first bad one."""
        return await run_in_threadpool(load_images, pairs, where, int(limits.max_image_mb * 2**20),
                                       limits.max_image_pixels, limits.max_request_pixels, local_dir)

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
    # The last added runs first: unexpected errors, Host and Origin, CORS for allowed origins (a preflight
    # carries no key), the API key and content type, the body limit.
    app.add_middleware(BodyLimit, limit=int(limits.max_body_mb * 2**20))
    app.add_middleware(Guard, check=caller_check(access))
    if access.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(access.allowed_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["authorization", "content-type"])
    app.add_middleware(Guard, check=site_check(access))
    app.add_middleware(errors.CatchAll)
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
        check_text(limits.max_text_chars, req.texts())
        text, pairs = render(req.messages, engine.backend.image_seq_len)
        if len(pairs) > limits.max_images_per_request:
            raise APIError(400, f"messages: expected at most {limits.max_images_per_request} images per request, "
                                f"got {len(pairs)}", "messages")
        imgs = await images(pairs, "messages")
        job = await on_engine(Completion, engine, preprocess, req, text, imgs, limits.max_tokens)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = lambda n: {"prompt_tokens": job.prompt_tokens, "completion_tokens": n,  # noqa: E731
                           "total_tokens": job.prompt_tokens + n}
        if not req.stream:
            gone = threading.Event()
            work = asyncio.ensure_future(on_engine(job.run, None, gone.is_set))
            text, finish, n = await finish_unless_gone(work, request, gone)
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
        check_text(limits.max_text_chars, body.texts())
        if body.max_new_tokens is not None and body.max_new_tokens > limits.max_tokens:
            raise APIError(400, f"max_new_tokens: expected at most {limits.max_tokens} (the server's limit), got "
                                f"{body.max_new_tokens}", "max_new_tokens")
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
        return {"id": s.id, "object": "session", "created": int(s.created),
                "context_strategy": runner.strategy.config(), "talk_policy": runner.talk_policy,
                "capacity": runner.cache.capacity}

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
        imgs = await images([(f"frames[{k}].image_url", image_url_of(f.image_url)) for k, f in enumerate(body.frames)],
                            "frames")
        return {"results": await in_session(sid, s.add_frames, [(f.time, img) for f, (_, img) in
                                                                 zip(body.frames, imgs)])}

    @app.post("/v1/sessions/{sid}/messages")
    async def messages(sid: str, body: SessionMessage):
        s = store.get(sid)
        check_text(limits.max_text_chars, body.texts())
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
