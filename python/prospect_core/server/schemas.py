"""Request bodies. Unknown fields, wrong types, non-finite numbers and text that is not valid Unicode are
refused (400), never ignored."""

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prospect_core.server.errors import LONE_SURROGATE

MAX_FRAME_TIME_S = 1e7  # about 115 days of video; a larger time cannot be a stream's clock
MAX_MESSAGES = 1024
MAX_SHORT_TEXT = 256  # model, name, user, stop strings


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
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]
ShortText = Annotated[str, Field(max_length=MAX_SHORT_TEXT)]


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part]]
    name: Optional[ShortText] = None


class StreamOptions(Strict):
    include_usage: bool = False


class ChatRequest(Strict):
    """The OpenAI chat-completions fields prospect honours."""
    model: Optional[ShortText] = None
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    stop: Optional[Union[ShortText, list[ShortText]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = Field(default=None, ge=0, lt=2**64)  # the engine's seed is an unsigned 64-bit int
    n: Optional[Literal[1]] = None
    user: Optional[ShortText] = None

    def texts(self):
        """[(param, text)]: the prompt text the request carries."""
        out = []
        for i, m in enumerate(self.messages):
            if isinstance(m.content, str):
                out.append((f"messages[{i}].content", m.content))
            else:
                out += [(f"messages[{i}].content[{j}].text", p.text) for j, p in enumerate(m.content)
                        if p.type == "text"]
        return out


class SessionCreate(Strict):
    system_prompt: Optional[str] = Field(default=None, min_length=1)
    knowledge: Optional[str] = None
    context_strategy: Optional[ShortText] = None
    # The strategy's own keys, plus max_seq_len and reserved_seq_len for the session's context.
    context_strategy_config: Optional[dict] = None
    talk_policy: Optional[Literal["silence_threshold", "every_frame"]] = None
    not_talk_threshold: Optional[float] = Field(default=None, ge=0, le=1)
    max_new_tokens: Optional[int] = Field(default=None, ge=1)

    def texts(self):
        cfg = self.context_strategy_config or {}
        return [(k, v) for k, v in (("system_prompt", self.system_prompt), ("knowledge", self.knowledge),
                                    ("context_strategy_config", repr(cfg) if cfg else None)) if v]


class Frame(Strict):
    time: float = Field(ge=0, le=MAX_FRAME_TIME_S)
    image_url: Union[str, ImageURL]


class FramesRequest(Strict):
    frames: list[Frame] = Field(min_length=1)


class SessionMessage(Strict):
    content: str = Field(min_length=1)
    respond: bool = False
    max_tokens: Optional[int] = Field(default=None, ge=1)

    def texts(self):
        return [("content", self.content)]
