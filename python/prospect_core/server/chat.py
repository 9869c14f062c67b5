"""/v1/chat/completions: a stateless completion over the shared engine, in a cache of its own."""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from prospect_core import prompt
from prospect_core.engine import Engine
from prospect_core.frames import FramePreprocessor
from prospect_core.server.errors import APIError
from prospect_core.server.images import image_url_of
from prospect_core.server.schemas import ChatRequest, Message

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def render(messages: list[Message], image_seq_len: int) -> tuple[str, list[tuple[str, str]]]:
    """Messages -> (prompt text in SmolVLM2's chat format, [(param, image url)] in the order they appear)."""
    text, images = "<|im_start|>", []
    for i, m in enumerate(messages):
        parts = [m.content] if isinstance(m.content, str) else m.content
        body = ""
        for j, part in enumerate(parts):
            if isinstance(part, str):
                body += part
            elif part.type == "text":
                body += part.text
            else:
                images.append((f"messages[{i}].content[{j}].image_url", image_url_of(part.image_url)))
                body += prompt.image_tokens(image_seq_len)
        if m.role == "assistant" and not images and not body:
            raise APIError(400, f"messages[{i}].content: an assistant message needs text", f"messages[{i}].content")
        space = "" if body.startswith("<fake_token_around_image>") else " "
        text += f"{ROLES[m.role]}:{space}{body}{prompt.EOU}\n"
    return text + prompt.ASSISTANT_PROMPT, images


class TextStream:
    """The reply's text as tokens arrive, released only where no stop string can still begin and no
    multi-byte character is half decoded. Each token decodes a short window (the tokens since the
    last whole character), not the whole reply."""

    def __init__(self, tokenizer: Any, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []
        self.raw, self.text, self.sent, self.stopped = "", "", 0, False
        self.prefix, self.read = 0, 0  # tokens[prefix:read] decode to the end of self.raw

    def _decode(self, a, b=None):
        return self.tokenizer.decode(self.tokens[a:b], skip_special_tokens=True)

    def push(self, tok: int) -> str:
        self.tokens.append(tok)
        before, after = self._decode(self.prefix, self.read), self._decode(self.prefix)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing whole yet: a character split across tokens, or a special token
        self.raw += after[len(before) :]
        self.prefix, self.read = self.read, len(self.tokens)
        text = self.raw.lstrip()
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.text, self.stopped = text[: min(cuts)], True
            return self._release(len(self.text))
        self.text = text
        return self._release(len(text) - self.hold)

    def finish(self) -> str:
        if not self.stopped and self.read < len(self.tokens):  # a last, incomplete character
            self.raw += self._decode(self.read)
            self.text = self.raw.lstrip()
        return self._release(len(self.text))

    def _release(self, upto) -> str:
        delta = self.text[self.sent : upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return delta


class Completion:
    """One request's prompt, checked against the limits before any token is generated."""

    def __init__(
        self,
        engine: Engine,
        preprocess: FramePreprocessor,
        req: ChatRequest,
        text: str,
        images: list[tuple[str, np.ndarray]],
        max_tokens_cap: int,
    ):
        """text: the prompt render() made of req.messages; images: [(param, HxWx3 array)] in its order."""
        backend = engine.backend
        self.engine, self.req = engine, req
        self.ids = engine.ids(text)
        self.prompt_tokens = self.ids.shape[1]
        context = backend.max_position_embeddings
        room = context - self.prompt_tokens
        if room < 1:
            raise APIError(
                400,
                f"messages: the prompt is {self.prompt_tokens} tokens, the model's context is {context}",
                "messages",
            )
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > max_tokens_cap:
            raise APIError(
                400, f"max_tokens: expected at most {max_tokens_cap} (the server's limit), got {asked}", "max_tokens"
            )
        if asked is not None and asked > room:
            raise APIError(
                400,
                f"max_tokens: the prompt is {self.prompt_tokens} tokens, so at most {room} more fit "
                f"in the model's context of {context}; got {asked}",
                "max_tokens",
            )
        max_tokens = asked if asked is not None else min(max_tokens_cap, room)
        self.features = None
        if images:
            feats = [backend.image_features(*preprocess(img, param)[:2]) for param, img in images]
            self.features = torch.cat(feats)
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop: expected at most 4 strings, got {len(stops)}", "stop")
        self.stream = TextStream(engine.tokenizer, stops)
        self.sampling = req.sampling(max_tokens, tuple(stops))

    @property
    def max_tokens(self) -> int:
        return self.sampling.max_new_tokens

    def run(
        self, on_delta: Callable[[str], None] | None = None, cancelled: Callable[[], bool] = lambda: False
    ) -> tuple[str, str, int]:
        """Generates; on_delta(text) gets each released piece; cancelled() (the client hung up) stops it before
        the next token. Returns (text, finish_reason, tokens)."""
        if cancelled():  # gone while this waited in the engine queue
            return "", "stop", 0
        backend = self.engine.backend
        cache = backend.make_cache(self.prompt_tokens + self.max_tokens)
        embeds = backend.embed(self.ids, self.features)

        def on_token(tok):
            delta = self.stream.push(tok)
            if delta and on_delta:
                on_delta(delta)
            return not self.stream.stopped and not cancelled()

        r = backend.generate(embeds, cache, self.sampling, [self.engine.eou_id], kind="user", on_token=on_token)
        tail = self.stream.finish()
        if tail and on_delta:
            on_delta(tail)
        stopped = self.stream.stopped or len(r.tokens) < self.max_tokens
        return self.stream.text, "stop" if stopped else "length", len(r.tokens)
