"""3D rotary position embedding over (frame, height, width), as in Wan2.1.

The head dimension d is split into a temporal part d - 4 * (d // 6) and two spatial parts
2 * (d // 6) each; adjacent channel pairs (2i, 2i+1) rotate by angle pos * theta^(-2i / d_part).
Angles are computed from positions on the fly, so any position (also a negative shift used to
re-position cached keys) is exact and no table bounds the stream length.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor


def split_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of the (frame, height, width) parts of one head."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@lru_cache(maxsize=16)
def inv_freqs(head_dim: int, theta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse frequencies (float64) of the frame, height and width parts: (d_part / 2,) each."""
    return tuple(  # type: ignore[return-value]
        1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d) for d in split_dims(head_dim)
    )


def rope_angles(frame_pos: Tensor, grid: tuple[int, int], head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin for every token of frames at `frame_pos`.

    frame_pos: (B, F) temporal positions; grid: token grid (h, w) of one frame.
    Returns cos, sin: (B, F * h * w, 1, head_dim / 2) float32, tokens in (frame, row, col) order.
    """
    f_inv, h_inv, w_inv = (t.to(frame_pos.device) for t in inv_freqs(head_dim, theta))
    h, w = grid
    B, F = frame_pos.shape
    ang_f = frame_pos.to(torch.float64)[..., None] * f_inv  # (B, F, df/2)
    ang_h = torch.arange(h, device=frame_pos.device, dtype=torch.float64)[:, None] * h_inv  # (h, dh/2)
    ang_w = torch.arange(w, device=frame_pos.device, dtype=torch.float64)[:, None] * w_inv  # (w, dw/2)
    ang = torch.cat(
        [
            ang_f[:, :, None, None, :].expand(B, F, h, w, -1),
            ang_h[None, None, :, None, :].expand(B, F, h, w, -1),
            ang_w[None, None, None, :, :].expand(B, F, h, w, -1),
        ],
        dim=-1,
    ).reshape(B, F * h * w, 1, head_dim // 2)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of x: (B, N, heads, head_dim) by angles cos/sin (B, N, 1, hd/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, N, heads, hd/2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def shift_frames(keys: Tensor, shift: int, head_dim: int, theta: float) -> Tensor:
    """Move rotated keys of whole frames by `shift` temporal positions (exact: rotations compose).

    keys: (..., F * h * w, heads, head_dim), already rotated at some positions p; the result equals
    the same keys rotated at p + shift. Spatial positions are unchanged.
    """
    lead = keys.shape[:-3]
    n = keys.shape[-3]
    flat = keys.reshape(-1, n, *keys.shape[-2:])  # (B', N, heads, hd)
    pos = torch.full((1, 1), float(shift), device=keys.device)
    f_inv = inv_freqs(head_dim, theta)[0].to(keys.device)
    ang_f = pos.to(torch.float64)[..., None] * f_inv  # (1, 1, df/2)
    zeros = torch.zeros(head_dim // 2 - ang_f.shape[-1], dtype=torch.float64, device=keys.device)
    # spatial angles are zero for a pure temporal shift
    ang = torch.cat([ang_f.reshape(-1), zeros]).reshape(1, 1, 1, head_dim // 2)
    out = apply_rope(flat, ang.cos().float(), ang.sin().float())
    return out.reshape(*lead, n, *keys.shape[-2:])
