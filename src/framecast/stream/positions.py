"""Temporal RoPE positions of an endless stream, kept bounded by periodic refresh.

Work is counted in ticks: in a stream batch, tick T runs pass p of chunk T - p for every chunk in
flight; a sequential stream runs the same (chunk, pass) pairs one at a time and uses the same tick
number, so both give the same positions and the same output.

Every `refresh_chunks` ticks (an epoch) all positions move back by that many chunks, and the sink
chunks are moved forward to sit just before the window. Only relative positions enter attention,
so the move is lossless for window chunks; for sinks it bounds their distance to new chunks.
Keys are cached after RoPE and re-rotated in place when the epoch changes (rotations compose).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from framecast.stream.config import StreamConfig


@dataclass(frozen=True)
class PositionPlan:
    cfg: StreamConfig
    chunk_frames: int

    def epoch(self, tick: int) -> int:
        return tick // self.cfg.refresh_chunks

    def chunk_shift(self, chunk: int, epoch: int) -> int:
        """Chunks by which `chunk` is moved at `epoch`: back with the epoch, sinks kept near the window."""
        c = self.cfg
        shift = -epoch * c.refresh_chunks
        if chunk < c.sink_chunks:
            shift += max(0, epoch * c.refresh_chunks - c.cache_chunks - c.final_pass)
        return shift

    def frame_positions(self, chunk: int, tick: int) -> Tensor:
        """Positions (chunk_frames,) long of the frames of `chunk` at `tick`."""
        start = (chunk + self.chunk_shift(chunk, self.epoch(tick))) * self.chunk_frames
        return torch.arange(start, start + self.chunk_frames)

    def frame_delta(self, chunk: int, from_epoch: int, to_epoch: int) -> int:
        """Temporal positions by which cached keys of `chunk` move between two epochs."""
        return (self.chunk_shift(chunk, to_epoch) - self.chunk_shift(chunk, from_epoch)) * self.chunk_frames
