"""The per-stream self-attention KV cache: a ring buffer of chunks with sinks that are never evicted.

Layout: k, v (L, S, N, heads, head_dim) with S = sink_chunks + window_chunks slots of N tokens (one
chunk). Slot s holds chunk `chunks[s]` (-1 when empty). Sink chunks 0..sinks-1 own the first slots;
later chunks overwrite the window slots in turn. Memory is fixed at creation; nothing grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from framecast.models.rope import shift_frames
from framecast.stream.positions import PositionPlan


@dataclass
class RingKV:
    k: Tensor  # (L, S, N, h, hd)
    v: Tensor  # (L, S, N, h, hd)
    chunks: list[int]  # (S,) chunk held by each slot, -1 = empty
    sinks: int
    epoch: int = 0

    @classmethod
    def empty(
        cls,
        layers: int,
        sinks: int,
        window: int,
        tokens: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> RingKV:
        shape = (layers, sinks + window, tokens, heads, head_dim)
        z = torch.zeros(shape, dtype=dtype, device=device)
        return cls(z, z.clone(), [-1] * (sinks + window), sinks)

    @property
    def window(self) -> int:
        return self.k.shape[1] - self.sinks

    def slot(self, chunk: int) -> int:
        if chunk < self.sinks:
            return chunk
        return self.sinks + (chunk - self.sinks) % self.window

    def write(self, chunk: int, k: Tensor, v: Tensor) -> None:
        """Store the keys/values (L, N, h, hd) of `chunk`, rotated at this ring's epoch."""
        s = self.slot(chunk)
        self.k[:, s].copy_(k)
        self.v[:, s].copy_(v)
        self.chunks[s] = chunk

    def rotate_to(self, epoch: int, plan: PositionPlan, head_dim: int, theta: float) -> None:
        """Re-rotate every cached key in place from this ring's epoch to `epoch` (exact)."""
        if epoch == self.epoch:
            return
        for s, chunk in enumerate(self.chunks):
            delta = plan.frame_delta(chunk, self.epoch, epoch) if chunk >= 0 else 0
            if delta:
                self.k[:, s] = shift_frames(self.k[:, s], delta, head_dim, theta)
        self.epoch = epoch

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
