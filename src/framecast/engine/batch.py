"""One forward pass over the ready work of many streams.

Each stream hands in a `PassRequest` (one batch row, as a batch of one): the latent frames of its
chunks in flight, their timesteps and positions, the keys/values it may attend to, and which chunk
every frame and every cached token belongs to. A single row goes to the denoiser as it is; several
rows are padded to a common length and concatenated into one batch. Every row gets a `PassResult`.
Visibility follows one rule everywhere: a frame of chunk a sees chunk c if c <= a and (c is a sink or
a - c <= window).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from framecast.models.dit import CausalWanDiT, CrossKV, PastKV

SINK = -(1 << 40)  # offset that keeps sink chunk ids apart from relative ids in mask cache keys


@dataclass
class PassRequest:
    x: Tensor  # (1, C, F, H, W) latent frames of this row's chunks, oldest first
    t: Tensor  # (1, F) timesteps
    pos: Tensor  # (1, F) long temporal positions
    frame_chunk: list[int]  # (F,) chunk of every frame
    cross: CrossKV  # (L, 1, F, T, h, hd) text keys/values per frame
    past: PastKV | None  # (L, 1, M, h, hd) cached keys (rotated) and values
    past_chunk: list[int]  # chunk of every cached token group (M / tokens_per_chunk_frame entries)
    sinks: int
    window: int
    guidance: float = 1.0  # classifier-free guidance scale (1: off)
    uncond: PassRequest | None = None  # guided: the same frames under the empty prompt, with its own cache
    structure: Tensor | None = None  # (1, Cs, F, H, W) encoded input frames (video to video, zeros: none)


@dataclass
class PassResult:
    """Output of one row: velocity (1, C, F, H, W); keys/values of the whole batch, this row's at `row`.

    keys, values: per layer (B, N', h, hd); the row's own tokens are keys[l][row, :F * P] (padding after).
    """

    velocity: Tensor
    keys: list[Tensor]
    values: list[Tensor]
    row: int = 0
    uncond: PassResult | None = None  # guided: the empty prompt's row (its keys/values fill its own cache)


def visible(query_chunk: Tensor, key_chunk: Tensor, sinks: int, window: int) -> Tensor:
    """(Q,) x (K,) chunk ids -> (Q, K) bool visibility (negative key ids are padding)."""
    a, c = query_chunk[:, None], key_chunk[None, :]
    return (c >= 0) & (c <= a) & ((c < sinks) | (a - c <= window))


def run_batch(
    model: CausalWanDiT, reqs: list[PassRequest], mask_cache: dict[tuple, Tensor] | None = None
) -> list[PassResult]:
    """Run all rows in one forward pass; the denoiser is called here and nowhere else in the hot loop.

    A guided row (guidance w != 1) brings its unconditional row (the empty prompt over the same frames, with
    its own cache), run at the end of the batch; the guided velocity is v_u + w * (v_c - v_u).
    """
    extra = [r.uncond for r in reqs if r.uncond is not None]
    rows = reqs + extra if extra else reqs
    out = _run_one(model, rows[0], mask_cache) if len(rows) == 1 else _run_many(model, rows, mask_cache)
    return _guide(reqs, out) if extra else out


def _guide(reqs: list[PassRequest], out: list[PassResult]) -> list[PassResult]:
    """Combine each guided row with its unconditional row (in `out` after all the requested rows)."""
    extra = len(reqs)
    for r, res in zip(reqs, out, strict=False):
        if r.uncond is not None:
            res.uncond = out[extra]
            res.velocity = res.uncond.velocity + r.guidance * (res.velocity - res.uncond.velocity)
            extra += 1
    return out[: len(reqs)]


def _run_one(model: CausalWanDiT, r: PassRequest, mask_cache: dict[tuple, Tensor] | None) -> list[PassResult]:
    """A single row: its tensors are already a batch of one, so nothing is padded or copied."""
    mask = None
    if not _all_visible(r):
        P, M = model.config.tokens_per_frame, _past_len(r)
        mask = _cached_mask(r, P, M, r.x.shape[2] * P, mask_cache, r.x.device)
    out = model(r.x, r.t, r.pos, r.cross, r.past, mask, r.structure)
    return [PassResult(out.velocity, out.keys, out.values)]


def _run_many(model: CausalWanDiT, reqs: list[PassRequest], mask_cache: dict[tuple, Tensor] | None) -> list[PassResult]:
    """Rows padded to the longest (frames and cached tokens) and concatenated along the batch."""
    P = model.config.tokens_per_frame
    Fmax = max(r.x.shape[2] for r in reqs)
    Mmax = max(_past_len(r) for r in reqs)
    x = torch.cat([_pad(r.x, 2, Fmax) for r in reqs])  # (B, C, F, H, W)
    t = torch.cat([_pad(r.t, 1, Fmax) for r in reqs])  # (B, F)
    pos = torch.cat([_pad(r.pos, 1, Fmax) for r in reqs])
    mods = [r.cross.mod for r in reqs]
    cross = CrossKV(
        torch.cat([_pad(r.cross.k, 2, Fmax) for r in reqs], 1),
        torch.cat([_pad(r.cross.v, 2, Fmax) for r in reqs], 1),
        None if mods[0] is None else torch.cat([_pad(m, 1, Fmax) for m in mods if m is not None]),  # (B, F, D)
    )
    past = _cat_past(reqs, Mmax)
    mask = None
    if not all(r.x.shape[2] == Fmax and _past_len(r) == Mmax and _all_visible(r) for r in reqs):
        mask = torch.cat([_cached_mask(r, P, Mmax, Fmax * P, mask_cache, x.device) for r in reqs])  # (B, 1, N, M + N)
    out = model(x, t, pos, cross, past, mask, _cat_structure(reqs, Fmax))
    return [PassResult(out.velocity[i : i + 1, :, : r.x.shape[2]], out.keys, out.values, i) for i, r in enumerate(reqs)]


def _cat_structure(reqs: list[PassRequest], F: int) -> Tensor | None:
    """Structure inputs of the rows (B, Cs, F, H, W), zeros for rows without one; None when no row has one."""
    ref = next((r.structure for r in reqs if r.structure is not None), None)
    if ref is None:
        return None
    none = ref.new_zeros((1, ref.shape[1], F, *ref.shape[3:]))
    return torch.cat([none if r.structure is None else _pad(r.structure, 2, F) for r in reqs])


def _past_len(r: PassRequest) -> int:
    return 0 if r.past is None else r.past.k.shape[2]


def _cat_past(reqs: list[PassRequest], M: int) -> PastKV | None:
    if M == 0:
        return None
    ref = next(r.past.k for r in reqs if r.past is not None)
    ks, vs = [], []
    for r in reqs:
        if r.past is None:
            shape = (ref.shape[0], 1, M, *ref.shape[3:])
            ks.append(ref.new_zeros(shape))
            vs.append(ref.new_zeros(shape))
        else:
            ks.append(_pad(r.past.k, 2, M))
            vs.append(_pad(r.past.v, 2, M))
    return PastKV(torch.cat(ks, 1), torch.cat(vs, 1))


def _all_visible(r: PassRequest) -> bool:
    """True when the row needs no mask: a single chunk that sees every cached chunk handed in."""
    a = r.frame_chunk[0]
    if r.frame_chunk[-1] != a:
        return False
    if not r.past_chunk:
        return True
    ordered = sorted(r.past_chunk)
    if ordered[0] < 0 or ordered[-1] > a:
        return False
    i = bisect.bisect_left(ordered, r.sinks)  # the oldest cached chunk that is not a sink
    return i == len(ordered) or a - ordered[i] <= r.window


def _pad(x: Tensor, dim: int, length: int) -> Tensor:
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim)


# -- masks ---------------------------------------------------------------------------------------------


def _token_ids(chunks: list[int], per: int, length: int) -> Tensor:
    """Chunk id of each token of a row, padded with -1 to `length`."""
    ids = torch.tensor(chunks, dtype=torch.long).repeat_interleave(per)
    return F.pad(ids, (0, length - ids.numel()), value=-1)


def _row_mask(r: PassRequest, P: int, M: int, N: int) -> Tensor:
    """(N, M + N) mask of one row; padded queries see their own position so softmax stays finite."""
    per_past = _past_len(r) // max(len(r.past_chunk), 1)
    q = _token_ids(r.frame_chunk, P, N)
    keys = torch.cat([_token_ids(r.past_chunk, per_past, M), q])
    m = visible(q, keys, r.sinks, r.window)
    pad = q < 0
    m[pad, M:] = torch.eye(N, dtype=torch.bool)[pad]
    return m


def _cached_mask(
    r: PassRequest, P: int, M: int, N: int, cache: dict[tuple, Tensor] | None, device: torch.device
) -> Tensor:
    """A row's mask (1, 1, N, M + N) on `device`, reused across passes: it depends only on chunk ids
    relative to the row's newest (sinks by their own id)."""
    if cache is None:
        return _row_mask(r, P, M, N)[None, None].to(device)
    base, sinks = r.frame_chunk[-1], r.sinks
    key = (
        tuple([c - base if c >= sinks else SINK + c for c in r.frame_chunk]),
        tuple([c - base if c >= sinks else SINK + c for c in r.past_chunk]),
        sinks,
        r.window,
        P,
        M,
        N,
    )
    mask = cache.get(key)
    if mask is None:
        if len(cache) > 256:
            cache.clear()
        mask = cache[key] = _row_mask(r, P, M, N)[None, None].to(device)
    return mask
