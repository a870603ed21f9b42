"""Which pass a stream runs next, and what it does with the result. Written once for both schedules.

Context rule, shared by both schedules so that they give the same frames: at pass j, chunk n sees
chunk n - m as it was at pass min(j + m, final), plus the sinks, within the window (`batch.visible`).

* Stream batch: tick T runs pass T - c of every chunk c in flight as one row, oldest first; older
  chunks of the row are visible through the block-causal mask, finished ones through the ring.
* Sequential: one chunk at a time; the pass of chunk n at step j counts as tick n + j. Keys of passes
  1..final-1 are staged for the next chunks, which would have seen them in flight.

Context noise: the clean pass reads its chunk noised to `context_noise` (fresh noise from the stream's
context generator, one draw per chunk in chunk order), at that timestep; the emitted latent stays clean.
Guidance: a guided stream keeps a second cache for the empty prompt (`null_ring`, the same slots); every
request carries the row again under the empty prompt with that cache, and its keys/values fill it, so the
unconditional branch, too, sees the same context in both schedules.

Video to video (SDEdit): a chunk admitted with a queued `ChunkInput` starts from its input noised to its
strength s and runs the same `steps` passes over the schedule restricted to [0, s]; the row's pass tables
then depend on the start strength of each chunk too. Nothing else changes, so both schedules still agree.
A model with a structure input (`DiTConfig.structure_channels`) also reads each chunk's encoded input in
every pass of it, the clean pass too (`InFlight.structure`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from framecast.engine.batch import PassRequest, PassResult
from framecast.errors import InputError
from framecast.models.dit import CrossKV, PastKV
from framecast.sampling.flow import add_noise, noise_like, sdedit_sigmas
from framecast.stream.cache import RingKV
from framecast.stream.state import ChunkInput, Condition, InFlight, PassTable, StreamState

NOISE_BLOCK = 8  # chunks of noise drawn at once where that gives the same numbers (see `_next_noise`)
CACHE_LIMIT = 256  # pass tables (and 64 schedules) kept per stream; video-to-video strengths vary per chunk


def admit(state: StreamState, cond: Condition) -> None:
    """Start the next chunk; it joins the row last. It starts from noise drawn from the stream's own generator,
    or, when the front end queued an input for it (video to video), from that input noised to its strength:
    (1 - s) * latent + s * noise with the same noise (so strength 1 gives exactly the text-to-video chunk, unless
    the model also reads the input as its structure: then the chunk keeps it for every pass)."""
    x, strength, structure = _next_noise(state), 1.0, None  # (1, C, cf, H, W)
    if state.inputs:
        inp = state.inputs.popleft()
        latent = inp.latent.to(x)
        x, strength = add_noise(latent, x, inp.strength), inp.strength
        structure = latent if state.structured else None
    state.x = x if state.x is None else torch.cat([state.x, x], 2)
    state.inflight.append(InFlight(state.next_chunk, 0, cond, strength, structure))
    state.next_chunk += 1


def recondition(state: StreamState, cond: Condition) -> None:
    """Give `cond` to the chunks in flight that have run fewer than `cfg.switch_passes` of their denoising
    passes (a prompt change that should show sooner). Their finished passes stay as they were, and a chunk
    waiting only for its clean pass keeps its prompt."""
    below = min(state.cfg.switch_passes, state.cfg.steps)
    for c in state.inflight:
        if c.next_pass < below:
            c.cond = cond


def queue_input(state: StreamState, inp: ChunkInput) -> None:
    """Queue the input of the next chunk not yet admitted (video to video); `admit` takes inputs in order."""
    want = (1, *state.latent_shape)
    if tuple(inp.latent.shape) != want:
        raise InputError(f"a chunk input latent must have shape {want}, got {tuple(inp.latent.shape)}")
    if not 0.0 < inp.strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {inp.strength}")
    state.inputs.append(inp)


def _next_noise(state: StreamState) -> Tensor:
    """Noise (1, C, cf, H, W) of the next chunk: the numbers one draw per chunk gives, drawn a block at a time.

    The CPU generator fills normals 16 at a time, so when a chunk holds a multiple of 16 numbers, one draw
    of NOISE_BLOCK chunks gives the same numbers as NOISE_BLOCK draws (tested); otherwise one chunk a draw.
    """
    if state.noise is None or state.noise_used == state.noise.shape[0]:
        n = NOISE_BLOCK if state.generator.device.type == "cpu" and math.prod(state.latent_shape) % 16 == 0 else 1
        noise = noise_like((n, *state.latent_shape), state.generator, dtype=torch.float32)  # on the generator's device
        state.noise, state.noise_used = noise.to(state.ring.device, non_blocking=True), 0
    state.noise_used += 1
    return state.noise.narrow(0, state.noise_used - 1, 1)


def needs_chunk(state: StreamState) -> bool:
    """True if the next pass needs a new chunk (call `admit` first)."""
    return state.cfg.batch_steps or not state.inflight


def next_request(state: StreamState, head_dim: int, theta: float) -> PassRequest:
    """The stream's next pass as one batch row: every chunk in flight (sequential: the one chunk)."""
    rows = state.inflight
    tick = state.tick if state.cfg.batch_steps else rows[0].chunk + rows[0].next_pass
    epoch = state.plan.epoch(tick)
    if epoch != state.ring.epoch:
        for ring in _rings(state):
            ring.rotate_to(epoch, state.plan, head_dim, theta)
    slots, chunks = _ring_slots(state, rows[-1].chunk) if state.cfg.batch_steps else _sequential_slots(state, rows[0])
    return _request(state, rows, tick, slots, chunks)


def _rings(state: StreamState) -> list[RingKV]:
    """The stream's caches: the prompt's, and the empty prompt's when guided (same slots, same writes)."""
    return [state.ring] if state.null_ring is None else [state.ring, state.null_ring]


def apply_result(state: StreamState, res: PassResult) -> list[Tensor]:
    """Advance the chunks of the last request; return finished latents (C, cf, H, W), oldest first."""
    rows, cf, ring, table = state.inflight, state.latent_shape[1], state.ring, _table(state, state.inflight)
    x, v = state.x, res.velocity  # (1, C, F, H, W) each
    assert x is not None
    if table.dsigma is not None:  # Euler step of every frame, with euler_step's arithmetic
        dv = table.dsigma * v
        x = x + (dv if dv.dtype == v.dtype else dv.to(v.dtype))
    for rg, out in zip(_rings(state), (res, res.uncond), strict=False):
        assert out is not None, "a guided pass returns its unconditional row"
        for i in range(table.final):
            rg.write(rows[i].chunk, out.keys, out.values, out.row, i * ring.tokens)
        for i, p in table.staged:  # kept for the next chunks, which would have seen them in flight
            rg.stage(rows[i].chunk, p, out.keys, out.values, out.row, i * ring.tokens)
    done = [x[0, :, i * cf : (i + 1) * cf] for i in table.emitted]
    for r in rows:
        r.next_pass += 1
    state.x, state.tick = x, state.tick + 1
    if table.final:  # the oldest chunks have the highest passes: the finished ones leave from the front
        state.inflight = rows[table.final :]
        state.x = x[:, :, table.final * cf :] if state.inflight else None
    return done


def _table(state: StreamState, rows: list[InFlight]) -> PassTable:
    """Timesteps, Euler steps and the fate of every row for the row's pass pattern, built once per pattern
    (and per start strengths when a chunk of the row is video to video)."""
    key: tuple = tuple([r.next_pass for r in rows])
    if any(r.strength != 1.0 for r in rows):
        key = (key, tuple([r.strength for r in rows]))
    table = state.tables.get(key)
    if table is None:
        if len(state.tables) >= CACHE_LIMIT:
            state.tables.clear()
        table = state.tables[key] = _make_table(state, [r.next_pass for r in rows], [r.strength for r in rows])
    return table


def _schedule(state: StreamState, strength: float) -> Tensor:
    """Noise levels (steps + 1,) of a chunk that started at `strength` (the stream's own schedule at 1)."""
    if strength == 1.0:
        return state.sigmas
    sig = state.schedules.get(strength)
    if sig is None:
        if len(state.schedules) >= CACHE_LIMIT // 4:
            state.schedules.clear()
        sig = state.schedules[strength] = sdedit_sigmas(state.cfg.steps, state.cfg.shift, strength)
    return sig


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
    return PassTable(
        t=t[None].to(device),
        dsigma=d.view(1, 1, -1, 1, 1).to(device) if any(j < steps for j in passes) else None,
        final=leaving,
        staged=[] if cfg.batch_steps else [(i, j) for i, j in enumerate(passes) if 1 <= j < final],
        emitted=[i for i, j in enumerate(passes) if j == steps - 1],
    )


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
    slots = [s for s, c in enumerate(ring.chunks) if 0 <= c <= n - (final - j)]
    chunks = [ring.chunks[s] for s in slots]
    for m in range(1, final - j):
        s = ring.staged_at(n - m, j + m)
        if s is not None:
            slots.append(s)
            chunks.append(n - m)
    return slots, chunks


def _past(ring: RingKV, slots: list[int]) -> PastKV | None:
    """Keys/values (L, 1, M, h, hd) of the given store slots as one row (the whole ring: a view)."""
    return ring.gather(slots) if slots else None


def _request(state: StreamState, rows: list[InFlight], tick: int, slots: list[int], pc: list[int]) -> PassRequest:
    cfg, cf = state.cfg, state.latent_shape[1]
    assert state.x is not None
    chunks, table = [r.chunk for r in rows], _table(state, rows)
    x = state.x
    if cfg.context_noise and table.final:
        x = _noised_context(state, x, table.final)
    req = PassRequest(
        x=x,
        t=table.t,
        pos=state.plan.row_positions(chunks, tick),
        frame_chunk=chunks if cf == 1 else [c for c in chunks for _ in range(cf)],
        cross=_cross(state, rows),
        past=_past(state.ring, slots),
        past_chunk=pc,
        sinks=cfg.sink_chunks,
        window=cfg.window_chunks,
        structure=_structure(rows),
    )
    if state.null_ring is not None:  # guided: the same frames under the empty prompt, from its own cache
        uncond = dataclasses.replace(req, cross=_null_cross(state, x.shape[2]), past=_past(state.null_ring, slots))
        req.guidance, req.uncond = cfg.guidance, uncond
    return req


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
    (1 - s) * x + s * noise, one draw per chunk from the stream's context generator, oldest first (the
    order both schedules reach clean passes in). The row's own latents are left as they are."""
    s, cf, gen = state.cfg.context_noise, state.latent_shape[1], state.context_generator
    assert gen is not None
    noise = torch.cat([noise_like((1, *state.latent_shape), gen, dtype=torch.float32) for _ in range(final)], 2)
    head = x[:, :, : final * cf]
    noised = add_noise(head, noise.to(head.device, head.dtype), s)
    return torch.cat([noised, x[:, :, final * cf :]], 2)


def _null_cross(state: StreamState, frames: int) -> CrossKV:
    """The empty prompt's condition over `frames` frames (L, 1, F, T, h, hd), a cached view."""
    null = state.null
    assert null is not None, "a guided stream is created with the empty prompt's condition"
    if state.null_cross is None or state.null_cross[0] != frames:
        mod = None if null.mod is None else _expand_mod(null.mod, frames)
        state.null_cross = (frames, CrossKV(_expand(null.k, frames), _expand(null.v, frames), mod))
    return state.null_cross[1]


def _cross(state: StreamState, rows: list[InFlight]) -> CrossKV:
    """Condition (L, T, h, hd) of each chunk -> (L, 1, F, T, h, hd); a cached view when all chunks share one."""
    cf, cond = state.latent_shape[1], rows[0].cond
    if len(rows) > 1 and any(r.cond is not cond for r in rows):
        mods = [r.cond.mod for r in rows]
        mod = None if mods[0] is None else torch.cat([_expand_mod(m, cf) for m in mods if m is not None], 1)
        return CrossKV(_per_frame([r.cond.k for r in rows], cf), _per_frame([r.cond.v for r in rows], cf), mod)
    frames = cf * len(rows)
    if state.cross is None or state.cross[0] is not cond or state.cross[1] != frames:
        mod = None if cond.mod is None else _expand_mod(cond.mod, frames)
        state.cross = (cond, frames, CrossKV(_expand(cond.k, frames), _expand(cond.v, frames), mod))
    return state.cross[2]


def _per_frame(conds: list[Tensor], cf: int) -> Tensor:
    return torch.cat([_expand(c, cf) for c in conds], 2)


def _expand(c: Tensor, frames: int) -> Tensor:
    """(L, T, h, hd) -> (L, 1, frames, T, h, hd), a view."""
    return c[:, None, None].expand(-1, -1, frames, -1, -1, -1)


def _expand_mod(m: Tensor, frames: int) -> Tensor:
    """(D,) -> (1, frames, D), a view."""
    return m[None, None].expand(-1, frames, -1)
