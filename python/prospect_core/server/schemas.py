"""Request bodies. Unknown fields and wrong types are refused (400), never ignored."""

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


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


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part]]
    name: Optional[str] = None


class StreamOptions(Strict):
    include_usage: bool = False


class ChatRequest(Strict):
    """The OpenAI chat-completions fields prospect honours."""
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = None
    n: Optional[Literal[1]] = None
    user: Optional[str] = None


class SessionCreate(Strict):
    system_prompt: Optional[str] = Field(default=None, min_length=1)
    knowledge: Optional[str] = None
    context_strategy: Optional[str] = None
    # The strategy's own keys, plus max_seq_len and reserved_seq_len for the session's context.
    context_strategy_config: Optional[dict] = None
    talk_policy: Optional[Literal["silence_threshold", "every_frame"]] = None
    not_talk_threshold: Optional[float] = Field(default=None, ge=0, le=1)
    max_new_tokens: Optional[int] = Field(default=None, ge=1)


class Frame(Strict):
    time: float = Field(ge=0)
    image_url: Union[str, ImageURL]


class FramesRequest(Strict):
    frames: list[Frame] = Field(min_length=1)


class SessionMessage(Strict):
    content: str = Field(min_length=1)
    respond: bool = False
    max_tokens: Optional[int] = Field(default=None, ge=1)
