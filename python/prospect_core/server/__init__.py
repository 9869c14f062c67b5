"""`prospect serve`: an OpenAI-compatible HTTP server with stateful streaming video sessions."""

import threading

from prospect_core.server.app import ServerLimits, create_app

__all__ = ["ServerLimits", "create_app", "serve", "start_in_thread"]


def _uvicorn_server(app, host, port, log_level):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30))


def serve(engine, host="127.0.0.1", port=8080, limits=None, log_level="info"):
    """Serves until interrupted."""
    _uvicorn_server(create_app(engine, limits), host, port, log_level).run()


class RunningServer:
    def __init__(self, server, thread, app):
        self.server, self.thread, self.app = server, thread, app
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_in_thread(engine, host="127.0.0.1", port=0, limits=None, log_level="warning") -> RunningServer:
    """Starts the server on a background thread (port 0: any free port) and returns once it listens;
    for notebooks and tests. `.url`, `.app.state.sessions`, `.stop()`."""
    app = create_app(engine, limits)
    server = _uvicorn_server(app, host, port, log_level)
    thread = threading.Thread(target=server.run, name="prospect-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the server did not start on {host}:{port} (see the log above)")
        thread.join(timeout=0.02)
    return RunningServer(server, thread, app)
