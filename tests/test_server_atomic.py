"""A refused request leaves its session exactly as it was (cache, spans, counters), and the session cap
holds when many creates arrive at once."""

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from prospect_core.server import ServerLimits, start_in_thread


def frame_url(seed):
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((40, 40, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(engine):
    srv = start_in_thread(engine, limits=ServerLimits(max_tokens=64))
    yield srv
    srv.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def state(http, sid):
    """Everything the session shows about itself, but the time it was last used."""
    info = http.get(f"/v1/sessions/{sid}").json()
    info.pop("last_used")
    return info


def add_frames(http, sid, times):
    r = http.post(
        f"/v1/sessions/{sid}/frames", json={"frames": [{"time": t, "image_url": frame_url(int(t * 10))} for t in times]}
    )
    assert r.status_code == 200, r.text
    return r.json()["results"]


@pytest.mark.parametrize("respond", [False, True])
def test_message_too_long_changes_nothing(http, respond):
    """The cache holds frames past its pinned anchor; an over-long message must not compress them away first."""
    sid = http.post(
        "/v1/sessions",
        json={
            "talk_policy": "every_frame",
            "max_new_tokens": 4,
            "context_strategy_config": {"max_seq_len": 256, "last_keep_len": 64},
        },
    ).json()["id"]
    add_frames(http, sid, [0.5, 1.0])
    before = state(http, sid)
    assert len(before["spans"]) > 1 and before["cache_length"] > before["spans"][0]["end"]
    r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "word " * 400, "respond": respond})
    assert r.status_code == 400, r.text
    assert state(http, sid) == before
    err = r.json()["error"]
    assert err["param"] == "content" and "expected a message of at most" in err["message"]
    fits = http.post(f"/v1/sessions/{sid}/messages", json={"content": "A short one.", "respond": respond})
    assert fits.status_code == 200, fits.text


def test_frame_that_cannot_fit_is_refused_by_name(http):
    """A pinned anchor (system prompt + knowledge) that leaves no room for a frame."""
    sid = http.post(
        "/v1/sessions",
        json={"knowledge": "Step one. " * 13, "max_new_tokens": 4, "context_strategy_config": {"max_seq_len": 192}},
    ).json()["id"]
    before = state(http, sid)
    r = http.post(f"/v1/sessions/{sid}/frames", json={"frames": [{"time": 1.0, "image_url": frame_url(1)}]})
    assert r.status_code == 400 and state(http, sid) == before
    assert r.json()["error"]["param"] == "frames[0]" and "expected a frame of at most" in r.text


def test_huge_frame_time_does_not_poison_the_session(http):
    sid = http.post("/v1/sessions", json={"max_new_tokens": 2}).json()["id"]
    add_frames(http, sid, [1.0])
    r = http.post(f"/v1/sessions/{sid}/frames", json={"frames": [{"time": 1e308, "image_url": frame_url(2)}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "frames[0].time", r.text
    assert [x["time"] for x in add_frames(http, sid, [2.0])] == [2.0]  # later frames still go in
    assert state(http, sid)["frames"] == 2


def test_concurrent_creates_never_exceed_max_sessions(engine):
    srv = start_in_thread(engine, limits=ServerLimits(max_sessions=3))
    try:
        store = srv.app.state.sessions
        build = store.build

        def slow_build(*args):  # a wider window between the cap check and the session's arrival
            time.sleep(0.1)
            return build(*args)

        store.build = slow_build
        start = threading.Barrier(20)

        def create(_):
            start.wait()
            return httpx.post(srv.url + "/v1/sessions", json={}, timeout=120)

        with ThreadPoolExecutor(20) as pool:
            codes = [r.status_code for r in pool.map(create, range(20))]
        assert codes.count(200) == 3 and codes.count(429) == 17, codes
        assert len(store.sessions) == 3
        sid = next(iter(store.sessions))
        assert httpx.delete(f"{srv.url}/v1/sessions/{sid}").status_code == 200
        assert httpx.post(srv.url + "/v1/sessions", json={}).status_code == 200  # a freed slot is reusable
        assert httpx.post(srv.url + "/v1/sessions", json={}).status_code == 429
    finally:
        srv.stop()
