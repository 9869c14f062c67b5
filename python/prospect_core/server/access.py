"""Who may use the server: an optional API key, the Host names it answers to, and no cross-site browser calls.

A browser page on another site can send a simple request (a form or text/plain POST, no CORS preflight) to
a server on localhost, and a DNS-rebinding page can reach it under its own host name. So, before the app:
an Origin header not allowed is refused (403), a Host not allowed is refused (400), a body that is not
application/json is refused (415), and with an API key set, a request without it is refused (401).
"""

import hmac
from dataclasses import dataclass

from prospect_core.server.errors import APIError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass
class Access:
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # beyond LOCAL_HOSTS and the bound address; "*" allows any
    allowed_origins: tuple[str, ...] = ()  # browser origins (scheme://host[:port]) that may call the server


def host_name(value: str) -> str:
    """A Host header -> its name without port or IPv6 brackets, lower case: '[::1]:8080' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def site_check(access: Access):
    """Host and Origin: refused before anything else, CORS preflights included."""
    hosts = {host_name(h) for h in (*LOCAL_HOSTS, *access.allowed_hosts)}
    any_host = "*" in access.allowed_hosts
    origins = set(access.allowed_origins)

    def check(scope):
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not any_host and host_name(host) not in hosts:
            return APIError(
                400,
                f"Host: expected one of {', '.join(sorted(hosts))} (add names with "
                f"--allowed-hosts), got {host[:100]!r}",
                "Host",
                "host_not_allowed",
            )
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") not in origins:
            allowed = ", ".join(sorted(origins)) or "none"
            return APIError(
                403,
                f"Origin: browser requests from other sites are refused (allowed origins: "
                f"{allowed}; add with --allowed-origins), got {origin.decode('latin-1')[:100]!r}",
                "Origin",
                "origin_not_allowed",
            )
        return None

    return check


def _has_body(headers) -> bool:
    length = headers.get(b"content-length")
    return b"transfer-encoding" in headers or (length is not None and length.strip() not in (b"", b"0"))


def caller_check(access: Access):
    """The API key, then a JSON content type on any body."""
    key = access.api_key.encode() if access.api_key else None

    def check(scope):
        headers = dict(scope["headers"])
        if key is not None:
            scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), key):
                got = "none" if b"authorization" not in headers else "a different key"
                return APIError(
                    401,
                    f"Authorization: expected 'Bearer <api key>' with the key the server was started with, got {got}",
                    "Authorization",
                    "invalid_api_key",
                    headers=[(b"www-authenticate", b"Bearer")],
                )
        if scope["method"] in ("POST", "PUT", "PATCH") and _has_body(headers):
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                given = repr(ctype.decode("latin-1")[:100]) if ctype else "none"
                return APIError(
                    415,
                    f"Content-Type: expected application/json, got {given}",
                    "Content-Type",
                    "unsupported_media_type",
                )
        return None

    return check
