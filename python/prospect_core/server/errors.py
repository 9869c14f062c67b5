"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}, never a traceback."""

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("prospect.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_overloaded",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=()):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = list(headers)  # [(name, value)] as bytes, for the middleware that answers with it


def error_body(status, message, param=None, code=None):
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}}


def _encode(body) -> bytes:
    # ASCII JSON: a message quoting the client's text stays encodable even if that text held a lone surrogate.
    return json.dumps(body).encode()


class _ErrorResponse(JSONResponse):
    def render(self, content) -> bytes:
        return _encode(content)


def _response(status, message, param=None, code=None):
    return _ErrorResponse(error_body(status, message, param, code), status_code=status)


async def send_error(send, status, message, param=None, code=None, headers=()):
    """The same error body, sent from ASGI middleware (before or around the app)."""
    body = _encode(error_body(status, message, param, code))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


LONE_SURROGATE = "expected valid Unicode text, without a lone surrogate (a \\ud800-\\udfff escape missing its pair)"

_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "ImageURL", "TextPart", "ImagePart"}


def _loc(loc) -> str:
    """('body', 'frames', 0, 'time') -> 'frames[0].time'; pydantic's union and tag steps left out."""
    out, last = "", None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "body" and part != last and part not in _TYPE_NAMES and not any(c in part for c in "[]-"):
            out += ("." if out else "") + part
        last = part
    return out


def _validation_message(err) -> tuple[str, str]:
    param = _loc(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"malformed JSON body: {err.get('ctx', {}).get('error', err.get('msg'))}", None
    if kind == "extra_forbidden":
        return f"unknown field '{param}'", param
    if not param and kind in ("model_attributes_type", "dict_type", "model_type"):
        return "request body: expected a JSON object", None
    if kind == "missing":
        return f"missing field '{param}'" if param else "missing request body", param or None
    given = err.get("input")
    shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")  # pydantic's prefix on our own checks
    if kind == "string_unicode":  # pydantic's own check of a constrained string, worded as ours
        msg = LONE_SURROGATE
    return f"{param or 'body'}: {msg} (got {shown})", param or None


def install(app: FastAPI):
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        # The deepest first: of a union's failed branches, the one that got furthest says what was wrong.
        errors = sorted(e.errors(), key=lambda err: -len(err.get("loc", ())))
        message, param = _validation_message(errors[0]) if errors else ("invalid request", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _response(400, message, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"method {request.method} not allowed on {request.url.path}",
        }.get(e.status_code, str(e.detail))
        return _response(e.status_code, message)


class CatchAll:
    """Any unexpected exception becomes a JSON 500 here, inside Starlette's own error middleware, which would
    re-raise it after answering and so make uvicorn drop the keep-alive connection."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if not started:  # mid-response there is nothing to add: the server closes that connection
                await send_error(send, 500, f"internal error ({type(e).__name__}); the server log has the details")
