"""One forward pass of the causal DiT over the ready work of many streams.

Each stream hands in a `PassRequest` (`stream.request`): the latent frames of its chunks in flight, their
timesteps and positions, the keys/values it may attend to, and which chunk every frame and every cached token
belongs to; a guided stream's request is two batch rows (the prompt's and the empty prompt's) built as such.
A single request goes to the denoiser as it is; several are padded to a common length and concatenated into
one batch. Every request gets a `PassResult`, its velocity guided where it asked for guidance.
"""

from __future__ import annotations

import bisect
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from framecast.models.config import DiTConfig
from framecast.models.dit import CrossKV, DiTOutput, PastKV
from framecast.stream.memo import BoundedCache
from framecast.stream.request import PassRequest, PassResult, visible

SINK = -(1 << 40)  # offset that keeps sink chunk ids apart from relative ids in mask cache keys
MaskCache = BoundedCache[tuple, Tensor]


class Network(Protocol):
    """What a batch runs: `CausalWanDiT`, or a pipeline stage of it (`family.stages.StageNet`)."""

    config: DiTConfig

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        frame_pos: Tensor,
        cross: CrossKV,
        past: PastKV | list[PastKV] | None = None,
        mask: Tensor | None = None,
        structure: Tensor | None = None,
    ) -> DiTOutput: ...


def run_batch(model: Network, reqs: list[PassRequest], mask_cache: MaskCache | None = None) -> list[PassResult]:
    """Run all requests in one forward pass; the causal family calls its denoiser here and nowhere else.

    A guided request (guidance w != 1) is two rows, the prompt's then the empty prompt's, each with its own
    cache; its velocity is v_u + w * (v_c - v_u).
    """
    return _run_one(model, reqs[0], mask_cache) if len(reqs) == 1 else _run_many(model, reqs, mask_cache)


def _guided(v: Tensor, w: float) -> Tensor:
    """Velocity (R, C, F, H, W) of one request's rows -> (1, C, F, H, W): guided when R is 2."""
    if v.shape[0] == 1:
        return v
    return torch.lerp(v[1:2], v[:1], w)  # v_u + w * (v_c - v_u) in one op


def _run_one(model: Network, r: PassRequest, mask_cache: MaskCache | None) -> list[PassResult]:
    """A single request: its tensors are already a batch, so nothing is padded or copied."""
    mask = None
    if not _all_visible(r):
        P, M = model.config.tokens_per_frame, _past_len(r)
        mask = _cached_mask(r, P, M, r.x.shape[2] * P, mask_cache, r.x.device)
    out = model(r.x, r.t, r.pos, r.cross, r.past, mask, r.structure)
    return [PassResult(_guided(out.velocity, r.guidance), out.keys, out.values)]


def _run_many(model: Network, reqs: list[PassRequest], mask_cache: MaskCache | None) -> list[PassResult]:
    """Requests padded to the longest (frames and cached tokens) and concatenated along the batch."""
    P = model.config.tokens_per_frame
    Fmax = max(r.x.shape[2] for r in reqs)
    Mmax = max(_past_len(r) for r in reqs)
    x = torch.cat([_pad(r.x, 2, Fmax) for r in reqs])  # (B, C, F, H, W)
    t = torch.cat([_pad(r.t, 1, Fmax) for r in reqs])  # (B, F)
    pos = torch.cat([_pad(r.pos, 1, Fmax).expand(r.rows, -1) for r in reqs])
    mods = [r.cross.mod for r in reqs]
    cross = CrossKV(
        torch.cat([_pad(r.cross.k, 2, Fmax) for r in reqs], 1),
        torch.cat([_pad(r.cross.v, 2, Fmax) for r in reqs], 1),
        None if mods[0] is None else torch.cat([_pad(m, 1, Fmax) for m in mods if m is not None]),  # (B, F, D)
    )
    past = _cat_past(reqs, Mmax)
    mask = None
    if not all(r.x.shape[2] == Fmax and _past_len(r) == Mmax and _all_visible(r) for r in reqs):
        masks = [_cached_mask(r, P, Mmax, Fmax * P, mask_cache, x.device).expand(r.rows, -1, -1, -1) for r in reqs]
        mask = torch.cat(masks)  # (B, 1, N, M + N)
    out = model(x, t, pos, cross, past, mask, _cat_structure(reqs, Fmax))
    results, row = [], 0
    for r in reqs:
        v = out.velocity[row : row + r.rows, :, : r.x.shape[2]]
        results.append(PassResult(_guided(v, r.guidance), out.keys, out.values, row))
        row += r.rows
    return results


def _cat_structure(reqs: list[PassRequest], F: int) -> Tensor | None:
    """Structure inputs of the rows (B, Cs, F, H, W), zeros for rows without one; None when no row has one."""
    ref = next((r.structure for r in reqs if r.structure is not None), None)
    if ref is None:
        return None
    def zeros(rows: int) -> Tensor:
        return ref.new_zeros((rows, ref.shape[1], F, *ref.shape[3:]))

    return torch.cat([zeros(r.rows) if r.structure is None else _pad(r.structure, 2, F) for r in reqs])


def _past_len(r: PassRequest) -> int:
    return sum(p.k.shape[2] for p in _parts(r.past))


def _parts(past: PastKV | list[PastKV] | None) -> list[PastKV]:
    return [] if past is None else [past] if isinstance(past, PastKV) else past


def _whole(past: PastKV | list[PastKV]) -> PastKV:
    """A context given in parts as one (L, R, M, h, hd): a copy, for the padded batch path."""
    if isinstance(past, PastKV):
        return past
    return PastKV(torch.cat([p.k for p in past], 2), torch.cat([p.v for p in past], 2))


def _cat_past(reqs: list[PassRequest], M: int) -> PastKV | None:
    if M == 0:
        return None
    ref = next(_parts(r.past)[0].k for r in reqs if r.past)
    ks, vs = [], []
    for r in reqs:
        if r.past is None:
            shape = (ref.shape[0], r.rows, M, *ref.shape[3:])
            ks.append(ref.new_zeros(shape))
            vs.append(ref.new_zeros(shape))
        else:
            whole = _whole(r.past)
            ks.append(_pad(whole.k, 2, M))
            vs.append(_pad(whole.v, 2, M))
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


def _cached_mask(r: PassRequest, P: int, M: int, N: int, cache: MaskCache | None, device: torch.device) -> Tensor:
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
    return cache.get(key, lambda: _row_mask(r, P, M, N)[None, None].to(device))
