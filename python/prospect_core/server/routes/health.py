"""GET /health and GET /v1/models."""

from typing import Any

from fastapi import APIRouter

from prospect_core.server.state import State

router = APIRouter()


@router.get("/health", response_model=None)
async def health(st: State) -> dict[str, Any]:
    engine = st.engine
    return {
        "status": "ok",
        "model": st.model_id,
        "model_loaded": True,
        "backend": engine.backend.name,
        "device": str(engine.device),
        "dtype": engine.dtype,
        "uptime_s": round(st.uptime_s(), 3),
        "sessions": len(st.store.sessions),
        "cache_bytes_used": st.store.used_bytes,
    }


@router.get("/v1/models", response_model=None)
async def models(st: State) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": st.model_id, "object": "model", "created": int(st.started), "owned_by": "prospect"}],
    }
