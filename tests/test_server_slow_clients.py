"""Nobody holds the engine thread or a connection for long: text is capped before it is tokenized, a
client that hangs up stops its generation, and slow or silent connections are closed."""

import select
import socket
import time

import httpx
import pytest

from prospect_core.engine import Engine
from prospect_core.server import ServerLimits, start_in_thread

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(engine):
    srv = start_in_thread(engine, limits=ServerLimits(read_timeout_s=0.5))
    yield srv
    srv.stop()


@pytest.fixture
def tokenized(engine, monkeypatch):
    """Texts the engine tokenized while the test ran."""
    seen, ids = [], engine.ids

    def counting(text):
        seen.append(len(text))
        return ids(text)

    monkeypatch.setattr(engine, "ids", counting)
    return seen


BIG = "lorem ipsum " * 250_000  # 3 MB


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": BIG}]}, "messages[0].content"),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": BIG}]},
                ]
            },
            "messages[1].content[0].text",
        ),
        ("/v1/sessions", {"knowledge": BIG}, "knowledge"),
        ("/v1/sessions", {"system_prompt": BIG}, "system_prompt"),
    ],
    ids=["prompt", "text part", "knowledge", "system prompt"],
)
def test_huge_text_is_refused_before_the_engine(server, tokenized, path, body, param):
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and f"expected at most {ServerLimits().max_text_chars} characters" in err["message"]
    assert tokenized == []


def test_huge_session_message_is_refused_before_the_engine(server, tokenized):
    sid = httpx.post(server.url + "/v1/sessions", json={}).json()["id"]
    tokenized.clear()
    r = httpx.post(f"{server.url}/v1/sessions/{sid}/messages", json={"content": BIG}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "content", r.text
    assert tokenized == []


def test_oversized_body_keeps_the_connection(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/v1/chat/completions", content=b"x" * (33 * 2**20), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]["message"]
        assert http.get("/health").status_code == 200


class SlowBackend:
    """The engine's backend with no stop token and 2 ms per token; records (asked, made) for each generation."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, embeds, cache, sampling, stop_token_ids, on_token=None, **kw):
        def slow(tok):
            time.sleep(0.002)
            return on_token(tok) if on_token else True

        r = self.inner.generate(embeds, cache, sampling, [], on_token=slow, **kw)
        self.calls.append((sampling.max_new_tokens, len(r.tokens)))
        return r


@pytest.fixture(scope="module")
def slow(tiny_model):
    engine = Engine(tiny_model)
    engine.backend = SlowBackend(engine.backend)
    srv = start_in_thread(engine, limits=ServerLimits(read_timeout_s=0.5))
    yield srv, engine.backend
    srv.stop()


def test_a_client_that_hangs_up_stops_its_generation(slow):
    srv, backend = slow
    backend.calls.clear()
    with httpx.Client(base_url=srv.url, timeout=httpx.Timeout(60, read=0.5)) as gone:
        with pytest.raises(httpx.ReadTimeout):  # gives up, and its connection closes with it
            gone.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 1000})
    r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    (asked, made), after = backend.calls
    assert asked == 1000 and made < 1000  # stopped when its client left, before the next request ran
    assert after == (2, 2)


def test_a_long_answer_is_not_cut(slow):
    """The read timeout is for receiving a request, not for answering it: 300 tokens take over 0.6 s."""
    srv, _ = slow
    r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 300}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 300


def closed_by_server(sock, trickle=b"", within=10.0):
    """Sends `trickle` a byte every 0.1 s; True once the server closes the connection."""
    deadline = time.monotonic() + within
    for i in range(10**6):
        if time.monotonic() > deadline:
            return False
        if i < len(trickle):
            try:
                sock.send(trickle[i : i + 1])
            except OSError:
                return True
        if select.select([sock], [], [], 0.1)[0]:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return True
            if data == b"":
                return True


def connect(server):
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)))


SLOW_HEADERS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200


def test_silent_connection_is_closed(server):
    with connect(server) as sock:
        assert closed_by_server(sock)


def test_slow_headers_are_closed(server):
    with connect(server) as sock:
        assert closed_by_server(sock, SLOW_HEADERS)


def test_slow_body_is_closed(server):
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"messages": '
        )
        assert closed_by_server(sock)


def test_slow_second_request_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200 OK" in sock.recv(65536)
        assert closed_by_server(sock, SLOW_HEADERS)
