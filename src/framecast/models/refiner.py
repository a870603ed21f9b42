"""A convolutional refiner of the DiT's output at latent resolution (`DiTConfig.refiner_channels`).

The DiT draws through 2x2 patches: a latent frame of 8x8 cells is 16 tokens, each a 16x16-pixel square, and
a 15-pixel object straddles up to four of them. Fine detail (a square's corners, a star's points) then has to
be agreed between tokens through attention, and a small DiT draws such objects as soft blobs. The refiner
looks at every latent cell with its neighbours: per latent frame, 3x3 convolutions over the noisy input, the
DiT's output and the structure input, modulated (FiLM) by the frame's conditioning vector (timestep and
prompt), add a correction to the DiT's output. Frames are refined one by one, so causality and the KV cache
are untouched. Its last convolution starts at zero: a model grown with a refiner draws what it drew before.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GROUPS = 8


class _Block(nn.Module):
    """GroupNorm, FiLM from the conditioning vector, SiLU, 3x3 convolution; residual."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, channels)
        self.film = nn.Linear(cond_dim, 2 * channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        """h: (N, K, H, W); cond: (N, cond_dim) -> (N, K, H, W)."""
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)  # (N, K, 1, 1) each
        return h + self.conv(torch.nn.functional.silu(self.norm(h) * (1 + scale) + shift))


class LatentRefiner(nn.Module):
    """(noisy input, DiT output, structure) per latent frame + conditioning -> a correction of the output."""

    def __init__(self, latent_channels: int, structure_channels: int, channels: int, cond_dim: int, blocks: int = 2):
        super().__init__()
        if channels % GROUPS:
            raise ValueError(f"refiner channels must be a multiple of {GROUPS}, got {channels}")
        self.structure_channels = structure_channels
        self.conv_in = nn.Conv2d(2 * latent_channels + structure_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList(_Block(channels, cond_dim) for _ in range(blocks))
        self.conv_out = nn.Conv2d(channels, latent_channels, 3, padding=1)
        for p in self.conv_out.parameters():
            nn.init.zeros_(p)

    def forward(self, x: Tensor, out: Tensor, structure: Tensor | None, cond: Tensor) -> Tensor:
        """x, out: (B, C, F, H, W); structure: (B, Cs, F, H, W) or None (zeros); cond: (B, F, D) -> (B, C, F, H, W)."""
        B, C, Fr, H, W = out.shape
        dt = self.conv_in.weight.dtype  # computes in its own dtype (float32 in a half-precision DiT)
        parts = [x.to(dt), out.to(dt)]
        if self.structure_channels:
            s = structure if structure is not None else out.new_zeros(B, self.structure_channels, Fr, H, W)
            parts.append(s.to(dt))
        h = torch.cat(parts, dim=1).transpose(1, 2).flatten(0, 1)  # (B * F, 2C + Cs, H, W)
        c = cond.flatten(0, 1).to(dt)  # (B * F, D)
        h = self.conv_in(h)
        for blk in self.blocks:
            h = blk(h, c)
        delta = self.conv_out(torch.nn.functional.silu(h))  # (B * F, C, H, W)
        return out + delta.unflatten(0, (B, Fr)).transpose(1, 2).to(out.dtype)
