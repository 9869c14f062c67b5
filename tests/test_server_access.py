"""Access: an optional API key (what the openai client sends as api_key), Host names the server answers
to, and no cross-site browser requests (foreign Origin 403, non-JSON bodies 415)."""

import httpx
import openai
import pytest

from prospect_core.server import Access, start_in_thread

KEY = "s3cret-key"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def locked(engine):
    srv = start_in_thread(
        engine,
        access=Access(api_key=KEY, allowed_hosts=("prospect.internal",), allowed_origins=("https://app.example",)),
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def default(engine):
    srv = start_in_thread(engine)
    yield srv
    srv.stop()


def refused(r, status, param, text):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and text in err["message"], err


def test_openai_client_with_the_key(locked):
    client = openai.OpenAI(base_url=locked.url + "/v1", api_key=KEY, max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=USER, max_tokens=3)
    assert r.usage.completion_tokens >= 1
    assert [m.id for m in client.models.list()]


def test_openai_client_with_a_wrong_key(locked):
    client = openai.OpenAI(base_url=locked.url + "/v1", api_key="guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="tiny", messages=USER, max_tokens=3)
    assert e.value.status_code == 401 and KEY not in str(e.value.body)


def test_sessions_need_the_key(locked):
    auth = {"authorization": f"Bearer {KEY}"}
    sid = httpx.post(locked.url + "/v1/sessions", json={}, headers=auth).json()["id"]
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{locked.url}/v1/sessions/{sid}")
        refused(r, 401, "Authorization", "got none")
        assert r.headers["www-authenticate"] == "Bearer"
    refused(
        httpx.post(
            f"{locked.url}/v1/sessions/{sid}/messages", json={"content": "x"}, headers={"authorization": "Bearer nope"}
        ),
        401,
        "Authorization",
        "got a different key",
    )
    refused(httpx.get(locked.url + "/health"), 401, "Authorization", "expected 'Bearer <api key>'")
    assert httpx.get(f"{locked.url}/v1/sessions/{sid}", headers=auth).json()["turns"] == 0  # untouched


def test_no_key_needed_without_one(default):
    assert httpx.post(default.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_only_json_bodies(default, ctype):
    """A browser sends text/plain, form and multipart POSTs cross-site without a preflight."""
    store = default.app.state.sessions
    n = len(store.sessions)
    headers = {"content-type": ctype} if ctype else {}
    r = httpx.post(default.url + "/v1/sessions", content=b"{}", headers=headers)
    refused(r, 415, "Content-Type", "expected application/json")
    assert len(store.sessions) == n
    assert (
        httpx.post(
            default.url + "/v1/sessions", content=b"{}", headers={"content-type": "application/json; charset=utf-8"}
        ).status_code
        == 200
    )
    assert httpx.post(default.url + "/v1/sessions").status_code == 200  # no body at all: the defaults


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:3000"])
def test_foreign_origins_are_refused(default, origin):
    store = default.app.state.sessions
    n = len(store.sessions)
    r = httpx.post(default.url + "/v1/sessions", json={}, headers={"origin": origin})
    refused(r, 403, "Origin", "browser requests from other sites are refused")
    assert len(store.sessions) == n
    refused(httpx.get(default.url + "/v1/models", headers={"origin": origin}), 403, "Origin", origin)


def test_an_allowed_origin_gets_cors(locked):
    origin = {"origin": "https://app.example"}
    pre = httpx.options(
        locked.url + "/v1/chat/completions",
        headers={
            **origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.post(
        locked.url + "/v1/chat/completions",
        json={"messages": USER, "max_tokens": 2},
        headers={**origin, "authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    refused(
        httpx.options(
            locked.url + "/v1/chat/completions",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        ),
        403,
        "Origin",
        "evil",
    )


@pytest.mark.parametrize(
    "host,ok",
    [
        ("localhost", True),
        ("127.0.0.1:8080", True),
        ("[::1]:8080", True),
        ("LOCALHOST", True),
        ("evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("prospect.internal", False),
        ("", False),
    ],
)
def test_host_header(default, host, ok):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    r = httpx.get(default.url + "/v1/models", headers={"host": host})
    if ok:
        assert r.status_code == 200, r.text
    else:
        refused(r, 400, "Host", "expected one of 127.0.0.1, ::1, localhost")


def test_allowed_hosts_add_names(locked):
    auth = {"authorization": f"Bearer {KEY}"}
    assert httpx.get(locked.url + "/v1/models", headers={**auth, "host": "prospect.internal:443"}).status_code == 200
    refused(
        httpx.get(locked.url + "/v1/models", headers={**auth, "host": "other.internal"}), 400, "Host", "--allowed-hosts"
    )
