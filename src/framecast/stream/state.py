"""Typed per-stream state: everything a stream remembers between passes, owned by the stream.

Nothing here lives on an `nn.Module`; a model serves any number of `StreamState`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from framecast.models.config import DiTConfig
from framecast.sampling.flow import sigmas
from framecast.stream.cache import RingKV
from framecast.stream.config import StreamConfig
from framecast.stream.positions import PositionPlan


@dataclass
class Condition:
    """Text condition of one chunk: cross-attention keys/values (L, T, h, hd)."""

    k: Tensor
    v: Tensor


@dataclass
class InFlight:
    """A chunk being denoised: its latent (C, cf, H, W) and the index of its next pass."""

    chunk: int
    x: Tensor
    next_pass: int
    cond: Condition


@dataclass
class Staged:
    """Keys/values (L, N, h, hd) of one (chunk, pass), kept by a sequential stream for later chunks."""

    k: Tensor
    v: Tensor


@dataclass
class StreamState:
    cfg: StreamConfig
    plan: PositionPlan
    ring: RingKV
    generator: torch.Generator
    sigmas: Tensor  # (steps + 1,) noise levels, last one 0
    latent_shape: tuple[int, int, int, int]  # (C, cf, H, W) of one chunk
    inflight: list[InFlight] = field(default_factory=list)
    staged: dict[tuple[int, int], Staged] = field(default_factory=dict)
    next_chunk: int = 0
    tick: int = 0

    @classmethod
    def create(
        cls, model_cfg: DiTConfig, cfg: StreamConfig, seed: int, dtype: torch.dtype, device: torch.device
    ) -> StreamState:
        mc = model_cfg
        tokens = mc.chunk_frames * mc.tokens_per_frame
        ring = RingKV.empty(
            mc.num_layers, cfg.sink_chunks, cfg.window_chunks, tokens, mc.num_heads, mc.head_dim, dtype, device
        )
        gen = torch.Generator().manual_seed(seed)  # on the CPU: the same seed gives the same noise on any device
        shape = (mc.in_channels, mc.chunk_frames, mc.latent_height, mc.latent_width)
        return cls(cfg, PositionPlan(cfg, mc.chunk_frames), ring, gen, sigmas(cfg.steps, cfg.shift), shape)

    def memory_bytes(self) -> int:
        """Bytes of cached keys/values (ring plus staged), the part of a stream that scales with the model."""
        staged = sum(s.k.numel() * s.k.element_size() * 2 for s in self.staged.values())
        return self.ring.nbytes() + staged
