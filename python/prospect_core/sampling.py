"""The decode loop in Python, for backends whose forward runs in Python (the hf backend): the same steps and the
same token choice as the C++ greedy_generate (cpp/generate.cpp)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from prospect_core.config import SamplingParams


class GenerateResult:
    """The same fields as prospect_core.GenerateResult, for the Python loop."""

    def __init__(self, tokens: list[int], silence_prob: float | None, prefill_ms: float, decode_ms: float):
        self.tokens, self.silence_prob, self.prefill_ms, self.decode_ms = tokens, silence_prob, prefill_ms, decode_ms


def pick_token(
    logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> int:
    """The next token from logits [1, V]: argmax at temperature 0, else a sample from the softmax at that
    temperature, cut to the smallest prefix of the sorted probabilities that reaches top_p."""
    if temperature <= 0:
        return int(logits.argmax(-1).item())
    lg = logits.double().cpu()[0]  # float64 from the max, as the C++ loop: a tiny temperature tends to greedy
    probs = torch.softmax((lg - lg.max()) / temperature, -1)
    if top_p < 1.0:
        sorted_probs, idx = probs.sort(-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # the mass of the tokens ranked above each one
        sorted_probs.masked_fill_(before > top_p, 0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def python_generate(
    backend: Any,
    embeds: torch.Tensor,
    cache: Any,
    sampling: SamplingParams,
    stop_token_ids: Sequence[int] = (),
    *,
    silence: tuple[int, float] | None = None,
    kind: str = "user",
    frame_index: int | None = None,
    keep_generated_in_cache: bool = True,
    on_token: Callable[[int], Any] | None = None,
) -> GenerateResult:
    """The same loop as the C++ greedy_generate, over backend.prefill and backend.embed; sampling says how
    (temperature, top_p, seed) and how long (max_new_tokens)."""
    sp = SamplingParams.check(sampling)
    max_new_tokens, temperature, top_p, seed = sp.max_new_tokens, sp.temperature, sp.top_p, sp.seed
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    t0 = time.perf_counter()
    logits = backend.prefill(embeds, cache, kind, frame_index)
    input_end = cache.length
    prob = None
    if silence is not None:
        prob = torch.softmax(logits.float(), -1)[0, silence[0]].item()
        if prob > silence[1]:
            return GenerateResult([], prob, (time.perf_counter() - t0) * 1e3, 0.0)

    tok = pick_token(logits, temperature, top_p, gen) if max_new_tokens > 0 else -1
    prefill_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    tokens: list[int] = []
    for step in range(max_new_tokens):
        if tok in stop_token_ids:
            break
        tokens.append(tok)
        answer = on_token(tok) if on_token is not None else None
        go_on = answer is None or bool(answer)  # as the C++ loop: None or True goes on
        if cache.length >= cache.capacity:
            break
        ids = torch.tensor([[tok]], device=embeds.device)
        logits = backend.prefill(backend.embed(ids), cache, "assistant", frame_index, extend=step > 0)
        if not go_on or step + 1 == max_new_tokens:
            break
        tok = pick_token(logits, temperature, top_p, gen)
    decode_ms = (time.perf_counter() - t0) * 1e3
    if not keep_generated_in_cache:
        cache.truncate(input_end)
    return GenerateResult(tokens, prob, prefill_ms, decode_ms)
