"""An independent RoPE in float64 angles, to check prospect's shifts against."""

import torch


def inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    # fp32, as transformers computes it; the rotations below take it from here.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rotate(x: torch.Tensor, positions, theta: float) -> torch.Tensor:
    """x [..., T, D] rotated at positions (int or [T]), math in float64, cast back."""
    D = x.shape[-1]
    pos = torch.as_tensor(positions, dtype=torch.float64).reshape(-1, 1)  # [T or 1, 1]
    ang = pos * inv_freq(D, theta).double()  # [T, D/2]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    xd = x.double()
    half = torch.cat([-xd[..., D // 2 :], xd[..., : D // 2]], -1)
    return (xd * cos + half * sin).to(x.dtype)
