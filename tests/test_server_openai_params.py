"""The OpenAI chat parameters beyond the ones that shape the reply: top_p reaches the engine; the rest of what
the openai client can send is accepted at its neutral value and refused otherwise, by a 400 naming it. A session
takes temperature, top_p and seed as the chat completions do, for all its replies."""

import httpx
import openai
import pytest

from prospect_core.engine import Engine
from prospect_core.server import start_in_thread

MSGS = [{"role": "user", "content": "Anything."}]


@pytest.fixture(scope="module")
def server(tiny_model):
    srv = start_in_thread(Engine(tiny_model))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def reply(client, **kw):
    return client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=12, **kw).choices[0].message.content


def test_top_p_reaches_the_engine(client):
    """top_p this small keeps only the likeliest token: whatever the seed, the greedy reply."""
    greedy = reply(client)
    assert [reply(client, temperature=1.5, top_p=1e-9, seed=s) for s in (1, 2)] == [greedy, greedy]
    sampled = {reply(client, temperature=1.5, top_p=1.0, seed=s) for s in (1, 2, 3)}
    assert sampled != {greedy}


def test_neutral_values_are_accepted(client):
    greedy = reply(client)
    assert (
        reply(
            client,
            n=1,
            presence_penalty=0,
            frequency_penalty=0.0,
            logprobs=False,
            top_logprobs=0,
            logit_bias={},
            response_format={"type": "text"},
            tools=[],
            tool_choice="none",
            parallel_tool_calls=False,
            modalities=["text"],
            store=False,
            user="u-1",
            safety_identifier="s-1",
            prompt_cache_key="k",
            service_tier="auto",
            metadata={"run": "test"},
        )
        == greedy
    )


def test_streaming_with_usage_through_the_client(client):
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=MSGS, max_tokens=6, stream=True, stream_options={"include_usage": True}, top_p=0.5
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


REFUSED = [
    ("n", 2),
    ("presence_penalty", 0.5),
    ("frequency_penalty", -1),
    ("logprobs", True),
    ("top_logprobs", 3),
    ("logit_bias", {"50": 10}),
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"),
    ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}),
    ("modalities", ["text", "audio"]),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}),
    ("reasoning_effort", "high"),
    ("verbosity", "low"),
    ("store", True),
    ("presence_penalty", False),
]


@pytest.mark.parametrize("param, value", REFUSED)
def test_others_are_refused_by_name(http, param, value):
    r = http.post("/v1/chat/completions", json={"messages": MSGS, param: value})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(f"{param}: expected ")


@pytest.mark.parametrize("value", [0, 1.5, "0.5"])
def test_top_p_out_of_range_is_refused(http, value):
    r = http.post("/v1/chat/completions", json={"messages": MSGS, "top_p": value})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_p"


def test_refusal_reaches_the_openai_client(client):
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model="tiny", messages=MSGS, logprobs=True)


# ---- sessions: temperature, top_p and seed ---------------------------------------------------------------


def session_reply(http, **create):
    """The reply of a new session, made with `create`, to one user message; the session's sampling settings."""
    r = http.post("/v1/sessions", json={"max_new_tokens": 12, **create})
    assert r.status_code == 200, r.text
    sid = r.json()["id"]
    try:
        said = http.post(f"/v1/sessions/{sid}/messages", json={"content": "Anything.", "respond": True})
        assert said.status_code == 200, said.text
        assert said.json()["usage"]["completion_tokens"] > 0
        return said.json()["text"], http.get(f"/v1/sessions/{sid}").json()["sampling"]
    finally:
        http.delete(f"/v1/sessions/{sid}")


def test_session_at_temperature_0_is_greedy_whatever_the_seed(http):
    greedy, sampling = session_reply(http)
    assert sampling["temperature"] == 0 and sampling["top_p"] == 1
    assert session_reply(http, temperature=0)[0] == greedy
    assert session_reply(http, temperature=0, seed=1)[0] == session_reply(http, temperature=0, seed=2)[0] == greedy
    assert session_reply(http, temperature=1e-4)[0] == greedy  # too small to sample with, as in the chat


def test_session_sampling_reaches_its_replies(http):
    greedy, _ = session_reply(http)
    a, sampling = session_reply(http, temperature=1.5, top_p=0.95, seed=7)
    assert sampling == {"temperature": 1.5, "top_p": 0.95, "seed": 7, "max_new_tokens": 12}
    assert session_reply(http, temperature=1.5, top_p=0.95, seed=7)[0] == a  # the seed reproduces the reply
    others = {session_reply(http, temperature=1.5, seed=s)[0] for s in (8, 9)}
    assert others | {a} != {greedy}  # sampled at temperature 1.5, not greedy
    # top_p this small keeps only the likeliest token: any temperature, any seed, gives the greedy reply.
    assert session_reply(http, temperature=1.5, top_p=1e-9, seed=8)[0] == greedy


@pytest.mark.parametrize(
    "param, value",
    [("temperature", 2.5), ("temperature", -0.5), ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5), ("seed", -1)],
)
def test_session_sampling_out_of_range_is_refused_as_in_the_chat(http, param, value):
    chat = http.post("/v1/chat/completions", json={"messages": MSGS, param: value})
    session = http.post("/v1/sessions", json={param: value})
    assert session.status_code == chat.status_code == 400, session.text
    err = session.json()["error"]
    assert err["param"] == param and err["message"].startswith(f"{param}: ")
    assert err["message"] == chat.json()["error"]["message"]  # the same check, the same words
