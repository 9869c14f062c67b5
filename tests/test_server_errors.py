"""Every limit and every kind of bad request gets a 4xx with an OpenAI-style error body naming what
was wrong; the server stays up and the session a bad request aimed at is unchanged."""

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from prospect_core.engine import Engine
from prospect_core.server import ServerLimits, start_in_thread


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def url_of(data):
    return "data:image/png;base64," + base64.b64encode(data).decode()


SMALL = url_of(png(np.full((40, 40, 3), 120, np.uint8)))
WIDE = url_of(png(np.full((300, 300, 3), 120, np.uint8)))  # few bytes, too many pixels
NOISY = url_of(png((np.random.default_rng(0).random((100, 100, 3)) * 255).astype(np.uint8)))  # ~30 KB
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    (allowed / "ok.png").write_bytes(png(np.full((40, 40, 3), 90, np.uint8)))
    outside = tmp_path_factory.mktemp("outside") / "no.png"
    outside.write_bytes(png(np.full((40, 40, 3), 90, np.uint8)))
    limits = ServerLimits(
        max_body_mb=0.05,
        max_image_mb=0.01,
        max_image_pixels=200 * 200,
        max_tokens=64,
        max_frames_per_request=3,
        allow_local_images=str(allowed),
    )
    srv = start_in_thread(Engine(tiny_model), limits=limits)
    http = httpx.Client(base_url=srv.url, timeout=60)
    sid = http.post("/v1/sessions", json={"talk_policy": "every_frame", "max_new_tokens": 2}).json()["id"]
    assert (
        http.post(f"/v1/sessions/{sid}/frames", json={"frames": [{"time": 5.0, "image_url": SMALL}]}).status_code == 200
    )
    yield {"http": http, "sid": sid, "allowed": allowed, "outside": outside, "server": srv}
    http.close()
    srv.stop()


def chat(**kw):
    return ("POST", "/v1/chat/completions", {"messages": USER, **kw})


def image_msg(url):
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}],
        }
    ]


CASES = [
    # name, (method, path, json body or raw bytes), status, text the message must contain, param
    ("malformed json", ("POST", "/v1/chat/completions", b'{"messages": ['), 400, "malformed JSON", None),
    ("body not an object", ("POST", "/v1/chat/completions", [1, 2]), 400, "JSON object", None),
    ("unknown field", chat(frequency_boost=1), 400, "unknown field 'frequency_boost'", "frequency_boost"),
    (
        "missing messages",
        ("POST", "/v1/chat/completions", {"max_tokens": 3}),
        400,
        "missing field 'messages'",
        "messages",
    ),
    ("empty messages", ("POST", "/v1/chat/completions", {"messages": []}), 400, "at least 1", "messages"),
    ("temperature type", chat(temperature="hot"), 400, "temperature", "temperature"),
    ("temperature range", chat(temperature=3), 400, "less than or equal to 2", "temperature"),
    ("n > 1", chat(n=2), 400, "n:", "n"),
    ("max_tokens over cap", chat(max_tokens=65), 400, "at most 64", "max_tokens"),
    ("max_tokens zero", chat(max_tokens=0), 400, "greater than or equal to 1", "max_tokens"),
    ("too many stops", chat(stop=["a", "b", "c", "d", "e"]), 400, "at most 4", "stop"),
    (
        "unknown role",
        ("POST", "/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}),
        400,
        "role",
        "messages[0].role",
    ),
    (
        "remote image",
        chat(messages=image_msg("https://example.com/a.png")),
        400,
        "remote image URLs",
        "messages[0].content[0].image_url",
    ),
    (
        "bad base64",
        chat(messages=image_msg("data:image/png;base64,@@@@")),
        400,
        "base64",
        "messages[0].content[0].image_url",
    ),
    (
        "not an image",
        chat(messages=image_msg(url_of(b"GIF89a-not-really"))),
        400,
        "not a decodable image",
        "messages[0].content[0].image_url",
    ),
    (
        "not a data url",
        chat(messages=image_msg("data:text/plain,hello")),
        400,
        "data:image",
        "messages[0].content[0].image_url",
    ),
    ("image pixels", chat(messages=image_msg(WIDE)), 400, "300x300 pixels exceeds", "messages[0].content[0].image_url"),
    ("image bytes", chat(messages=image_msg(NOISY)), 400, "bytes exceeds", "messages[0].content[0].image_url"),
    ("body too large", chat(pad="x" * 60000), 413, "exceeds the limit", None),
    (
        "unknown session",
        ("POST", "/v1/sessions/nope/frames", {"frames": [{"time": 9, "image_url": SMALL}]}),
        404,
        "no session 'nope'",
        "session_id",
    ),
    (
        "frame time negative",
        ("POST", "/v1/sessions/{sid}/frames", {"frames": [{"time": -1, "image_url": SMALL}]}),
        400,
        "greater than or equal to 0",
        "frames[0].time",
    ),
    (
        "frames out of order",
        (
            "POST",
            "/v1/sessions/{sid}/frames",
            {"frames": [{"time": 9, "image_url": SMALL}, {"time": 8, "image_url": SMALL}]},
        ),
        400,
        "in order",
        "frames[1].time",
    ),
    (
        "frame before the last",
        ("POST", "/v1/sessions/{sid}/frames", {"frames": [{"time": 1, "image_url": SMALL}]}),
        400,
        "last frame time 5.0",
        "frames[0].time",
    ),
    (
        "too many frames",
        ("POST", "/v1/sessions/{sid}/frames", {"frames": [{"time": 9, "image_url": SMALL}] * 4}),
        400,
        "at most 3 frames",
        "frames",
    ),
    ("no frames", ("POST", "/v1/sessions/{sid}/frames", {"frames": []}), 400, "at least 1", "frames"),
    (
        "bad frame image",
        (
            "POST",
            "/v1/sessions/{sid}/frames",
            {"frames": [{"time": 9, "image_url": SMALL}, {"time": 10, "image_url": "data:image/png;base64,AAAA"}]},
        ),
        400,
        "not a decodable image",
        "frames[1].image_url",
    ),
    (
        "frame image url object",
        ("POST", "/v1/sessions/{sid}/frames", {"frames": [{"time": 9, "image_url": {"url": WIDE}}]}),
        400,
        "exceeds",
        "frames[0].image_url",
    ),
    ("empty message", ("POST", "/v1/sessions/{sid}/messages", {"content": ""}), 400, "at least 1", "content"),
    (
        "message max_tokens",
        ("POST", "/v1/sessions/{sid}/messages", {"content": "hi", "respond": True, "max_tokens": 100}),
        400,
        "at most 64",
        "max_tokens",
    ),
    (
        "message unknown field",
        ("POST", "/v1/sessions/{sid}/messages", {"content": "hi", "role": "user"}),
        400,
        "unknown field 'role'",
        "role",
    ),
    (
        "unknown strategy",
        ("POST", "/v1/sessions", {"context_strategy": "drop_some"}),
        400,
        "drop_some",
        "context_strategy_config",
    ),
    ("bad talk policy", ("POST", "/v1/sessions", {"talk_policy": "annotations"}), 400, "talk_policy", "talk_policy"),
    (
        "bad strategy key",
        ("POST", "/v1/sessions", {"context_strategy_config": {"keep_it": 1}}),
        400,
        "unknown config keys",
        "context_strategy_config",
    ),
    (
        "tiny context",
        ("POST", "/v1/sessions", {"context_strategy_config": {"max_seq_len": 10}}),
        400,
        "expected an int in [64",
        "context_strategy_config.max_seq_len",
    ),
    # Inputs that once reached the engine and failed there with a 500 (which also dropped the connection).
    ("seed negative", chat(seed=-1, temperature=1), 400, "greater than or equal to 0", "seed"),
    ("seed over 64 bits", chat(seed=2**64, temperature=1), 400, "less than 18446744073709551616", "seed"),
    (
        "temperature NaN",
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        400,
        "finite number",
        "temperature",
    ),
    (
        "lone surrogate",
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}'),
        400,
        "lone surrogate",
        "messages[0].content",
    ),
    (
        "lone surrogate in a part",
        (
            "POST",
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
        ),
        400,
        "lone surrogate",
        "messages[0].content[0].text",
    ),
    (
        "lone surrogate in a note",
        ("POST", "/v1/sessions/{sid}/messages", b'{"content": "\\ud83d"}'),
        400,
        "lone surrogate",
        "content",
    ),
    (
        "lone surrogate in knowledge",
        ("POST", "/v1/sessions", b'{"knowledge": "\\udc00"}'),
        400,
        "lone surrogate",
        "knowledge",
    ),
    (
        "NUL in a local path",
        chat(messages=image_msg("ok\u0000.png")),
        400,
        "NUL character",
        "messages[0].content[0].image_url",
    ),
    (
        "frame time infinite",
        (
            "POST",
            "/v1/sessions/{sid}/frames",
            b'{"frames": [{"time": Infinity, "image_url": "' + SMALL.encode() + b'"}]}',
        ),
        400,
        "finite number",
        "frames[0].time",
    ),
    (
        "frame time huge",
        ("POST", "/v1/sessions/{sid}/frames", {"frames": [{"time": 1e308, "image_url": SMALL}]}),
        400,
        "less than or equal to 10000000",
        "frames[0].time",
    ),
    (
        "session max_new_tokens over cap",
        ("POST", "/v1/sessions", {"max_new_tokens": 65}),
        400,
        "at most 64",
        "max_new_tokens",
    ),
    ("unknown route", ("POST", "/v1/completions", {"prompt": "x"}), 404, "no route", None),
    ("wrong method", ("GET", "/v1/chat/completions", None), 405, "not allowed", None),
]


@pytest.mark.parametrize("name,request_,status,text,param", CASES, ids=[c[0] for c in CASES])
def test_bad_request(setup, name, request_, status, text, param):
    http, sid = setup["http"], setup["sid"]
    before = http.get(f"/v1/sessions/{sid}").json()
    method, path, body = request_
    path = path.format(sid=sid)
    if isinstance(body, bytes):
        r = http.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        r = http.request(method, path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert text in err["message"] and err["type"] and "Traceback" not in r.text
    assert err["param"] == param
    after = http.get(f"/v1/sessions/{sid}").json()
    assert after["cache_length"] == before["cache_length"] and after["frames"] == before["frames"]
    ok = http.get("/health")
    assert ok.json()["status"] == "ok"
    assert local_port(ok) == local_port(r)  # on the same keep-alive connection: an error never drops it


def local_port(response):
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_unexpected_error_is_a_json_500_on_a_live_connection(setup):
    http, sid = setup["http"], setup["sid"]
    session = setup["server"].app.state.sessions.get(sid)

    def broken(*args):
        raise RuntimeError("a bug")

    session.add_message = broken
    try:
        r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"})
    finally:
        del session.add_message
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in r.json()["error"]["message"] and "a bug" not in r.text  # the log has the details
    ok = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi again"})
    assert ok.status_code == 200 and local_port(ok) == local_port(r)


def test_near_zero_temperature_is_greedy(setup):
    """1e-320 once made the sampler divide by zero (500); below 0.001 sampling is greedy in all but name."""
    http = setup["http"]
    replies = [
        http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 8, "temperature": t, "seed": 1})
        for t in (1e-320, 1e-4, 0)
    ]
    assert [r.status_code for r in replies] == [200] * 3, replies[0].text
    assert len({r.json()["choices"][0]["message"]["content"] for r in replies}) == 1


def test_body_limit_without_content_length(setup):
    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"x" * 10000
        yield b'"}]}'

    r = setup["http"].post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]["message"]


def test_local_images_only_under_the_allowed_dir(setup, tiny_model):
    http = setup["http"]
    ok = http.post(
        "/v1/chat/completions", json={"messages": image_msg(str(setup["allowed"] / "ok.png")), "max_tokens": 2}
    )
    assert ok.status_code == 200, ok.text
    for path in (str(setup["outside"]), str(setup["allowed"] / ".." / setup["outside"].parent.name / "no.png")):
        r = http.post("/v1/chat/completions", json={"messages": image_msg(path), "max_tokens": 2})
        assert r.status_code == 400 and "outside the allowed directory" in r.json()["error"]["message"]
    srv = start_in_thread(Engine(tiny_model))  # the default: no local paths at all
    try:
        r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": image_msg(str(setup["allowed"] / "ok.png"))})
        assert r.status_code == 400 and "--allow-local-images" in r.json()["error"]["message"]
    finally:
        srv.stop()
