"""Request bodies. Unknown fields, wrong types, non-finite numbers and text that is not valid Unicode are
refused (400), never ignored."""

import json
import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from prospect_core.config import SEED_LIMIT, SamplingParams
from prospect_core.server.errors import LONE_SURROGATE

MAX_FRAME_TIME_S = 1e7  # about 115 days of video; a larger time cannot be a stream's clock
MAX_MESSAGES = 1024
MAX_SHORT_TEXT = 256  # model, name, user, stop strings
# Below this, sampling is greedy in all but name, and logits / temperature would overflow float32 (NaN).
GREEDY_BELOW = 1e-3


def _lone_surrogate(value):
    """The first string in value (nested lists and dicts too) that UTF-8 cannot encode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        bad = _lone_surrogate(k) if isinstance(k, str) else None
        bad = bad if bad is not None else _lone_surrogate(v)
        if bad is not None:
            return bad
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _unicode(cls, value):
        # JSON may escape a lone surrogate ("\ud800"); no tokenizer can take it.
        if _lone_surrogate(value) is not None:
            raise ValueError(LONE_SURROGATE)
        return value


class ImageURL(Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]
ShortText = Annotated[str, Field(max_length=MAX_SHORT_TEXT)]


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part]
    name: ShortText | None = None


class StreamOptions(Strict):
    include_usage: bool = False


# OpenAI chat parameters prospect has no use for: accepted at the value that changes nothing (or absent),
# refused otherwise, with a 400 that names the parameter. {name: (the accepted values, why no others)}
NEUTRAL_ONLY: dict[str, tuple[list[Any], str]] = {
    "n": ([1], "prospect returns one choice per request"),
    "frequency_penalty": ([0], "prospect applies no penalties"),
    "presence_penalty": ([0], "prospect applies no penalties"),
    "logprobs": ([False], "prospect does not return log probabilities"),
    "top_logprobs": ([0], "prospect does not return log probabilities"),
    "logit_bias": ([{}], "prospect does not bias logits"),
    "response_format": ([{"type": "text"}], "prospect generates plain text only"),
    "modalities": ([["text"]], "prospect generates text only"),
    "tools": ([[]], "prospect does not call tools"),
    "tool_choice": (["none", "auto"], "prospect does not call tools"),
    "functions": ([[]], "prospect does not call functions"),
    "function_call": (["none", "auto"], "prospect does not call functions"),
    "audio": ([], "prospect generates text only"),
    "prediction": ([], "prospect does not use predicted outputs"),
    "web_search_options": ([], "prospect does not search the web"),
    "reasoning_effort": (["none"], "prospect's model does not reason before it answers"),
    "verbosity": ([], "prospect does not adjust reply length by verbosity; use max_tokens"),
    "store": ([False], "prospect does not store completions"),
    "moderation": ([], "prospect does not moderate"),
}


def _same(value: Any, allowed: Any) -> bool:
    """== without True == 1: a boolean matches only a boolean."""
    return value == allowed and isinstance(value, bool) == isinstance(allowed, bool)


class Sampling(Strict):
    """temperature, top_p and seed as OpenAI's chat completions take them (ranges and 400s alike): the fields of
    every request that says how its replies are sampled, the chat completions and the sessions."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT)  # the engine's seed is an unsigned 64-bit int

    def sampling(self, max_new_tokens: int, stop: tuple[str, ...] = ()) -> SamplingParams:
        """The SamplingParams these fields ask for: greedy without a temperature, or with one so small that
        logits / temperature would overflow float32 (NaN); without a seed, a fresh random one."""
        temperature = float(self.temperature or 0.0)
        return SamplingParams(
            temperature=temperature if temperature >= GREEDY_BELOW else 0.0,
            top_p=self.top_p if self.top_p is not None else 1.0,
            seed=self.seed if self.seed is not None else secrets.randbits(62),
            max_new_tokens=max_new_tokens,
            stop=stop,
        )


class ChatRequest(Sampling):
    """The OpenAI chat-completions fields: those prospect honours, the identifiers and hints it accepts and
    ignores, and the rest of what OpenAI's client can send, accepted only at their neutral values."""

    # Honoured, besides temperature, top_p and seed (Sampling).
    model: ShortText | None = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: ShortText | list[ShortText] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Identifiers and hints that change nothing in the reply.
    user: ShortText | None = None
    safety_identifier: ShortText | None = None
    prompt_cache_key: ShortText | None = None
    prompt_cache_retention: ShortText | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: ShortText | None = None
    metadata: dict[ShortText, Annotated[str, Field(max_length=512)]] | None = Field(default=None, max_length=16)
    parallel_tool_calls: bool | None = None  # without tools there is nothing to call in parallel
    # Neutral values only (NEUTRAL_ONLY).
    n: Any | None = None
    frequency_penalty: Any | None = None
    presence_penalty: Any | None = None
    logprobs: Any | None = None
    top_logprobs: Any | None = None
    logit_bias: Any | None = None
    response_format: Any | None = None
    modalities: Any | None = None
    tools: Any | None = None
    tool_choice: Any | None = None
    functions: Any | None = None
    function_call: Any | None = None
    audio: Any | None = None
    prediction: Any | None = None
    web_search_options: Any | None = None
    reasoning_effort: Any | None = None
    verbosity: Any | None = None
    store: Any | None = None
    moderation: Any | None = None

    @field_validator(*NEUTRAL_ONLY)
    @classmethod
    def _neutral_only(cls, value: Any, info: ValidationInfo) -> Any:
        allowed, why = NEUTRAL_ONLY[info.field_name]
        if value is None or any(_same(value, a) for a in allowed):
            return value
        accepted = " or ".join(json.dumps(a) for a in allowed)
        raise ValueError(f"expected {accepted + ' or ' if accepted else ''}no value; {why}")

    def texts(self):
        """[(param, text)]: the prompt text the request carries."""
        out = []
        for i, m in enumerate(self.messages):
            if isinstance(m.content, str):
                out.append((f"messages[{i}].content", m.content))
            else:
                out += [
                    (f"messages[{i}].content[{j}].text", p.text) for j, p in enumerate(m.content) if p.type == "text"
                ]
        return out


class SessionCreate(Sampling):
    """A session's settings; temperature, top_p and seed (Sampling) are those of all its replies."""

    system_prompt: str | None = Field(default=None, min_length=1)
    knowledge: str | None = None
    context_strategy: ShortText | None = None
    # The strategy's own keys, plus max_seq_len and reserved_seq_len for the session's context.
    context_strategy_config: dict | None = None
    talk_policy: Literal["silence_threshold", "every_frame"] | None = None
    not_talk_threshold: float | None = Field(default=None, ge=0, le=1)
    max_new_tokens: int | None = Field(default=None, ge=1)

    def texts(self):
        cfg = self.context_strategy_config or {}
        return [
            (k, v)
            for k, v in (
                ("system_prompt", self.system_prompt),
                ("knowledge", self.knowledge),
                ("context_strategy_config", repr(cfg) if cfg else None),
            )
            if v
        ]


class Frame(Strict):
    time: float = Field(ge=0, le=MAX_FRAME_TIME_S)
    image_url: str | ImageURL


class FramesRequest(Strict):
    frames: list[Frame] = Field(min_length=1)


class SessionMessage(Strict):
    content: str = Field(min_length=1)
    respond: bool = False
    max_tokens: int | None = Field(default=None, ge=1)

    def texts(self):
        return [("content", self.content)]
