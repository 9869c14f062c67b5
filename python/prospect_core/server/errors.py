"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}, never a traceback."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("prospect.server")

_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "server_overloaded"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status, message, param=None, code=None):
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def _response(status, message, param=None, code=None):
    return JSONResponse(error_body(status, message, param, code), status_code=status)


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
    return f"{param or 'body'}: {err.get('msg', 'invalid value')} (got {shown})", param or None


def install(app: FastAPI):
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return _response(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        errors = e.errors()
        message, param = _validation_message(errors[0]) if errors else ("invalid request", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _response(400, message, param)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return _response(e.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _response(500, f"internal error ({type(e).__name__}); the server log has the details")
