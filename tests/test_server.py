"""The HTTP server, started for real on a loopback port: the official openai client for chat
completions, plain HTTP for sessions, and the session objects read in-process for memory."""

import base64
import io
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image

from prospect_core.config import SamplingParams
from prospect_core.frames import FramePreprocessor
from prospect_core.server import ServerLimits, start_in_thread

EOU = "<end_of_utterance>"


def image(seed, w=72, h=48):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def data_url(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


@contextmanager
def running(engine, **limits):
    srv = start_in_thread(engine, limits=ServerLimits(**limits))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def server(engine):
    with running(engine) as srv:
        yield srv


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def reference(engine, text, max_tokens, features=None):
    """Greedy reply of the engine itself to a prompt written out by hand."""
    ids = engine.ids(text)
    cache = engine.backend.make_cache(ids.shape[1] + max_tokens)
    greedy = SamplingParams(max_new_tokens=max_tokens)
    r = engine.backend.generate(engine.backend.embed(ids, features), cache, greedy, [engine.eou_id])
    return engine.tokenizer.decode(r.tokens, skip_special_tokens=True).lstrip(), len(r.tokens), ids.shape[1]


# ---- OpenAI protocol -----------------------------------------------------------------------------


def test_health_and_models(http, engine):
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["model_loaded"] and h["device"] == "cpu" and h["uptime_s"] >= 0
    models = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == [engine.path.name]


def test_chat_completion_equals_the_engine(client, engine):
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}],
        max_tokens=12,
    )
    want, n, prompt_len = reference(
        engine, f"<|im_start|>System: Be brief.{EOU}\nUser: Say something.{EOU}\nAssistant:", 12
    )
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == prompt_len and r.usage.completion_tokens == n
    assert r.usage.total_tokens == prompt_len + n
    assert r.choices[0].finish_reason == ("length" if n == 12 else "stop")


def test_streaming_gives_the_same_text(client):
    msgs = [{"role": "user", "content": "Tell me more."}]
    whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16)
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # arrived in pieces


def test_image_as_data_url(client, engine):
    img = image(1)
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(img)}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10)
    pv, mask = FramePreprocessor(engine.processor)(img)[:2]
    feats = engine.backend.image_features(pv, mask)
    image_text = (
        "<fake_token_around_image><global-img>" + "<image>" * engine.backend.image_seq_len + "<fake_token_around_image>"
    )
    want, n, prompt_len = reference(engine, f"<|im_start|>User:{image_text}What is this?{EOU}\nAssistant:", 10, feats)
    assert r.choices[0].message.content == want and r.usage.prompt_tokens == prompt_len
    # Another picture, same words: the image reached the model.
    msgs[0]["content"][0]["image_url"]["url"] = data_url(image(2))
    other = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=10)
    assert other.usage.prompt_tokens == prompt_len
    pv2 = FramePreprocessor(engine.processor)(image(2))[0]
    assert not torch.equal(engine.backend.image_features(pv2), feats)


def test_stop_string_cuts_the_reply(client):
    msgs = [{"role": "user", "content": "Go on."}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24).choices[0].message.content
    assert len(full) > 6
    stop = full[3:6]
    cut = full[: full.index(stop)]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24, stop=[stop])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut


def test_sampling_follows_the_seed(client):
    msgs = [{"role": "user", "content": "Anything."}]
    a, b, c = (
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16, temperature=1.5, seed=s)
        .choices[0]
        .message.content
        for s in (7, 7, 8)
    )
    assert a == b and a != c


# ---- sessions -----------------------------------------------------------------------------------


def new_session(http, **body):
    r = http.post("/v1/sessions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def frames(http, sid, times, seed=0):
    r = http.post(
        f"/v1/sessions/{sid}/frames",
        json={"frames": [{"time": t, "image_url": data_url(image(seed + k))} for k, t in enumerate(times)]},
    )
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_session_lifecycle(http, server):
    sid = new_session(http, context_strategy="drop_middle", talk_policy="every_frame")
    info = http.get(f"/v1/sessions/{sid}").json()
    assert [s["kind"] for s in info["spans"]] == ["system"] and info["spans"][0]["pinned"]
    res = frames(http, sid, [0.5, 1.0, 1.5])
    assert [r["time"] for r in res] == [0.5, 1.0, 1.5] and [r["frame_index"] for r in res] == [0, 1, 2]
    assert all(r["talked"] and isinstance(r["text"], str) for r in res)  # every_frame: always answers
    assert all(b["cache_length"] > a["cache_length"] for a, b in zip(res, res[1:]))  # the cache is kept
    said = http.post(f"/v1/sessions/{sid}/messages", json={"content": "What did you see?", "respond": True}).json()
    assert said["talked"] and said["cache_length"] > res[-1]["cache_length"]
    quiet = http.post(f"/v1/sessions/{sid}/messages", json={"content": "Thanks."}).json()
    assert quiet["text"] is None and not quiet["talked"]
    info = http.get(f"/v1/sessions/{sid}").json()
    assert info["frames"] == 3 and info["turns"] == 2 and info["cache_length"] == quiet["cache_length"]
    assert info["spans"][-1]["kind"] == "user" and sum(s["kind"] == "frame" for s in info["spans"]) == 3
    assert info["spans"][1]["kind"] == "frame"
    assert http.delete(f"/v1/sessions/{sid}").json()["deleted"]
    gone = http.get(f"/v1/sessions/{sid}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    assert sid not in server.app.state.sessions.sessions


class Recorder:
    """Wraps a backend: keeps, position by position, the embeddings the session's cache holds."""

    def __init__(self, inner):
        self.inner, self.rows = inner, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _put(self, start, embeds):
        kept = self.rows[:, :start] if self.rows is not None else embeds[:, :0]
        self.rows = torch.cat([kept, embeds], 1)

    def prefill(self, embeds, cache, kind, frame_index=None, extend=False):
        self._put(cache.length, embeds)
        return self.inner.prefill(embeds, cache, kind, frame_index)

    def generate(self, embeds, cache, sampling, stop_token_ids, **kw):
        start = cache.length
        r = self.inner.generate(embeds, cache, sampling, stop_token_ids, **kw)
        parts = [embeds]
        if r.tokens and kw.get("keep_generated_in_cache", True):
            parts.append(self.inner.embed(torch.tensor([r.tokens])))
        self._put(start, torch.cat(parts, 1))
        return r


def test_session_remembers_across_requests(http, server, engine):
    """The next turn's logits after many requests equal one prefill of the whole history."""
    store = server.app.state.sessions
    sid = new_session(
        http,
        context_strategy="drop_middle",
        talk_policy="every_frame",
        context_strategy_config={"max_seq_len": 4096},
        max_new_tokens=6,
    )
    sess = store.get(sid)
    rec = sess.runner.backend = Recorder(sess.runner.backend)
    rec._put(
        0, engine.backend.embed(engine.ids(f"<|im_start|>System: {sess.runner.system_prompt}{EOU}\n"))
    )  # the anchor prefilled at creation
    t = 0.0
    for k in range(6):
        frames(http, sid, [t + 0.5, t + 1.0], seed=10 * k)
        t += 1.0
        if k % 2 == 1:
            http.post(f"/v1/sessions/{sid}/messages", json={"content": f"Step {k}?", "respond": k == 3})
    info = http.get(f"/v1/sessions/{sid}").json()
    assert info["compressions"] == 0 and info["cache_length"] > 500

    got = sess.runner.next_reply_logits("What should I do now?")
    assert sess.runner.cache.length == info["cache_length"]  # read without changing the session
    history = rec.rows  # everything the cache held, then the new turn
    assert history.shape[1] > info["cache_length"]
    fresh = engine.backend.make_cache(history.shape[1])
    want = engine.backend.prefill(history, fresh, "user")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    other = store.get(new_session(http, context_strategy="drop_middle"))
    blank = other.runner.next_reply_logits("What should I do now?")
    assert (blank - got).abs().max() > 1e-2  # a fresh session has not seen the video


def _spans(cache):
    return [(s.id, len(s), s.pinned) for s in cache.spans]


def test_compression_keeps_what_drop_middle_says(http, server):
    keep = 200
    sid = new_session(
        http,
        context_strategy="drop_middle",
        talk_policy="every_frame",
        max_new_tokens=4,
        context_strategy_config={"max_seq_len": 768, "reserved_seq_len": 64, "last_keep_len": keep},
    )
    sess = server.app.state.sessions.get(sid)
    seen = []
    inner = sess.runner.strategy.handle_overflow

    def spy(cache, last_msg, **ctx):
        before = _spans(cache)
        out = inner(cache, last_msg, **ctx)
        seen.append((before, _spans(cache)))
        return out

    sess.runner.strategy.handle_overflow = spy
    http.post(f"/v1/sessions/{sid}/messages", json={"content": "Help me fix the shelf."})  # the pinned anchor
    t = 0.0
    while not seen:
        t += 0.5
        res = frames(http, sid, [t], seed=int(t * 2))
        assert t < 60, "never compressed"
    assert res[0]["strategy_applied"] == "drop_middle"
    before, after = seen[0]
    suffix, budget = [], keep
    for span in reversed([s for s in before if not s[2]]):
        if span[1] > budget:
            break
        suffix.insert(0, span)
        budget -= span[1]
    want = [s for s in before if s[2] or s in suffix]
    assert after == want and sum(s[2] for s in after) == 2  # system prompt + first user turn
    got = [(s["id"], s["end"] - s["start"], s["pinned"]) for s in http.get(f"/v1/sessions/{sid}").json()["spans"]]
    assert got[: len(after)] == after


def test_summarize_and_drop_session(http, server):
    sid = new_session(
        http,
        context_strategy="summarize_and_drop",
        talk_policy="every_frame",
        max_new_tokens=4,
        context_strategy_config={"max_seq_len": 768, "reserved_seq_len": 64, "summary_max_length": 16},
    )
    t = 0.0
    while http.get(f"/v1/sessions/{sid}").json()["compressions"] == 0:
        t += 0.5
        frames(http, sid, [t], seed=int(t * 2))
        assert t < 60, "never compressed"
    info = http.get(f"/v1/sessions/{sid}").json()
    assert len(info["summaries"]) == 1 and isinstance(info["summaries"][0]["text"], str)
    assert [s["kind"] for s in info["spans"]][:2] == ["system", "summary"]
    assert all(s["pinned"] for s in info["spans"][:2])


def test_session_caps_and_expiry(engine):
    with running(engine, max_sessions=2, session_ttl_s=0.3) as srv, httpx.Client(base_url=srv.url) as http:
        a, b = new_session(http), new_session(http)
        full = http.post("/v1/sessions", json={})
        assert full.status_code == 429 and full.json()["error"]["code"] == "too_many_sessions"
        deadline = time.monotonic() + 30
        for sid in (a, b):  # idle past the TTL: expired (b was made later, so it may go a tick later)
            while http.get(f"/v1/sessions/{sid}").status_code != 404:
                assert time.monotonic() < deadline, "idle session never expired"
                time.sleep(0.1)
        new_session(http)
    per_token = engine.backend.make_cache(1).capacity_bytes()
    with running(engine, max_cache_mb=per_token * 1500 / 2**20) as srv, httpx.Client(base_url=srv.url) as http:
        new_session(http, context_strategy_config={"max_seq_len": 1024})
        full = http.post("/v1/sessions", json={"context_strategy_config": {"max_seq_len": 1024}})
        assert full.status_code == 503 and full.json()["error"]["code"] == "cache_memory_full"
        new_session(http, context_strategy_config={"max_seq_len": 256})  # a smaller one still fits


def test_serve_command_line(tiny_model):
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from server_load import free_port, spawn_server

    port = free_port()
    proc = spawn_server(
        tiny_model,
        port,
        "--api-key",
        "cli-key",
        "--allowed-hosts",
        "prospect.internal",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    auth = {"authorization": "Bearer cli-key"}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                h = httpx.get(f"http://127.0.0.1:{port}/health", headers=auth).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert h["model"] == tiny_model.name
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 401
        assert (
            httpx.get(f"http://127.0.0.1:{port}/health", headers={**auth, "host": "prospect.internal"}).status_code
            == 200
        )
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="cli-key", max_retries=0)
        assert (
            c.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=3
            ).usage.completion_tokens
            >= 1
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
