"""The uvicorn server and its connection limits.

uvicorn closes a connection left idle after a response (timeout_keep_alive), but never one that opens and
then sends its request slowly or not at all (slowloris, idle sockets). Here every connection has
`read_timeout_s` to deliver each whole request, headers and body, counted from when it opened or from the
end of its last response.
"""

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024  # request line + headers; h11 answers 400 to more


class _ReadDeadline(H11Protocol):
    read_timeout_s = 15.0

    def connection_made(self, transport):
        self._deadline = None
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self):
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc):
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self):
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expire)

    def _expire(self):
        cycle = self.cycle
        # Still reading: no request since the last response, or one whose body has not all arrived.
        reading = cycle is None or cycle.response_complete or cycle.more_body
        if reading and not self.transport.is_closing():
            self.transport.close()  # connection_lost tells h11 and any request waiting on its body


def uvicorn_server(app, host, port, log_level, limits):
    protocol = type("ReadDeadlineH11", (_ReadDeadline,), {"read_timeout_s": float(limits.read_timeout_s)})
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            http=protocol,
            timeout_keep_alive=limits.keep_alive_s,
            limit_concurrency=limits.max_connections,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
    )
