"""What the runner and the strategies call on a model, whichever engine runs it.

Both backends take token ids and pixel_values, keep their keys and values in a
`prospect_core.KVCache`, and record spans there, so strategies cut the same
spans whichever backend is in use.
"""

import time

import torch

from prospect_core import _C as core


class GenerateResult:
    """The same fields as prospect_core.GenerateResult, for the Python loop."""

    def __init__(self, tokens, silence_prob, prefill_ms, decode_ms):
        self.tokens, self.silence_prob, self.prefill_ms, self.decode_ms = tokens, silence_prob, prefill_ms, decode_ms


class NativeBackend:
    """The C++ engine: vision, prefill and the decode loop never enter Python per token."""

    name = "native"

    def __init__(self, path, dtype="float32", device="cpu"):
        from prospect_core.model import load_model

        self.model = load_model(path, dtype, device)
        cfg = self.model.config
        self.image_token_id = cfg["image_token_id"]
        self.image_seq_len = cfg["image_seq_len"]
        self.max_position_embeddings = cfg["text_config"]["max_position_embeddings"]
        self.device = torch.device(device)

    def make_cache(self, capacity):
        return self.model.make_cache(capacity)

    def image_features(self, pixel_values, pixel_attention_mask=None):
        return self.model.image_features(pixel_values, pixel_attention_mask)

    def embed(self, ids, features=None):
        """ids [1, T] (+ image features [N, L, H]) -> embeds [1, T, H]."""
        text = self.model.embed_tokens(ids)
        if features is None:
            return text
        return core.joint_embed(ids.to(text.device), text, features, self.image_token_id)

    def prefill(self, embeds, cache, kind, frame_index=None, extend=False):
        if extend:
            raise ValueError("extend=True is for the Python decode loop; the native engine decodes in C++")
        return self.model.prefill(embeds, cache, kind, frame_index)

    def generate(self, embeds, cache, max_new_tokens, stop_token_ids, silence=None, kind="user", frame_index=None,
                 keep_generated_in_cache=True, temperature=0.0, seed=None, on_token=None):
        return self.model.greedy_generate(embeds, cache, max_new_tokens, list(stop_token_ids),
                                          keep_generated_in_cache=keep_generated_in_cache, silence=silence,
                                          span_kind=kind, frame_index=frame_index, temperature=temperature,
                                          seed=seed, on_token=on_token)


def python_generate(backend, embeds, cache, max_new_tokens, stop_token_ids, silence=None, kind="user",
                    frame_index=None, keep_generated_in_cache=True, temperature=0.0, seed=None, on_token=None):
    """The same loop as the C++ greedy_generate, in Python over backend.prefill (the hf backend)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    t0 = time.perf_counter()
    logits = backend.prefill(embeds, cache, kind, frame_index)
    input_end = cache.length
    prob = None
    if silence is not None:
        prob = torch.softmax(logits.float(), -1)[0, silence[0]].item()
        if prob > silence[1]:
            return GenerateResult([], prob, (time.perf_counter() - t0) * 1e3, 0.0)

    def pick(lg):
        if temperature <= 0:
            return int(lg.argmax(-1).item())
        lg = lg.double().cpu()[0]  # float64 from the max, as the C++ loop: a tiny temperature tends to greedy
        return int(torch.multinomial(torch.softmax((lg - lg.max()) / temperature, -1), 1, generator=gen).item())

    tok = pick(logits) if max_new_tokens > 0 else -1
    prefill_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    tokens = []
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
        tok = pick(logits)
    decode_ms = (time.perf_counter() - t0) * 1e3
    if not keep_generated_in_cache:
        cache.truncate(input_end)
    return GenerateResult(tokens, prob, prefill_ms, decode_ms)


BACKENDS = ("native", "hf")


def make_backend(name, path, dtype="float32", device="cpu"):
    if name == "native":
        return NativeBackend(path, dtype, device)
    if name == "hf":
        from prospect_core.hf import HFBackend

        return HFBackend(path, dtype, device)
    raise ValueError(f"backend expected one of {', '.join(BACKENDS)}, got {name!r}")
