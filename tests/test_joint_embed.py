"""joint_embed against a plain Python reference."""

import pytest
import torch

import prospect_core as pc
from engine_fixtures import joint_embed_case

IMG = 7


def reference(ids, text, feats):
    out = text.clone()
    rows = feats.reshape(-1, feats.shape[-1])
    k = 0
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            if ids[b, t] == IMG:
                out[b, t] = rows[k]
                k += 1
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference(dtype):
    ids, text, feats = joint_embed_case(dtype, IMG)
    out = pc.joint_embed(ids, text, feats, IMG)
    assert out.dtype == dtype and out.shape == text.shape
    assert torch.equal(out, reference(ids, text, feats))


def test_text_only():
    ids = torch.randint(10, 50, (1, 5))
    text = torch.randn(1, 5, 8)
    assert torch.equal(pc.joint_embed(ids, text, torch.zeros(0, 4, 8), IMG), text)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    ids = torch.randint(10, 50, (1, 12))
    ids[0, 2:6] = IMG
    text, feats = torch.randn(1, 12, 8), torch.randn(1, 4, 8)
    out = pc.joint_embed(ids.cuda(), text.cuda(), feats.cuda(), IMG)
    assert torch.equal(out.cpu(), reference(ids, text, feats))


@pytest.mark.parametrize(
    "args, exc, fragment",
    [
        (
            (torch.full((1, 6), IMG), torch.randn(1, 6, 8), torch.randn(1, 4, 8)),
            ValueError,
            r"6 image tokens \(id 7\) but image_features hold 4 rows \(1 images x 4 tokens\)",
        ),
        (
            (torch.full((6,), IMG), torch.randn(1, 6, 8), torch.randn(1, 6, 8)),
            ValueError,
            r"input_ids expected \[B, T\]",
        ),
        ((torch.full((1, 6), 1.0), torch.randn(1, 6, 8), torch.randn(1, 6, 8)), TypeError, "integer dtype"),
        ((torch.full((1, 6), IMG), torch.randn(1, 5, 8), torch.randn(1, 6, 8)), ValueError, "text_embeds expected"),
        (
            (torch.full((1, 6), IMG), torch.randn(1, 6, 8), torch.randn(1, 6, 9)),
            ValueError,
            r"image_features expected \[N, L, 8\]",
        ),
        (
            (torch.full((1, 6), IMG), torch.randn(1, 6, 8), torch.randn(1, 6, 8).double()),
            TypeError,
            "image_features expected dtype",
        ),
    ],
)
def test_errors(args, exc, fragment):
    with pytest.raises(exc, match=fragment):
        pc.joint_embed(*args, IMG)
