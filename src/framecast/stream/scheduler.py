"""Which pass a stream runs next, and what it does with the result. Written once for both schedules.

Context rule, shared by both schedules so that they give the same frames: at pass j, chunk n sees
chunk n - m as it was at pass min(j + m, final), plus the sinks, within the window (`batch.visible`).

* Stream batch: tick T runs pass T - c of every chunk c in flight as one row, oldest first; older
  chunks of the row are visible through the block-causal mask, finished ones through the ring.
* Sequential: one chunk at a time; the pass of chunk n at step j counts as tick n + j. Keys of passes
  1..final-1 are staged for the next chunks, which would have seen them in flight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from framecast.engine.batch import PassRequest, PassResult
from framecast.sampling.flow import euler_step, noise_like
from framecast.stream.state import Condition, InFlight, Staged, StreamState


def admit(state: StreamState, cond: Condition) -> None:
    """Start the next chunk from noise drawn from the stream's own generator."""
    noise = noise_like(state.latent_shape, state.generator, dtype=torch.float32)  # (C, cf, H, W), on the CPU
    x = noise.to(state.ring.k.device, non_blocking=True)
    state.inflight.append(InFlight(state.next_chunk, x, 0, cond))
    state.next_chunk += 1


def needs_chunk(state: StreamState) -> bool:
    """True if the next pass needs a new chunk (call `admit` first)."""
    return state.cfg.batch_steps or not state.inflight


def next_request(state: StreamState, head_dim: int, theta: float) -> PassRequest:
    batch = state.cfg.batch_steps
    rows = state.inflight if batch else state.inflight[:1]
    tick = state.tick if batch else rows[0].chunk + rows[0].next_pass
    state.ring.rotate_to(state.plan.epoch(tick), state.plan, head_dim, theta)
    ctx = _ring_context(state, rows[-1].chunk) if batch else _sequential_context(state, rows[0])
    return _request(state, rows, tick, *ctx)


def apply_result(state: StreamState, res: PassResult) -> list[Tensor]:
    """Advance the chunks of the last request; return finished latents (C, cf, H, W), oldest first."""
    rows = state.inflight if state.cfg.batch_steps else state.inflight[:1]
    cf = state.latent_shape[1]
    per = res.keys[0].shape[0] // (len(rows) * cf)  # tokens per frame
    done: list[Tensor] = []
    for i, r in enumerate(rows):
        if _advance(state, r, res, i * cf, per):
            done.append(r.x)
    state.inflight = [r for r in state.inflight if r.next_pass <= state.cfg.final_pass]
    state.tick += 1
    return done


def _advance(state: StreamState, r: InFlight, res: PassResult, frame: int, per: int) -> bool:
    """Apply one pass to chunk r, whose frames start at `frame` of the row; True if r just became clean."""
    cfg, j, cf = state.cfg, r.next_pass, state.latent_shape[1]
    if j < cfg.steps:
        r.x = euler_step(r.x, res.velocity[:, frame : frame + cf], state.sigmas[j], state.sigmas[j + 1])
    if j == cfg.final_pass:
        state.ring.write(r.chunk, *_slice_kv(res, frame * per, (frame + cf) * per))
    elif not cfg.batch_steps and j >= 1:
        state.staged[(r.chunk, j)] = Staged(*_slice_kv(res, frame * per, (frame + cf) * per))
    r.next_pass += 1
    return j == cfg.steps - 1


def _slice_kv(res: PassResult, a: int, b: int) -> tuple[Tensor, Tensor]:
    """Keys and values of tokens a..b of the row, all layers: (L, N, h, hd) each."""
    return torch.stack([k[a:b] for k in res.keys]), torch.stack([v[a:b] for v in res.values])


def _ring_context(state: StreamState, newest: int) -> tuple[Tensor | None, Tensor | None, list[int]]:
    """Filled ring slots with chunk <= newest: keys/values (L, M, h, hd) and their chunks."""
    ring = state.ring
    slots = [s for s, c in enumerate(ring.chunks) if 0 <= c <= newest]
    if not slots:
        return None, None, []
    chunks = [ring.chunks[s] for s in slots]
    if len(slots) == len(ring.chunks):
        return ring.k.flatten(1, 2), ring.v.flatten(1, 2), chunks
    idx = torch.tensor(slots, device=ring.k.device)
    return ring.k[:, idx].flatten(1, 2), ring.v[:, idx].flatten(1, 2), chunks


def _sequential_context(state: StreamState, cur: InFlight) -> tuple[Tensor | None, Tensor | None, list[int]]:
    """Ring chunks at their final pass, plus staged chunks n - m at pass j + m for m < final - j."""
    n, j, final = cur.chunk, cur.next_pass, state.cfg.final_pass
    state.staged = {key: s for key, s in state.staged.items() if key[0] + key[1] >= n}
    k, v, chunks = _ring_context(state, n - (final - j))
    ks, vs = ([k] if k is not None else []), ([v] if v is not None else [])
    for m in range(1, final - j):
        s = state.staged.get((n - m, j + m))
        if s is not None:
            ks.append(s.k)
            vs.append(s.v)
            chunks.append(n - m)
    if not ks:
        return None, None, []
    return torch.cat(ks, 1), torch.cat(vs, 1), chunks


def _request(
    state: StreamState, rows: list[InFlight], tick: int, pk: Tensor | None, pv: Tensor | None, pc: list[int]
) -> PassRequest:
    cfg, s = state.cfg, state.sigmas
    cf = state.latent_shape[1]
    t = torch.cat([(s[r.next_pass] if r.next_pass < cfg.steps else s[-1]).repeat(cf) for r in rows]) * 1000.0
    return PassRequest(
        x=torch.cat([r.x for r in rows], 1),
        t=t,
        pos=torch.cat([state.plan.frame_positions(r.chunk, tick) for r in rows]),
        frame_chunk=[r.chunk for r in rows for _ in range(cf)],
        cross_k=_per_frame([r.cond.k for r in rows], cf),
        cross_v=_per_frame([r.cond.v for r in rows], cf),
        past_k=pk,
        past_v=pv,
        past_chunk=pc,
        sinks=cfg.sink_chunks,
        window=cfg.window_chunks,
    )


def _per_frame(conds: list[Tensor], cf: int) -> Tensor:
    """Condition (L, T, h, hd) of each chunk -> (L, F, T, h, hd); a view when all chunks share one."""
    if all(c is conds[0] for c in conds):
        return conds[0][:, None].expand(-1, cf * len(conds), -1, -1, -1)
    return torch.cat([c[:, None].expand(-1, cf, -1, -1, -1) for c in conds], 1)
