"""`prospect serve`: an OpenAI-compatible HTTP server with stateful streaming video sessions."""

import dataclasses
import threading

from prospect_core.server.access import Access
from prospect_core.server.app import ServerLimits, create_app
from prospect_core.server.connections import uvicorn_server

__all__ = ["Access", "ServerLimits", "create_app", "serve", "start_in_thread"]


def _with_host(access, host):
    """The address the server is bound to is one of the Host names it answers to."""
    access = access or Access()
    return dataclasses.replace(access, allowed_hosts=(*access.allowed_hosts, host))


def serve(engine, host="127.0.0.1", port=8080, limits=None, log_level="info", access=None):
    """Serves until interrupted."""
    limits = limits or ServerLimits()
    app = create_app(engine, limits, access=_with_host(access, host))
    uvicorn_server(app, host, port, log_level, limits).run()


class RunningServer:
    def __init__(self, server, thread, app):
        self.server, self.thread, self.app = server, thread, app
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_in_thread(engine, host="127.0.0.1", port=0, limits=None, log_level="warning", access=None) -> RunningServer:
    """Starts the server on a background thread (port 0: any free port) and returns once it listens;
    for notebooks and tests. `.url`, `.app.state.sessions`, `.stop()`."""
    limits = limits or ServerLimits()
    app = create_app(engine, limits, access=_with_host(access, host))
    server = uvicorn_server(app, host, port, log_level, limits)
    thread = threading.Thread(target=server.run, name="prospect-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port} (see the log above)")
        thread.join(timeout=0.02)
    return RunningServer(server, thread, app)
