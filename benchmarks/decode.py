"""Decode speed: prospect's C++ greedy loop vs transformers generate() vs the original Python loop."""

import torch

from common import median_ms


def text_weight_bytes(model):
    """Bytes a decode step reads: every text-decoder weight and lm_head (one embedding row is negligible)."""
    t = model.config["text_config"]
    H, I, L, hd = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], t["head_dim"]
    per_layer = H * hd * (t["num_attention_heads"] * 2 + t["num_key_value_heads"] * 2) + 3 * H * I + 2 * H
    es = torch.tensor([], dtype=model.dtype).element_size()
    return (L * per_layer + H + t["vocab_size"] * H) * es


def original_loop(model, ids, new_tokens):
    """The original pipeline's fast_greedy_generate: a Python loop over the transformers model."""
    from transformers import DynamicCache

    cache = DynamicCache()
    embeds = model.get_input_embeddings()(ids)
    out = []
    for _ in range(new_tokens):
        logits = model(inputs_embeds=embeds, past_key_values=cache, use_cache=True).logits[:, -1]
        tok = logits.argmax(-1)
        out.append(int(tok))
        embeds = model.get_input_embeddings()(tok[:, None])
    return out


@torch.no_grad()
def bench_decode(path, dtype, repeats, new_tokens=32, prompt=16, baselines=True):
    import prospect_core

    ours = prospect_core.load_model(path, dtype=dtype)
    ids = torch.arange(60, 60 + prompt).unsqueeze(0)
    cap = prompt + new_tokens + 2

    def prospect_run():
        return ours.greedy_generate(ours.embed_tokens(ids), ours.make_cache(cap), new_tokens, [])

    prospect_run()
    per_tok = sorted(prospect_run().decode_ms / new_tokens for _ in range(repeats))[repeats // 2]
    row = {"prospect_ms_per_token": per_tok, "weight_bytes_per_token": text_weight_bytes(ours)}
    if baselines:
        from transformers import AutoModelForImageTextToText

        ref = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        gen = lambda n: ref.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)  # noqa
        # generate()'s per-token cost without its prefill: (N tokens - 1 token) / (N - 1).
        t_n, t_1 = median_ms(lambda: gen(new_tokens), repeats), median_ms(lambda: gen(1), repeats)
        row["transformers_generate_ms_per_token"] = (t_n - t_1) / (new_tokens - 1)
        o_n = median_ms(lambda: original_loop(ref, ids, new_tokens), repeats)
        o_1 = median_ms(lambda: original_loop(ref, ids, 1), repeats)
        row["original_loop_ms_per_token"] = (o_n - o_1) / (new_tokens - 1)
        del ref
    ours = None  # the weights go before the next benchmark loads its own
    return row
