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

from dataclasses import dataclass, field

import torch
from torch import Tensor

from framecast.stream.config import StreamConfig


@dataclass(frozen=True)
class PositionPlan:
    cfg: StreamConfig
    chunk_frames: int
    device: torch.device = field(default=torch.device("cpu"), compare=False)  # where row positions go
    # positions (1, P) that rows of window chunks take, in order: a row's positions are a view of it
    _table: Tensor = field(init=False, repr=False, compare=False)
    _first: int = field(init=False, repr=False, compare=False)  # position of _table[0, 0]
    _views: dict[tuple[int, int], Tensor] = field(init=False, repr=False, compare=False)  # (start, F) -> view

    def __post_init__(self) -> None:
        # window chunks of the pass at tick T are T - final .. T, moved back by epoch * refresh
        first, last = -(self.cfg.final_pass + 1) * self.chunk_frames, (self.cfg.refresh_chunks + 1) * self.chunk_frames
        object.__setattr__(self, "_table", torch.arange(first, last, device=self.device)[None])
        object.__setattr__(self, "_first", first)
        object.__setattr__(self, "_views", {})

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

    def row_positions(self, chunks: list[int], tick: int) -> Tensor:
        """Positions (1, F) long, on `device`, of the frames of a row's chunks (oldest first) at `tick`.

        Consecutive window chunks have consecutive positions: a view of a table built once.
        """
        cf, epoch = self.chunk_frames, self.epoch(tick)
        if chunks[0] >= self.cfg.sink_chunks and chunks[-1] - chunks[0] == len(chunks) - 1:
            a, F = (chunks[0] + self.chunk_shift(chunks[0], epoch)) * cf - self._first, len(chunks) * cf
            view = self._views.get((a, F))
            if view is None and a >= 0 and a + F <= self._table.shape[1]:
                view = self._views[(a, F)] = self._table.narrow(1, a, F)
            if view is not None:
                return view
        starts = [(c + self.chunk_shift(c, epoch)) * cf for c in chunks]
        return torch.tensor([[s + i for s in starts for i in range(cf)]], device=self.device)
