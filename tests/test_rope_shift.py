"""rope_shift_: keys rotated at p and shifted by d equal keys rotated at p + d."""

import pytest
import torch

import prospect_core as pc
from rope_reference import rotate

THETA = 100000.0


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("head_dim", [64, 48])
def test_shift_equals_rotation_at_sum_fp32(head_dim):
    raw = torch.randn(2, 3, 50, head_dim)
    p = torch.randint(0, 4000, (50,))
    d = -1234
    keys = rotate(raw, p, THETA)
    out = pc.rope_shift_(keys, d, THETA)
    assert out.data_ptr() == keys.data_ptr()  # in place, same tensor back
    assert rel_err(keys, rotate(raw, p + d, THETA)) < 1e-5


def test_per_token_deltas():
    raw = torch.randn(1, 2, 30, 64)
    p = torch.arange(100, 130)
    d = torch.randint(-100, 100, (30,))
    keys = rotate(raw, p, THETA)
    pc.rope_shift_(keys, d, THETA)
    assert rel_err(keys, rotate(raw, p + d, THETA)) < 1e-5


def test_hundred_successive_shifts_fp32():
    raw = torch.randn(1, 4, 40, 64)
    p = torch.arange(3000, 3040)
    keys = rotate(raw, p, THETA)
    total = 0
    for i in range(100):
        d = (-1) ** i * (i * 37 % 500) - 3  # mixed signs, net drift down
        pc.rope_shift_(keys, d, THETA)
        total += d
    assert rel_err(keys, rotate(raw, p + total, THETA)) < 1e-5


def test_bf16_within_bf16_rounding():
    raw = torch.randn(1, 4, 40, 64)
    p = torch.arange(500, 540)
    keys = rotate(raw, p, THETA).to(torch.bfloat16)
    pc.rope_shift_(keys, -300, THETA)
    # One shift: one bf16 rounding of the input and one of the output (2^-8 each).
    assert rel_err(keys, rotate(raw, p - 300, THETA)) < 2 * 2**-8
    for i in range(99):
        pc.rope_shift_(keys, 1 if i % 2 else -1, THETA)
    # 100 shifts: each rounds once more; the error grows like a random walk of bf16 roundings.
    assert rel_err(keys, rotate(raw, p - 301, THETA)) < 12 * 2**-8


def test_strided_keys_take_the_generic_path():
    raw = torch.randn(3, 2, 20, 64)
    keys = rotate(raw, 10, THETA).transpose(0, 1)  # non-contiguous [2, 3, 20, 64]
    pc.rope_shift_(keys, 5, THETA)
    assert rel_err(keys, rotate(raw, 15, THETA).transpose(0, 1)) < 1e-5
    k3 = rotate(raw[0], 10, THETA)  # rank 3 [2, 20, 64]
    pc.rope_shift_(k3, 5, THETA)
    assert rel_err(k3, rotate(raw[0], 15, THETA)) < 1e-5


def test_inv_freq_matches_transformers():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_theta=THETA)
    ref = LlamaRotaryEmbedding(cfg).inv_freq
    assert torch.equal(pc.rope_inv_freq(64, THETA), ref)


@pytest.mark.parametrize(
    "args, exc, fragment",
    [
        ((torch.randn(2, 7), 1, THETA), ValueError, "even head_dim, got 7"),
        ((torch.randn(5), 1, THETA), ValueError, r"keys expected \[..., T, head_dim\]"),
        ((torch.zeros(1, 4, 8, dtype=torch.int32), 1, THETA), TypeError, "float16, bfloat16 or float64, got Int"),
        ((torch.zeros(1, 4, 8).to(torch.float8_e4m3fn), 1, THETA), TypeError, "got Float8_e4m3fn"),
        ((torch.randn(1, 1, 8).expand(1, 4, 8), 1, THETA), ValueError, "elements do not overlap"),
        ((torch.randn(1, 4, 8), torch.zeros(3, dtype=torch.long), THETA), ValueError, "T = 4"),
        ((torch.randn(1, 4, 8), torch.zeros(4), THETA), TypeError, "delta expected an integer dtype"),
        ((torch.randn(1, 4, 8), 1.5, THETA), TypeError, "delta expected an int"),
        ((torch.randn(1, 4, 8), 1, -1.0), ValueError, "rope_theta expected > 0"),
        ((torch.randn(1, 4, 8), 1, None), TypeError, "rope_theta expected a float"),
    ],
)
def test_errors(args, exc, fragment):
    with pytest.raises(exc, match=fragment):
        pc.rope_shift_(*args)
