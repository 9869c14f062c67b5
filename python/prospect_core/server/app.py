"""The HTTP app: OpenAI chat completions plus stateful video sessions, over one engine.

Model work runs on one engine thread, in the order requests reach it; the event loop only
parses, decodes images and streams bytes. The routes are in server/routes/, one router per concern.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from prospect_core.engine import Engine
from prospect_core.server import errors
from prospect_core.server.access import Access, caller_check, site_check
from prospect_core.server.middleware import BodyLimit, Guard
from prospect_core.server.routes import ROUTERS
from prospect_core.server.state import ServerLimits, ServerState

__all__ = ["ServerLimits", "create_app"]


def _add_middleware(app: FastAPI, limits: ServerLimits, access: Access) -> None:
    # The last added runs first: unexpected errors, Host and Origin, CORS for allowed origins (a preflight
    # carries no key), the API key and content type, the body limit.
    app.add_middleware(BodyLimit, limit=int(limits.max_body_mb * 2**20))
    app.add_middleware(Guard, check=caller_check(access))
    if access.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(access.allowed_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(Guard, check=site_check(access))
    app.add_middleware(errors.CatchAll)


def create_app(
    engine: Engine, limits: ServerLimits | None = None, model_id: str | None = None, access: Access | None = None
) -> FastAPI:
    limits, access = limits or ServerLimits(), access or Access()
    state = ServerState.create(engine, limits, model_id or engine.path.name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(state.expire_idle())
        yield
        task.cancel()
        state.pool.shutdown(wait=True)

    app = FastAPI(title="prospect", lifespan=lifespan)
    _add_middleware(app, limits, access)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.state.server = state
    app.state.engine, app.state.sessions, app.state.limits = engine, state.store, limits
    return app
