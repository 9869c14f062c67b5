"""`prospect verify`: parity of the native engine with transformers on a user's checkpoint."""

import torch

from prospect_core import prompt as fmt
from prospect_core.config import DEFAULT_DEVICE, DEFAULT_DTYPE
from prospect_core.model import load_model, resolve_model_path

# A top-2 margin this many rounding steps of the dtype (at the top logit) or less is a near-tie: the engines
# sum in different orders, and in bf16 transformers' own prefill and decode of the same tokens differ by up to
# 6 steps (SmolLM2-135M, logits ~30).
TIE_STEPS = 4


def _near_tie(top2: torch.Tensor, dtype: torch.dtype) -> bool:
    step = torch.finfo(dtype).eps * 2.0 ** torch.floor(torch.log2(top2[0].abs())).item()
    return (top2[0] - top2[1]).item() < max(1e-4, TIE_STEPS * step)


def _margin_agreement(ours, ref_tokens, ref_scores, dtype: torch.dtype):
    """Tokens agree up to the first divergence, and whether the reference had a near-tie there."""
    for i, (a, b) in enumerate(zip(ours, ref_tokens)):
        if a != b:
            return i, _near_tie(ref_scores[i].float().topk(2).values, dtype)
    return min(len(ours), len(ref_tokens)), True


def _vs_float32(
    path, device: str, text_ids: torch.Tensor, text_logits: torch.Tensor, mine: list[int], new_tokens: int
) -> dict:
    """What the lower precision itself costs, on the same engine: the float32 engine's logits and tokens."""
    full = load_model(path, "float32", device)
    full_logits = full.prefill(full.embed_tokens(text_ids.to(device)), full.make_cache(text_ids.shape[1])).float()
    full_mine = full.greedy_generate(
        full.embed_tokens(text_ids.to(device)), full.make_cache(text_ids.shape[1] + new_tokens + 1), new_tokens, []
    ).tokens
    same = next((i for i, (a, b) in enumerate(zip(mine, full_mine)) if a != b), min(len(mine), len(full_mine)))
    return {
        "text_logit_rel_err": ((text_logits - full_logits).abs().max() / full_logits.abs().max()).item(),
        "top1_equal": bool(text_logits.argmax() == full_logits.argmax()),
        "greedy_agree": same,
    }


def _random_inputs(cfg: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pixel_values [1, 1, 3, S, S], text ids [1, 12], and those ids around one image's tokens [1, 12 + L]."""
    g = torch.Generator().manual_seed(seed)
    S, L = cfg["vision_config"]["image_size"], cfg["image_seq_len"]
    vocab = cfg["text_config"]["vocab_size"]
    pv = torch.rand(1, 1, 3, S, S, generator=g) * 2 - 1
    text_ids = torch.randint(0, min(vocab, 4000), (1, 12), generator=g)
    text_ids[text_ids == cfg["image_token_id"]] = 0
    ids = torch.cat([text_ids[:, :4], torch.full((1, L), cfg["image_token_id"]), text_ids[:, 4:]], 1)
    return pv, text_ids, ids


def _one_image_errors(
    ours, ref, pv: torch.Tensor, ids: torch.Tensor, device: str, torch_dtype: torch.dtype
) -> tuple[float, float, float]:
    """(vision features' max error relative to their scale, logits' max abs error, logits' scale)."""
    feats = ours.image_features(pv.to(device)).float().cpu()
    feats_ref = ref.model.get_image_features(pv.to(device, torch_dtype))
    feats_ref = getattr(feats_ref, "pooler_output", feats_ref)  # 5.x: an output object; 4.57: the tensor
    feats_ref = torch.cat(list(feats_ref)).float().cpu()
    vision_err = ((feats.reshape(-1, feats.shape[-1]) - feats_ref).abs().max() / feats_ref.abs().max()).item()
    logits = ours.forward(ours.joint_embed(ids.to(device), pv.to(device)), ours.make_cache(ids.shape[1] + 8))
    logits_ref = ref(input_ids=ids.to(device), pixel_values=pv.to(device, torch_dtype)).logits
    logit_err = (logits.float() - logits_ref.float()).abs().max().item()
    return vision_err, logit_err, logits_ref.abs().max().item()


def _greedy_both(ours, ref, text_ids: torch.Tensor, new_tokens: int) -> tuple[list[int], list[int], list]:
    """new_tokens greedy tokens from each engine, and transformers' scores at each step."""
    # No end-of-sequence on either side: both run new_tokens steps through whatever they emit (a
    # min_new_tokens would instead mask the end token in transformers alone).
    ref.generation_config.eos_token_id = None
    out = ref.generate(
        input_ids=text_ids,
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=ours.config["text_config"].get("pad_token_id") or 0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    ref_tokens = out.sequences[0, text_ids.shape[1] :].tolist()
    cache = ours.make_cache(text_ids.shape[1] + new_tokens + 1)
    mine = ours.greedy_generate(ours.embed_tokens(text_ids), cache, new_tokens, []).tokens
    return mine, ref_tokens, [s[0] for s in out.scores]


@torch.no_grad()
def verify(
    path,
    dtype: str = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    new_tokens: int = 32,
    seed: int = 0,
    prompt: str | None = None,
) -> dict:
    """Runs the same inputs through transformers and prospect; returns the errors measured.
    prompt: a user message for the text-only part (in the chat format); default random token ids."""
    from transformers import AutoModelForImageTextToText  # the reference; seconds to import

    path = resolve_model_path(path)
    torch_dtype = getattr(torch, dtype)
    ours = load_model(path, dtype, device)
    ref = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype).to(device).eval()
    cfg = ours.config
    pv, text_ids, ids = _random_inputs(cfg, seed)
    tokenizer = None
    if prompt is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        text = (
            fmt.system_turn("You are a helpful assistant.", first=True) + fmt.user_turn(prompt) + fmt.ASSISTANT_PROMPT
        )
        text_ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    vision_err, logit_err, logit_scale = _one_image_errors(ours, ref, pv, ids, device, torch_dtype)

    # Text only: the prompt the greedy comparison starts from.
    text_logits = ours.prefill(ours.embed_tokens(text_ids.to(device)), ours.make_cache(text_ids.shape[1])).float()
    text_ref = ref(input_ids=text_ids.to(device)).logits[:, -1].float()
    text_err = ((text_logits - text_ref).abs().max() / text_ref.abs().max()).item()

    mine, ref_tokens, ref_scores = _greedy_both(ours, ref, text_ids.to(device), new_tokens)
    agree, explained = _margin_agreement(mine, ref_tokens, ref_scores, torch_dtype)
    vs_fp32 = _vs_float32(path, device, text_ids, text_logits, mine, new_tokens) if dtype != "float32" else None
    return {
        "model": str(path),
        "dtype": dtype,
        "device": device,
        "vision_feature_rel_err": vision_err,
        "max_logit_err": logit_err,
        "logit_scale": logit_scale,
        "text_logit_rel_err": text_err,
        "prompt": prompt,
        "reply": tokenizer.decode(mine, skip_special_tokens=True).strip() if tokenizer else None,
        "reply_ref": tokenizer.decode(ref_tokens, skip_special_tokens=True).strip() if tokenizer else None,
        "greedy_tokens": new_tokens,
        "greedy_agree": agree,
        "divergence_within_rounding": explained if agree < new_tokens else None,
        "vs_float32": vs_fp32,
    }


def report(r: dict) -> str:
    lines = [
        f"prospect verify: {r['model']} ({r['dtype']}, {r['device']})",
        f"  vision features: max error {r['vision_feature_rel_err']:.2e} relative to their scale",
        f"  logits (one-image prompt): max abs error {r['max_logit_err']:.2e} (logits up to {r['logit_scale']:.1f})",
        f"  logits (text only): max error {r['text_logit_rel_err']:.2e} relative to their scale",
        f"  greedy: {r['greedy_agree']}/{r['greedy_tokens']} tokens identical to transformers generate()",
    ]
    if r.get("vs_float32"):
        v = r["vs_float32"]
        lines.append(
            f"  vs prospect float32: text logits max error {v['text_logit_rel_err']:.2e} relative, same top-1 "
            f"{v['top1_equal']}, greedy {v['greedy_agree']}/{r['greedy_tokens']} tokens identical"
        )
    if r.get("prompt"):
        lines += [f"  prompt: {r['prompt']}", f"  prospect:     {r['reply']!r}", f"  transformers: {r['reply_ref']!r}"]
    if r["divergence_within_rounding"] is not None:
        why = (
            f"where transformers' own top-2 margin is within {TIE_STEPS} rounding steps of {r['dtype']} (a near-tie)"
            if r["divergence_within_rounding"]
            else "with a clear margin: a real difference"
        )
        lines.append(f"  first divergence {why}")
    return "\n".join(lines)
