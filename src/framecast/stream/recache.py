"""KV re-cache on a prompt change (`StreamConfig.recache`, LongLive's): the keys/values of the chunks in a stream's
ring are computed again under the new prompt, so that the context the next chunks attend to matches it.

The rule (`reference_stream(..., recache=...)` spells it out):

* A change waits for its first chunk k, the first admitted after it, and for every older chunk to finish (the
  stream batch admits nothing meanwhile: its row drains; the sequential schedule is there already).
* Before chunk k's first pass, the ring's chunks (the sinks and the last `window_chunks` chunks before k) run their
  final pass again, oldest first, under the new prompt: the input that pass read (`RecacheStore`), its timesteps,
  their positions at tick k, each seeing the re-cached ones before it (the visibility rule). That is one forward
  of a row of all of them under the block-causal mask, as the stream batch runs its row, and one batch for every
  stream that re-caches in the pass.
* From then on every chunk sees the chunks before k at that re-cached final pass (the staged keys of their
  earlier passes, computed under the old prompt, are dropped).
* A guided stream re-caches the prompt's ring only: the empty prompt's condition did not change, nor did what its
  ring read, so its keys/values would come out the same.

Both schedules reach the same (chunk, pass) pairs with the same context, so they still give the same frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from framecast.models.dit import CrossKV
from framecast.stream.request import PassRequest, PassResult
from framecast.stream.state import Condition, RecacheStore, StreamState

Forward = Callable[[list[PassRequest]], list[PassResult]]  # one batched forward (`causal_batch.run_batch`)


def switch(state: StreamState, cond: Condition) -> None:
    """A prompt change: re-cache under `cond` before the first pass of the next chunk admitted."""
    store = _store(state)
    store.pending, store.first = cond, state.next_chunk


def holding(state: StreamState) -> bool:
    """True while a re-cache waits for the chunks in flight to finish (no chunk is admitted meanwhile)."""
    return state.recache is not None and state.recache.pending is not None


def due(state: StreamState) -> bool:
    """True when the stream's next pass is its first chunk's after a change: re-cache first."""
    store = state.recache
    return (
        store is not None
        and store.pending is not None
        and bool(state.inflight)
        and (state.inflight[0].chunk >= store.first)
    )


def run(states: Sequence[StreamState], forward: Forward, head_dim: int, theta: float) -> None:
    """Re-cache every given stream (each `due`): one forward over all their re-cache rows."""
    reqs, owners = [], []
    for st in states:
        req = request(st, head_dim, theta)
        if req is None:  # nothing cached yet
            _finish(st)
        else:
            reqs.append(req)
            owners.append(st)
    if reqs:
        for st, req, res in zip(owners, reqs, forward(reqs), strict=True):
            apply(st, req, res)


def request(state: StreamState, head_dim: int, theta: float) -> PassRequest | None:
    """The ring's chunks, oldest first, as one row (1, C, n * cf, H, W) at their final pass under the new prompt,
    at the positions of tick `first` (the rings move to its epoch first); None when the ring is empty."""
    store, ring, plan = _store(state), state.ring, state.plan
    cond = store.pending
    assert cond is not None
    epoch = plan.epoch(store.first)
    for r in state.rings:
        r.rotate_to(epoch, plan, head_dim, theta)
    held = sorted((c, s) for s, c in enumerate(ring.chunks) if c >= 0)
    if not held:
        return None
    chunks, cf = [c for c, _ in held], state.latent_shape[1]
    idx = torch.tensor([s for _, s in held], device=store.x.device)
    structure = None if store.structure is None else _row(store.structure.index_select(0, idx))
    return PassRequest(
        x=_row(store.x.index_select(0, idx)),
        t=store.t.index_select(0, idx).flatten()[None],  # (1, n * cf)
        pos=plan.row_positions(chunks, store.first),
        frame_chunk=[c for c in chunks for _ in range(cf)],
        cross=_cross(cond, len(chunks) * cf),
        past=None,
        past_chunk=[],
        sinks=state.cfg.sink_chunks,
        window=state.cfg.window_chunks,
        structure=structure,
    )


def apply(state: StreamState, req: PassRequest, res: PassResult) -> None:
    """Write the re-cached keys/values into the prompt's ring (the empty prompt's stays) and take the change."""
    ring, cf = state.ring, state.latent_shape[1]
    for i, chunk in enumerate(req.frame_chunk[::cf]):
        ring.write_own(chunk, res.keys, res.values, res.row, i * ring.tokens)
    _finish(state)


def _finish(state: StreamState) -> None:
    store = _store(state)
    state.ring.drop_staged(store.first)
    store.pending, store.barrier = None, store.first


def _store(state: StreamState) -> RecacheStore:
    assert state.recache is not None, "the stream keeps no re-cache inputs (StreamConfig.recache is off)"
    return state.recache


def _row(x: torch.Tensor) -> torch.Tensor:
    """(n, C, cf, H, W) chunks -> one row (1, C, n * cf, H, W), oldest first."""
    return x.movedim(0, 1).flatten(1, 2)[None]


def _cross(cond: Condition, frames: int) -> CrossKV:
    """A condition (L, T, h, hd) over `frames` frames, one row: (L, 1, frames, T, h, hd)."""
    mod = None if cond.mod is None else cond.mod[None]
    return CrossKV(cond.k[:, None], cond.v[:, None], mod).per_frame(frames)
