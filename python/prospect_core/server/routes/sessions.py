"""/v1/sessions: stateful video sessions. Each request runs on the engine thread in its session's order."""

import re
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from prospect_core.server.errors import APIError
from prospect_core.server.images import image_url_of
from prospect_core.server.schemas import FramesRequest, SessionCreate, SessionMessage
from prospect_core.server.sessions import sampling_info
from prospect_core.server.state import ServerState, State

router = APIRouter()


def _check_max(value: int | None, limit: int, param: str) -> None:
    if value is not None and value > limit:
        raise APIError(400, f"{param}: expected at most {limit} (the server's limit), got {value}", param)


@router.post("/v1/sessions", response_model=None)
async def create_session(st: State, body: SessionCreate | None = None) -> dict[str, Any]:
    body = body or SessionCreate()
    st.check_text(body.texts())
    _check_max(body.max_new_tokens, st.limits.max_tokens, "max_new_tokens")
    store = st.store
    n = store.session_len(body)
    nbytes = store.reserve(n)
    try:
        runner = await st.on_engine(store.build, body, n)
    except (ValueError, TypeError) as e:
        store.release(nbytes)
        raise APIError(400, f"session: {e}", "context_strategy_config") from None
    except BaseException:
        store.release(nbytes)
        raise
    s = store.add(runner, nbytes)
    return {
        "id": s.id,
        "object": "session",
        "created": int(s.created),
        "context_strategy": runner.strategy.config(),
        "talk_policy": runner.talk_policy,
        "sampling": sampling_info(runner),
        "capacity": runner.cache.capacity,
    }


async def _in_session(st: ServerState, sid: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) on the engine thread, after the session's earlier requests; its ValueError or TypeError is a 400."""
    s = st.store.get(sid)
    async with s.lock:
        st.store.get(sid)  # deleted while this request waited
        try:
            return await st.on_engine(fn, *args)
        except (ValueError, TypeError) as e:
            field = re.match(r"^([\w\[\]\.]+): ", str(e))  # our messages start with the argument's name
            raise APIError(400, str(e), field.group(1) if field else None) from None
        finally:
            s.last_used = time.time()


@router.post("/v1/sessions/{sid}/frames", response_model=None)
async def add_frames(sid: str, body: FramesRequest, st: State) -> dict[str, Any]:
    s = st.store.get(sid)
    limit = st.limits.max_frames_per_request
    if len(body.frames) > limit:
        raise APIError(400, f"frames: expected at most {limit} frames per request, got {len(body.frames)}", "frames")
    last = None
    for k, f in enumerate(body.frames):
        if last is not None and f.time < last:
            raise APIError(
                400, f"frames[{k}].time: expected times in order, got {f.time} after {last}", f"frames[{k}].time"
            )
        last = f.time
    imgs = await st.images(
        [(f"frames[{k}].image_url", image_url_of(f.image_url)) for k, f in enumerate(body.frames)], "frames"
    )
    timed = [(f.time, img) for f, (_, img) in zip(body.frames, imgs)]
    return {"results": await _in_session(st, sid, s.add_frames, timed)}


@router.post("/v1/sessions/{sid}/messages", response_model=None)
async def add_message(sid: str, body: SessionMessage, st: State) -> dict[str, Any]:
    s = st.store.get(sid)
    st.check_text(body.texts())
    _check_max(body.max_tokens, st.limits.max_tokens, "max_tokens")
    return await _in_session(st, sid, s.add_message, body.content, body.respond, body.max_tokens)


@router.get("/v1/sessions/{sid}", response_model=None)
async def session_info(sid: str, st: State) -> dict[str, Any]:
    s = st.store.get(sid)
    async with s.lock:
        return s.info()


@router.delete("/v1/sessions/{sid}", response_model=None)
async def delete_session(sid: str, st: State) -> dict[str, Any]:
    s = st.store.get(sid)
    async with s.lock:  # after the requests already queued for it
        st.store.remove(sid)
    return {"id": sid, "object": "session.deleted", "deleted": True}
