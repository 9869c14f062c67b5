"""ASGI middleware that refuses a request before the app parses any of it."""

from prospect_core.server.errors import APIError, send_error


class Guard:
    """Answers with the APIError that check(scope) returns, if any; otherwise passes the request on."""

    def __init__(self, app, check):
        self.app, self.check = app, check

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused: APIError | None = self.check(scope)
            if refused is not None:
                return await send_error(
                    send, refused.status, refused.message, refused.param, refused.code, refused.headers
                )
        await self.app(scope, receive, send)


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
        await send_error(send, 413, f"request body exceeds the limit of {self.limit} bytes")
