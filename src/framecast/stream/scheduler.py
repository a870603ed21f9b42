"""Which pass a stream runs next, and what it does with the result. Written once for both schedules.

Context rule, shared by both schedules so that they give the same frames: at pass j, chunk n sees
chunk n - m as it was at pass min(j + m, final), plus the sinks, within the window (`batch.visible`).

* Stream batch: tick T runs pass T - c of every chunk c in flight as one row, oldest first; older
  chunks of the row are visible through the block-causal mask, finished ones through the ring.
* Sequential: one chunk at a time; the pass of chunk n at step j counts as tick n + j. Keys of passes
  1..final-1 are staged for the next chunks, which would have seen them in flight.

Sampler: "euler" steps every frame by x + (s' - s) v; "renoise" (`flow.renoise_step`) noises each chunk's clean
estimate afresh to its next level, with the `steps - 1` draws its chunk took when admitted (`InFlight.renoise`).

Context noise: the clean pass reads its chunk noised to `context_noise` (fresh noise from the stream's
context generator, one draw per chunk in chunk order), at that timestep; the emitted latent stays clean.
Guidance: a guided stream keeps a second cache for the empty prompt (`rings[1]`, the same slots, one store);
every request carries the row twice, under the prompt and under the empty prompt, each with its own cache
(one gather for both), and the second row's keys/values fill the second ring, so the unconditional branch,
too, sees the same context in both schedules.

Video to video (SDEdit): a chunk admitted with a queued `ChunkInput` starts from its input noised to its
strength s and runs the same `steps` passes over the schedule restricted to [0, s]; the row's pass tables
then depend on the start strength of each chunk too. Nothing else changes, so both schedules still agree.
A model with a structure input (`DiTConfig.structure_channels`) also reads each chunk's encoded input in
every pass of it, the clean pass too (`InFlight.structure`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from framecast.errors import InputError
from framecast.models.dit import CrossKV, PastKV
from framecast.sampling.flow import add_noise, renoise_step
from framecast.stream import recache
from framecast.stream.request import PassRequest, PassResult
from framecast.stream.state import ChunkInput, Condition, InFlight, PassTable, StreamState


def admit(state: StreamState, cond: Condition) -> None:
    """Start the next chunk; it joins the row last. It starts from noise drawn from the stream's own generator,
    or, when the front end queued an input for it (video to video), from that input noised to its strength:
    (1 - s) * latent + s * noise with the same noise (so strength 1 gives exactly the text-to-video chunk, unless
    the model also reads the input as its structure: then the chunk keeps it for every pass)."""
    x, strength, structure = state.noise.next(), 1.0, None  # (1, C, cf, H, W)
    if state.inputs:
        inp = state.inputs.popleft()
        latent = inp.latent.to(x)
        x, strength = add_noise(latent, x, inp.strength), inp.strength
        structure = latent if state.structured else None
    state.x = x if state.x is None else torch.cat([state.x, x], 2)
    fresh = None if state.renoise is None else _fresh_noise(state)
    state.inflight.append(InFlight(state.next_chunk, 0, cond, strength, structure, fresh))
    state.next_chunk += 1


def _fresh_noise(state: StreamState) -> Tensor:
    """The re-noise sampler's noise of a new chunk's steps 1..steps-1: (steps - 1, C, cf, H, W), drawn in chunk
    order from the stream's re-noise generator (so both schedules draw the same)."""
    draws = state.renoise
    assert draws is not None
    return torch.cat([draws.next() for _ in range(state.cfg.steps - 1)])


def recondition(state: StreamState, cond: Condition) -> None:
    """Give `cond` to the chunks in flight that have run fewer than `cfg.switch_passes` of their denoising
    passes (a prompt change that should show sooner). Their finished passes stay as they were, and a chunk
    waiting only for its clean pass keeps its prompt. With `cfg.recache` the ring is re-cached under `cond`
    before the next chunk's first pass (`stream.recache`)."""
    below = min(state.cfg.switch_passes, state.cfg.steps)
    for c in state.inflight:
        if c.next_pass < below:
            c.cond = cond
    if state.recache is not None:
        recache.switch(state, cond)


def queue_input(state: StreamState, inp: ChunkInput) -> None:
    """Queue the input of the next chunk not yet admitted (video to video); `admit` takes inputs in order."""
    want = (1, *state.latent_shape)
    if tuple(inp.latent.shape) != want:
        raise InputError(f"a chunk input latent must have shape {want}, got {tuple(inp.latent.shape)}")
    if not 0.0 < inp.strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {inp.strength}")
    state.inputs.append(inp)


def needs_chunk(state: StreamState) -> bool:
    """True if the next pass needs a new chunk (call `admit` first). A stream batch waiting to re-cache lets its
    chunks in flight finish first."""
    if not state.inflight:
        return True
    return state.cfg.batch_steps and (state.recache is None or not recache.holding(state))


def next_request(state: StreamState, head_dim: int, theta: float) -> PassRequest:
    """The stream's next pass as one batch row: every chunk in flight (sequential: the one chunk)."""
    rows = state.inflight
    tick = rows[0].chunk + rows[0].next_pass  # the same for every chunk of a stream batch row
    epoch = state.plan.epoch(tick)
    if epoch != state.ring.epoch:
        for ring in state.rings:
            ring.rotate_to(epoch, state.plan, head_dim, theta)
    slots, chunks = _ring_slots(state, rows[-1].chunk) if state.cfg.batch_steps else _sequential_slots(state, rows[0])
    return _request(state, rows, tick, slots, chunks)


def apply_result(state: StreamState, res: PassResult) -> list[Tensor]:
    """Advance the chunks of the last request; return finished latents (C, cf, H, W), oldest first."""
    rows, cf, ring, table = state.inflight, state.latent_shape[1], state.ring, _table(state, state.inflight)
    x, v = state.x, res.velocity  # (1, C, F, H, W) each
    assert x is not None
    if table.sigma is not None and table.sigma_next is not None:  # re-noise step of every frame
        x = renoise_step(x, v, table.sigma, table.sigma_next, _row_noise(state, rows, x))
    elif table.dsigma is not None:  # Euler step of every frame, with euler_step's arithmetic
        dv = table.dsigma * v
        x = x + (dv if dv.dtype == v.dtype else dv.to(v.dtype))
    for i in range(table.final):  # guided: both rows at once, the empty prompt's into its own ring
        ring.write(rows[i].chunk, res.keys, res.values, res.row, i * ring.tokens)
    for i, p in table.staged:  # kept for the next chunks, which would have seen them in flight
        ring.stage(rows[i].chunk, p, res.keys, res.values, res.row, i * ring.tokens)
    done = [x[0, :, i * cf : (i + 1) * cf] for i in table.emitted]
    for r in rows:
        r.next_pass += 1
    state.x, state.tick = x, state.tick + 1
    if table.final:  # the oldest chunks have the highest passes: the finished ones leave from the front
        state.inflight = rows[table.final :]
        state.x = x[:, :, table.final * cf :] if state.inflight else None
    return done


def _row_noise(state: StreamState, rows: list[InFlight], x: Tensor) -> Tensor:
    """Fresh noise (1, C, F, H, W) of the row: each chunk's draw for its next level, zeros where that level is 0
    (its last step, its clean pass)."""
    last, (C, cf, H, W) = state.cfg.steps - 1, state.latent_shape
    zeros = x.new_zeros((C, cf, H, W))
    parts = [r.renoise[r.next_pass] if r.renoise is not None and r.next_pass < last else zeros for r in rows]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, 1))[None]


def _table(state: StreamState, rows: list[InFlight]) -> PassTable:
    """Timesteps, Euler steps and the fate of every row for the row's pass pattern, built once per pattern
    (and per start strengths when a chunk of the row is video to video)."""
    key: tuple = tuple([r.next_pass for r in rows])
    if any(r.strength != 1.0 for r in rows):
        key = (key, tuple([r.strength for r in rows]))
    passes, strengths = [r.next_pass for r in rows], [r.strength for r in rows]
    return state.memo.tables.get(key, lambda: _make_table(state, passes, strengths))


def _schedule(state: StreamState, strength: float) -> Tensor:
    """Noise levels (steps + 1,) of a chunk that started at `strength` (the stream's own schedule at 1)."""
    if strength == 1.0:
        return state.sigmas
    return state.memo.schedules.get(strength, lambda: state.cfg.noise_levels(strength))


def _make_table(state: StreamState, passes: list[int], strengths: list[float]) -> PassTable:
    cfg, cf, device = state.cfg, state.latent_shape[1], state.ring.device
    steps, final = cfg.steps, cfg.final_pass
    rows = list(zip([_schedule(state, s) for s in strengths], passes, strict=True))  # (levels, pass) per chunk
    ctx = torch.tensor(cfg.context_noise, dtype=state.sigmas.dtype)  # the clean pass reads chunks at this level
    t = torch.cat([(s[j] if j < steps else ctx).repeat(cf) for s, j in rows]) * 1000.0
    zero = torch.zeros((), dtype=state.sigmas.dtype)
    d = torch.stack([s[j + 1] - s[j] if j < steps else zero for s, j in rows]).repeat_interleave(cf)
    leaving = sum(j == final for j in passes)
    assert all(j == final for j in passes[:leaving]), "chunks leave the row oldest first"
    stepping = any(j < steps for j in passes)
    sig = _renoise_levels(rows, steps, cf, device) if cfg.sampler == "renoise" and stepping else (None, None)
    return PassTable(
        t=t[None].to(device).expand(cfg.rows, -1),
        dsigma=d.view(1, 1, -1, 1, 1).to(device) if stepping else None,
        sigma=sig[0],
        sigma_next=sig[1],
        final=leaving,
        staged=[] if cfg.batch_steps else [(i, j) for i, j in enumerate(passes) if 1 <= j < final],
        emitted=[i for i, j in enumerate(passes) if j == steps - 1],
    )


def _renoise_levels(rows: list[tuple[Tensor, int]], steps: int, cf: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """sigma and sigma_next (1, 1, F, 1, 1) of every frame of a row of (levels, pass) chunks; 0 and 0 for a chunk at
    its clean pass, which takes no step (the re-noise step then leaves it as it is)."""
    zero = torch.zeros((), dtype=rows[0][0].dtype)
    now = torch.stack([s[j] if j < steps else zero for s, j in rows]).repeat_interleave(cf)
    nxt = torch.stack([s[j + 1] if j < steps else zero for s, j in rows]).repeat_interleave(cf)
    return now.view(1, 1, -1, 1, 1).to(device), nxt.view(1, 1, -1, 1, 1).to(device)


def _ring_slots(state: StreamState, newest: int) -> tuple[list[int], list[int]]:
    """Filled ring slots with chunk <= newest, and their chunks."""
    ring, chunks = state.ring, state.ring.chunks
    if ring.full and ring.last <= newest:  # the stream batch in steady state: the whole ring (a view)
        return ring.ring_slots(), list(chunks)
    slots = [s for s, c in enumerate(chunks) if 0 <= c <= newest]
    return slots, [chunks[s] for s in slots]


def _sequential_slots(state: StreamState, cur: InFlight) -> tuple[list[int], list[int]]:
    """Ring chunks at their final pass, plus staged chunks n - m at pass j + m for m < final - j."""
    n, j, final, ring = cur.chunk, cur.next_pass, state.cfg.final_pass, state.ring
    last = n - (final - j)
    if state.recache is not None:  # chunks before the last re-cache are seen at their final pass
        last = max(last, state.recache.barrier - 1)
    slots = [s for s, c in enumerate(ring.chunks) if 0 <= c <= last]
    chunks = [ring.chunks[s] for s in slots]
    for m in range(1, final - j):
        s = ring.staged_at(n - m, j + m)
        if s is not None:
            slots.append(s)
            chunks.append(n - m)
    return slots, chunks


def _request(state: StreamState, rows: list[InFlight], tick: int, slots: list[int], pc: list[int]) -> PassRequest:
    cfg, cf, R = state.cfg, state.latent_shape[1], state.cfg.rows
    assert state.x is not None
    chunks, table = [r.chunk for r in rows], _table(state, rows)
    x = state.x
    if cfg.context_noise and table.final:
        x = _noised_context(state, x, table.final)
    structure = _structure(rows)
    if state.recache is not None and table.final:
        _keep_final_inputs(state, rows[: table.final], x, table.t, structure)
    return PassRequest(
        x=x if R == 1 else x.expand(R, -1, -1, -1, -1),  # guided: the same frames under the empty prompt
        t=table.t,
        pos=state.plan.row_positions(chunks, tick),
        frame_chunk=chunks if cf == 1 else [c for c in chunks for _ in range(cf)],
        cross=_cross(state, rows),
        past=_context(state, slots),
        past_chunk=pc,
        sinks=cfg.sink_chunks,
        window=cfg.window_chunks,
        guidance=cfg.guidance,
        structure=structure if structure is None or R == 1 else structure.expand(R, -1, -1, -1, -1),
    )


def _keep_final_inputs(
    state: StreamState, rows: list[InFlight], x: Tensor, t: Tensor, structure: Tensor | None
) -> None:
    """Keep what the final passes of the row's first chunks read, by ring slot, for a later re-cache: latents
    x (1, C, F, H, W) (context noise included), timesteps t (R, F) and the structure input (1, Cs, F, H, W)."""
    store, cf = state.recache, state.latent_shape[1]
    assert store is not None
    for i, r in enumerate(rows):
        part = slice(i * cf, (i + 1) * cf)
        store.keep(
            state.ring.slot(r.chunk), x[0, :, part], t[0, part], None if structure is None else structure[0, :, part]
        )


def _context(state: StreamState, slots: list[int]) -> PastKV | list[PastKV] | None:
    """The row's context (L, R, M, h, hd): the stream batch's whole ring is one view (during warm-up, one
    gather); a sequential pass's ring chunks and staged keys go as views of their runs of slots, which the
    model concatenates once (no gather copy a pass)."""
    if not slots:
        return None
    return state.ring.gather_rows(slots) if state.cfg.batch_steps else state.ring.views(slots)


def _structure(rows: list[InFlight]) -> Tensor | None:
    """Structure input (1, C, F, H, W) of the row's chunks, zeros for chunks without one; None when none has one."""
    ref = next((r.structure for r in rows if r.structure is not None), None)
    if ref is None:
        return None
    if len(rows) == 1:
        return ref
    return torch.cat([ref.new_zeros(ref.shape) if r.structure is None else r.structure for r in rows], 2)


def _noised_context(state: StreamState, x: Tensor, final: int) -> Tensor:
    """x (1, C, F, H, W) with the first `final` chunks (at their clean pass) noised to `context_noise`:
    (1 - s) * x + s * noise, one draw per chunk from the stream's context noise, oldest first (the
    order both schedules reach clean passes in). The row's own latents are left as they are."""
    s, cf, draws = state.cfg.context_noise, state.latent_shape[1], state.context_noise
    assert draws is not None
    noise = draws.next() if final == 1 else torch.cat([draws.next() for _ in range(final)], 2)
    head = x[:, :, : final * cf]
    noised = add_noise(head, noise.to(head.dtype), s)
    return noised if final * cf == x.shape[2] else torch.cat([noised, x[:, :, final * cf :]], 2)


def _cross(state: StreamState, rows: list[InFlight]) -> CrossKV:
    """Condition (L, T, h, hd) of each chunk -> (L, R, F, T, h, hd), the empty prompt's as the second row
    when guided; a cached view when all chunks share one condition."""
    cf, cond = state.latent_shape[1], rows[0].cond
    if len(rows) > 1 and any(r.cond is not cond for r in rows):
        return _rows(state, [r.cond for r in rows], cf)
    frames, last = cf * len(rows), state.memo.cross
    if last is None or last[0] is not cond or last[1] != frames:
        state.memo.cross = last = (cond, frames, _rows(state, [cond], frames))
    return last[2]


def _rows(state: StreamState, conds: list[Condition], frames: int) -> CrossKV:
    """Each condition over `frames` frames, in turn, as the prompt's row, and the empty prompt's row when guided."""
    row = _per_frame(conds, frames)
    if state.null is None or not state.cfg.guided:
        return row
    null = _per_frame([state.null], frames * len(conds))
    mod = None if row.mod is None or null.mod is None else torch.cat([row.mod, null.mod])
    return CrossKV(torch.cat([row.k, null.k], 1), torch.cat([row.v, null.v], 1), mod)


def _per_frame(conds: list[Condition], frames: int) -> CrossKV:
    """Conditions (L, T, h, hd) -> (L, 1, len * frames, T, h, hd): each over `frames` frames, a view for one."""
    k = [_expand(c.k, frames) for c in conds]
    v = [_expand(c.v, frames) for c in conds]
    mods = [c.mod for c in conds]
    mod = None if mods[0] is None else torch.cat([_expand_mod(m, frames) for m in mods if m is not None], 1)
    if len(conds) == 1:
        return CrossKV(k[0], v[0], mod)
    return CrossKV(torch.cat(k, 2), torch.cat(v, 2), mod)


def _expand(c: Tensor, frames: int) -> Tensor:
    """(L, T, h, hd) -> (L, 1, frames, T, h, hd), a view."""
    return c[:, None, None].expand(-1, -1, frames, -1, -1, -1)


def _expand_mod(m: Tensor, frames: int) -> Tensor:
    """(D,) -> (1, frames, D), a view."""
    return m[None, None].expand(-1, frames, -1)
