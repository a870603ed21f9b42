"""The streaming algorithm as a plain loop: the oracle that the fast paths (the stream batch and the sequential
schedule of `stream.scheduler`, the ring and staging of `stream.cache`, the batching of the causal family) are
tested against. One stream, one chunk at a time, one forward per (chunk, pass), keys/values in a plain dict
that is never evicted. Slow on purpose, and used by tests only; it imports nothing it is the oracle of.

The rule it spells out (docs/architecture.md, "What a chunk sees"): chunk n runs passes j = 0..final (final =
`cfg.final_pass`: the clean pass with `clean_pass`, else the last denoising pass) at tick n + j, and at pass j
it sees chunk c = n - m (m >= 1) as it was at pass min(j + m, final), if c is a sink or m <= window. Keys are
cached after RoPE: a key written at tick w and read at tick r moves by the refresh between their epochs.
After each denoising pass the chunk steps to its next level: Euler, or (sampler "renoise") its clean estimate
noised afresh, with the `steps - 1` draws it took from the re-noise generator when it started.
A KV re-cache before chunk k (`recache`) re-runs the final passes of the chunks the ring holds under the new
prompt; from then on the chunks before k are seen at that final pass.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import Tensor

from framecast.errors import InputError
from framecast.models.config import DiTConfig
from framecast.models.dit import CausalWanDiT, CrossKV, PastKV
from framecast.models.rope import shift_frames
from framecast.sampling.flow import add_noise, noise_like, renoise_step
from framecast.stream.config import StreamConfig
from framecast.stream.positions import PositionPlan
from framecast.stream.state import CONTEXT_SEED, RENOISE_SEED, ChunkInput, Condition

KV = dict[tuple[int, int], tuple[list[Tensor], list[Tensor], int]]  # (chunk, pass) -> keys, values per layer
# (1, N, h, hd), and the tick they were computed at (their positions)
Final = tuple[Tensor, Tensor, Tensor | None]  # what a chunk's final pass read: latents, timesteps, structure


@torch.inference_mode()
def reference_stream(
    model: CausalWanDiT,
    cfg: StreamConfig,
    conds: Callable[[int], Condition] | Sequence[Condition],
    chunks: int,
    seed: int,
    null: Condition | None = None,
    inputs: Sequence[ChunkInput | None] | None = None,
    recache: Collection[int] = (),
) -> Tensor:
    """The first `chunks` finished latents (chunks, C, cf, H, W) of one stream (float32, CPU).

    conds: the condition of chunk n (a prompt switch is a change between chunks); null: the empty prompt's
    condition (needed when guided); inputs: the video-to-video input of chunk n, or None (text to video);
    recache: chunks k that re-cache (`StreamConfig.recache`): before chunk k's first pass, the final pass of every
    chunk the ring holds (the sinks and the last `window_chunks` before k) runs again under conds(k), oldest first,
    at the positions of tick k, each seeing the re-cached ones before it; from then on the chunks before k are seen
    at that final pass. The empty prompt's cache stays.
    """
    mc, final, cf = model.config, cfg.final_pass, model.config.chunk_frames
    if cfg.guided and null is None:
        raise InputError("a guided stream (guidance != 1) needs the empty prompt's condition")
    plan = PositionPlan(cfg, cf)
    gen = torch.Generator().manual_seed(seed)  # the noise each chunk starts from
    ctx_gen = torch.Generator().manual_seed(seed + CONTEXT_SEED)  # the clean pass's context noise
    fresh_gen = torch.Generator().manual_seed(seed + RENOISE_SEED)  # the re-noise sampler's noise
    shape = (1, mc.in_channels, cf, mc.latent_height, mc.latent_width)
    caches: list[KV] = [{}, {}]  # the prompt's keys/values, the empty prompt's (guided)
    finals: dict[int, Final] = {}  # what each chunk's final pass read
    done, barrier = [], 0  # barrier: the last re-cache's chunk
    for n in range(chunks):
        cond = conds(n) if callable(conds) else conds[n]
        if n in recache:
            _recache(model, cfg, plan, caches[0], finals, n, cond)
            barrier = n
        branches = [(cond, caches[0])] + ([(null, caches[1])] if cfg.guided and null is not None else [])
        inp = inputs[n] if inputs is not None and n < len(inputs) else None
        noise = noise_like(shape, gen, dtype=torch.float32)  # (1, C, cf, H, W)
        renoise = cfg.sampler == "renoise"
        fresh = [noise_like(shape, fresh_gen) for _ in range(cfg.steps - 1)] if renoise else []  # steps 1..
        x, sig, structure = noise, cfg.noise_levels(), None  # sig: (steps + 1,)
        if inp is not None:  # SDEdit: start from the input noised to s, the schedule restricted to [0, s]
            x, sig = add_noise(inp.latent, noise, inp.strength), cfg.noise_levels(inp.strength)
            structure = inp.latent if mc.structure_channels else None  # (1, Cs, cf, H, W), every pass
        for j in range(final + 1):
            tick = n + j
            pos = plan.frame_positions(n, tick)[None]  # (1, cf)
            if j < cfg.steps:  # a denoising pass
                x_in, t = x, (sig[j] * 1000.0).repeat(1, cf)  # (1, C, cf, H, W), (1, cf)
            else:  # the clean pass over the finished latent, maybe noised to context_noise
                ctx_noise = noise_like(shape, ctx_gen, dtype=torch.float32) if cfg.context_noise else None
                x_in = x if ctx_noise is None else add_noise(x, ctx_noise, cfg.context_noise)
                t = (torch.tensor(cfg.context_noise) * 1000.0).repeat(1, cf)
            if j == final:
                finals[n] = (x_in, t, structure)
            vs = []
            for branch_cond, kv in branches:
                past = _context(kv, n, j, cfg, plan, mc, barrier)  # (L, 1, M, h, hd) keys and values, or None
                out = model(x_in, t, pos, _cross(branch_cond, cf), past, None, structure)
                kv[(n, j)] = (out.keys, out.values, tick)  # its own keys, after RoPE at this tick's positions
                vs.append(out.velocity)  # (1, C, cf, H, W)
            if j < cfg.steps:
                v = vs[0] if len(vs) == 1 else vs[1] + cfg.guidance * (vs[0] - vs[1])
                if renoise:  # x0 noised afresh to the next level (the last level is 0: x0)
                    x = renoise_step(x, v, sig[j], sig[j + 1], fresh[j] if j + 1 < cfg.steps else torch.zeros_like(x))
                else:
                    x = x + (sig[j + 1] - sig[j]) * v  # Euler step
        done.append(x[0])  # (C, cf, H, W)
    return torch.stack(done)


def _recache(
    model: CausalWanDiT,
    cfg: StreamConfig,
    plan: PositionPlan,
    kv: KV,
    finals: dict[int, Final],
    k: int,
    cond: Condition,
) -> None:
    """Re-run, under `cond`, the final pass of each chunk the ring holds before chunk k, oldest first, at the
    positions of tick k, each seeing the re-cached chunks before it that it may see."""
    final, cf = cfg.final_pass, model.config.chunk_frames
    ring = [c for c in range(k) if c < cfg.sink_chunks or k - c <= cfg.window_chunks]
    for c in ring:
        seen = [kv[(d, final)] for d in ring if d < c and (d < cfg.sink_chunks or c - d <= cfg.window_chunks)]
        past = _past([keys for keys, _, _ in seen], [values for _, values, _ in seen])  # all computed at tick k
        x_in, t, structure = finals[c]
        out = model(x_in, t, plan.frame_positions(c, k)[None], _cross(cond, cf), past, None, structure)
        kv[(c, final)] = (out.keys, out.values, k)


def _context(
    kv: KV, n: int, j: int, cfg: StreamConfig, plan: PositionPlan, mc: DiTConfig, barrier: int = 0
) -> PastKV | None:
    """The keys/values chunk n may see at pass j, oldest first, (L, 1, M, h, hd), at the positions of tick n + j;
    chunks before `barrier` (the last re-cache) at their final pass."""
    ks, vs = [], []
    for c in range(n):
        m = n - c
        if not (c < cfg.sink_chunks or m <= cfg.window_chunks):
            continue
        p = cfg.final_pass if c < barrier else min(j + m, cfg.final_pass)
        keys, values, written = kv[(c, p)]
        shift = plan.frame_delta(c, plan.epoch(written), plan.epoch(n + j))
        if shift:
            keys = [shift_frames(k, shift, mc.head_dim, mc.rope_theta) for k in keys]
        ks.append(keys)
        vs.append(values)
    return _past(ks, vs)


def _past(ks: list[list[Tensor]], vs: list[list[Tensor]]) -> PastKV | None:
    """Keys and values per chunk, per layer (1, N, h, hd), -> (L, 1, M, h, hd) in chunk order; None for none."""
    if not ks:
        return None
    keys = [torch.cat(layer, 1) for layer in zip(*ks, strict=True)]  # per layer (1, M, h, hd)
    values = [torch.cat(layer, 1) for layer in zip(*vs, strict=True)]
    return PastKV(torch.stack(keys), torch.stack(values))


def _cross(cond: Condition, frames: int) -> CrossKV:
    """A condition (L, T, h, hd) over `frames` frames: (L, 1, frames, T, h, hd), mod (1, frames, D)."""
    return CrossKV(cond.k[:, None], cond.v[:, None], None if cond.mod is None else cond.mod[None]).per_frame(frames)
