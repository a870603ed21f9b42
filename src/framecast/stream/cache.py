"""The per-stream self-attention KV cache: a ring buffer of chunks with sinks that are never evicted,
plus the staging slots of a sequential stream. All memory is allocated once; nothing grows.

Layout: one store (2, L, S + G, N, heads, head_dim), keys then values, N tokens (one chunk) a slot.
The first S = sink_chunks + window_chunks slots are the ring (`k`, `v` are views of them): slot s holds
chunk `chunks[s]` (-1 when empty); sink chunks 0..sinks-1 own the first slots and later chunks overwrite
the window slots in turn. The G staging slots hold the keys of (chunk, pass) pairs of a sequential
stream that later chunks read (see `stream.scheduler`): pass p gets p + 1 slots, used in turn.
Keys and values are written straight into their slots, and a pass's context is one gather over slots.

A guided stream keeps two rings, the prompt's and the empty prompt's, with the same slots and the same
writes (`ring_rows`): they are views of one store (2, L, R, S + G, N, h, hd) and share their bookkeeping, so
the context of both rows is one gather (`gather_rows`), the whole ring of both rows is a view, and one
`write` (or `stage`) copies both rows of a pass's output at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from framecast.models.dit import PastKV
from framecast.models.rope import apply_rope, inv_freqs
from framecast.stream.memo import BoundedCache
from framecast.stream.positions import PositionPlan

EMPTY = (-1, -1)  # (chunk, pass) of an unused staging slot


def staging_slots(final_pass: int) -> list[int]:
    """Staging slots per pass 0..final-1: pass p (1 <= p < final) is read by the p chunks after it."""
    return [p + 1 if p >= 1 else 0 for p in range(final_pass)]


@dataclass
class RingKV:
    store: Tensor  # (2, L, S + G, N, h, hd): keys then values; S ring slots, then G staging slots
    chunks: list[int]  # (S,) chunk held by each ring slot, -1 = empty
    sinks: int
    stage_sizes: list[int] = field(default_factory=list)  # staging slots per pass, see `staging_slots`
    epoch: int = 0
    rows: Tensor | None = None  # (2, L, R, S + G, N, h, hd): the store of every row of a `ring_rows` group

    def __post_init__(self) -> None:
        S, (_, L, slots, N) = len(self.chunks), self.store.shape[:4]
        self.device, self.window, self.tokens = self.store.device, S - self.sinks, N
        self.k, self.v = self.store[0, :, :S], self.store[1, :, :S]  # (L, S, N, h, hd) views: the ring
        self.full, self.last = False, -1  # every ring slot filled; the chunk written last
        self.staged: list[tuple[int, int]] = [EMPTY] * (slots - S)  # (chunk, pass) per staging slot
        self._stage_start = [S + sum(self.stage_sizes[:p]) for p in range(len(self.stage_sizes))]
        # per slot: (R, N, h, hd) views of every layer's keys, then values, where R batch rows are copied to
        # (R = 1 for a ring of its own; every row of the group for a ring of `ring_rows`)
        rows = self.store[:, :, None] if self.rows is None else self.rows  # (2, L, R, S + G, N, h, hd)
        self._dst = [[rows[i, j, :, s] for i in range(2) for j in range(L)] for s in range(slots)]
        self.group: list[RingKV] = [self]  # the rings sharing this one's store and bookkeeping
        self._ring_view = PastKV(self.k.flatten(1, 2)[:, None], self.v.flatten(1, 2)[:, None])  # (L, 1, S * N, h, hd)
        self._ring_slots = list(range(S))
        self._angles: BoundedCache[tuple, tuple[Tensor, Tensor]] = BoundedCache(64)  # cos/sin by slot shifts
        self._gather_idx: BoundedCache[tuple[int, ...], Tensor] = BoundedCache(256)
        if self.rows is not None:  # every row's whole ring (L, R, S * N, h, hd): a view
            k, v = self.rows[0, :, :, :S], self.rows[1, :, :, :S]
            self._rows_view = PastKV(k.flatten(2, 3), v.flatten(2, 3))

    @classmethod
    def empty(cls, *dims: Any) -> RingKV:
        """A ring of its own: `ring_rows(1, *dims)` (layers, sinks, window, tokens, heads, head_dim, dtype,
        device, stage sizes)."""
        return ring_rows(1, *dims)[0]

    def slot(self, chunk: int) -> int:
        if chunk < self.sinks:
            return chunk
        return self.sinks + (chunk - self.sinks) % self.window

    def write(self, chunk: int, keys: list[Tensor], values: list[Tensor], row: int = 0, start: int = 0) -> None:
        """Store the keys/values of `chunk`, rotated at this ring's epoch, straight from a pass's output:
        per layer (B, N', h, hd), tokens start..start + N of batch row `row`."""
        s = self.slot(chunk)
        self._copy(s, keys, values, row, start)
        self.chunks[s] = chunk  # shared by the group
        full = self.full or min(self.chunks) >= 0
        for ring in self.group:
            ring.last, ring.full = chunk, full

    def write_own(self, chunk: int, keys: list[Tensor], values: list[Tensor], row: int, start: int) -> None:
        """Overwrite the keys/values of `chunk`, already in its slot, in this ring only (not the other rows of its
        group): per layer (B, N', h, hd), tokens start..start + N of batch row `row`. A re-cache writes so."""
        s, N, L = self.slot(chunk), self.tokens, self.store.shape[1]
        assert self.chunks[s] == chunk, f"chunk {chunk} is not in the ring"
        dst = [self.store[i, j, s] for i in range(2) for j in range(L)]  # (N, h, hd) views
        torch._foreach_copy_(dst, [t[row, start : start + N] for t in keys + values])

    def drop_staged(self, before: int) -> None:
        """Forget the staged keys of chunks before `before` (every row of the group): later chunks see those
        chunks at their final pass, in the ring (after a re-cache)."""
        for i, (chunk, _) in enumerate(self.staged):
            if 0 <= chunk < before:
                self.staged[i] = EMPTY

    def ring_slots(self) -> list[int]:
        """Every ring slot in order (`gather` of these is `ring_view`); do not modify."""
        return self._ring_slots

    def ring_view(self) -> PastKV:
        """Keys/values of the whole ring in slot order as one batch row (L, 1, S * N, h, hd): a view."""
        return self._ring_view

    def stage(self, chunk: int, p: int, keys: list[Tensor], values: list[Tensor], row: int, start: int) -> None:
        """Keep the keys/values of `chunk` at pass p (1 <= p < final) for later chunks; arguments as `write`."""
        s = self._stage_slot(chunk, p)
        self._copy(s, keys, values, row, start)
        self.staged[s - len(self.chunks)] = (chunk, p)

    def staged_at(self, chunk: int, p: int) -> int | None:
        """Store slot holding `chunk` at pass p, or None if it is not staged."""
        if chunk < 0 or not 1 <= p < len(self.stage_sizes):
            return None
        s = self._stage_slot(chunk, p)
        return s if self.staged[s - len(self.chunks)] == (chunk, p) else None

    def _stage_slot(self, chunk: int, p: int) -> int:
        return self._stage_start[p] + chunk % self.stage_sizes[p]

    def _copy(self, s: int, keys: list[Tensor], values: list[Tensor], row: int, start: int) -> None:
        """Rows row..row + R - 1 (R: the group's rows) of a pass's keys/values, tokens start..start + N, into
        slot s of every row's store, in one copy call."""
        N, R = self.tokens, len(self.group)
        if keys[0].size(0) != R:  # this stream's rows of a batch of several streams
            keys, values = [k[row : row + R] for k in keys], [v[row : row + R] for v in values]
        if start != 0 or keys[0].size(1) != N:  # one chunk of a row of several
            keys, values = [k.narrow(1, start, N) for k in keys], [v.narrow(1, start, N) for v in values]
        torch._foreach_copy_(self._dst[s], keys + values)  # one call for every layer's keys and values

    def gather(self, slots: list[int]) -> PastKV:
        """Keys/values of the given store slots, in that order, as one batch row: (L, 1, len * N, h, hd).

        The whole ring in slot order is a view (no copy); anything else is one gather.
        """
        if slots == self._ring_slots:
            return self._ring_view
        _, L, _, N, h, hd = self.store.shape
        k, v = self.store.index_select(2, self._index(slots)).view(2, L, 1, len(slots) * N, h, hd).unbind(0)
        return PastKV(k, v)

    def gather_rows(self, slots: list[int]) -> PastKV:
        """As `gather`, for every row of this ring's group at once: (L, R, len * N, h, hd)."""
        if self.rows is None:
            return self.gather(slots)
        if slots == self._ring_slots:
            return self._rows_view
        _, L, R, _, N, h, hd = self.rows.shape
        k, v = self.rows.index_select(3, self._index(slots)).view(2, L, R, len(slots) * N, h, hd).unbind(0)
        return PastKV(k, v)

    def views(self, slots: list[int]) -> list[PastKV]:
        """The same context as `gather_rows(slots)` as parts without a copy: one view (L, R, n * N, h, hd) per run
        of consecutive store slots, in order. The model's key concatenation then makes the only copy."""
        rows = self.store[:, :, None] if self.rows is None else self.rows  # (2, L, R, S + G, N, h, hd)
        parts, start = [], 0
        for i in range(1, len(slots) + 1):
            if i == len(slots) or slots[i] != slots[i - 1] + 1:
                a, b = slots[start], slots[i - 1] + 1
                parts.append(PastKV(rows[0, :, :, a:b].flatten(2, 3), rows[1, :, :, a:b].flatten(2, 3)))
                start = i
        return parts

    def _index(self, slots: list[int]) -> Tensor:
        key = tuple(slots)
        return self._gather_idx.get(key, lambda: torch.tensor(key, device=self.device))

    def rotate_to(self, epoch: int, plan: PositionPlan, head_dim: int, theta: float) -> None:
        """Re-rotate every cached key in place from this ring's epoch to `epoch` (exact: rotations compose).

        One rotation of the whole ring, each slot by its own temporal shift (none for most sinks and
        empty slots). Staged keys need none: a staged (chunk, pass) is only read at the tick it was written.
        """
        if epoch == self.epoch:
            return
        deltas = tuple([plan.frame_delta(c, self.epoch, epoch) if c >= 0 else 0 for c in self.chunks])
        if any(deltas):
            cos, sin = self._shift_angles(deltas, head_dim, theta)
            self.k.copy_(apply_rope(self.k, cos, sin))
        self.epoch = epoch

    def _shift_angles(self, deltas: tuple[int, ...], head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
        """cos, sin (1, S, 1, 1, hd / 2) moving each slot by its temporal shift, as `rope.shift_frames` does."""

        def make() -> tuple[Tensor, Tensor]:
            f_inv = inv_freqs(head_dim, theta)[0]  # (df / 2,) float64; spatial angles stay zero
            ang = torch.zeros(len(deltas), head_dim // 2, dtype=torch.float64)
            ang[:, : f_inv.numel()] = torch.tensor(deltas, dtype=torch.float64)[:, None] * f_inv
            ang = ang.view(1, len(deltas), 1, 1, -1).to(self.device)
            return ang.cos().float(), ang.sin().float()

        return self._angles.get((deltas, head_dim, theta), make)

    def nbytes(self) -> int:
        """Bytes of the ring and the staging slots (fixed for the life of the stream)."""
        return self.store.numel() * self.store.element_size()


def ring_rows(
    rows: int,
    layers: int,
    sinks: int,
    window: int,
    tokens: int,
    heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    stage_sizes: list[int] | None = None,
) -> list[RingKV]:
    """`rows` rings with the same layout over one store (2, L, R, S + G, N, h, hd): one gather reads the
    context of every row. One row is a contiguous store (2, L, S + G, N, h, hd) of its own."""
    sizes = stage_sizes or []
    shape = (2, layers, rows, sinks + window + sum(sizes), tokens, heads, head_dim)
    store = torch.zeros(shape, dtype=dtype, device=device)
    if rows == 1:
        return [RingKV(store[:, :, 0].contiguous(), [-1] * (sinks + window), sinks, sizes)]
    group = [RingKV(store[:, :, r], [-1] * (sinks + window), sinks, list(sizes), rows=store) for r in range(rows)]
    for ring in group:  # one bookkeeping for all: the same slots hold the same chunks in every row
        ring.chunks, ring.staged, ring.group = group[0].chunks, group[0].staged, group
    return group
