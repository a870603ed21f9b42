"""Tiny random components built from the real constructors; nothing is downloaded."""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import framecast` sets it, before torch loads: idle
# torch threads sleep instead of spinning, so tests beside another busy process do not stall

import pytest  # noqa: E402
import torch  # noqa: E402

from framecast.models.config import DiTConfig
from framecast.models.dit import CausalWanDiT


def tiny_config(**kw: object) -> DiTConfig:
    base: dict[str, object] = dict(
        dim=32,
        num_heads=2,
        num_layers=2,
        ffn_dim=48,
        in_channels=4,
        out_channels=4,
        text_dim=12,
        freq_dim=16,
        chunk_frames=2,
        latent_height=4,
        latent_width=4,
    )
    base.update(kw)
    return DiTConfig(**base)  # type: ignore[arg-type]


def tiny_model(seed: int = 0, **kw: object) -> CausalWanDiT:
    torch.manual_seed(seed)
    model = CausalWanDiT(tiny_config(**kw)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # default init zeroes nothing, but make outputs depend strongly on inputs
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


class RandomTextEncoder:
    """A deterministic stand-in for a sentence encoder: each prompt maps to a seeded random vector."""

    def __init__(self, dim: int = 12, seq_len: int = 1) -> None:
        self.dim, self.seq_len = dim, seq_len

    def encode(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            rows.append(torch.randn(self.seq_len, self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


@pytest.fixture
def model() -> CausalWanDiT:
    return tiny_model()
