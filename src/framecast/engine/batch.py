"""One forward pass over the ready work of many streams.

Each stream hands in a `PassRequest` (one batch row): the latent frames of its chunks in flight,
their timesteps and positions, the keys/values it may attend to, and which chunk every frame and
every cached token belongs to. Rows are padded to a common length and run as one batch; the
results are cut back into one `PassResult` per row. Visibility follows one rule everywhere:
a frame of chunk a sees chunk c if c <= a and (c is a sink or a - c <= window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from framecast.models.dit import CausalWanDiT, CrossKV, PastKV


@dataclass
class PassRequest:
    x: Tensor  # (C, F, H, W) latent frames of this row's chunks, oldest first
    t: Tensor  # (F,) timesteps
    pos: Tensor  # (F,) long temporal positions
    frame_chunk: list[int]  # (F,) chunk of every frame
    cross_k: Tensor  # (L, F, T, h, hd) text keys per frame
    cross_v: Tensor
    past_k: Tensor | None  # (L, M, h, hd) cached keys, rotated
    past_v: Tensor | None
    past_chunk: list[int]  # chunk of every cached token group (M / tokens_per_chunk_frame entries)
    sinks: int
    window: int


@dataclass
class PassResult:
    velocity: Tensor  # (C, F, H, W)
    keys: list[Tensor]  # per layer (F * P, h, hd)
    values: list[Tensor]


def visible(query_chunk: Tensor, key_chunk: Tensor, sinks: int, window: int) -> Tensor:
    """(Q,) x (K,) chunk ids -> (Q, K) bool visibility (negative key ids are padding)."""
    a, c = query_chunk[:, None], key_chunk[None, :]
    return (c >= 0) & (c <= a) & ((c < sinks) | (a - c <= window))


def _token_ids(chunks: list[int], per: int, length: int) -> Tensor:
    """Chunk id of each token of a row, padded with -1 to `length`."""
    ids = torch.tensor(chunks, dtype=torch.long).repeat_interleave(per)
    return F.pad(ids, (0, length - ids.numel()), value=-1)


def _row_mask(r: PassRequest, P: int, M: int, N: int) -> Tensor:
    """(N, M + N) mask of one row; padded queries see their own position so softmax stays finite."""
    per_past = r.past_k.shape[1] // max(len(r.past_chunk), 1) if r.past_k is not None else 1
    q = _token_ids(r.frame_chunk, P, N)
    keys = torch.cat([_token_ids(r.past_chunk, per_past, M), q])
    m = visible(q, keys, r.sinks, r.window)
    pad = q < 0
    m[pad, M:] = torch.eye(N, dtype=torch.bool)[pad]
    return m


def _stack(xs: list[Tensor], dim: int) -> Tensor:
    """torch.stack, but a view (no copy) for a single row."""
    return xs[0].unsqueeze(dim) if len(xs) == 1 else torch.stack(xs, dim)


def _cached_mask(r: PassRequest, P: int, M: int, N: int, cache: dict[tuple, Tensor] | None) -> Tensor:
    """A row's mask, reused across passes: it depends only on chunk ids relative to the row's newest."""
    if cache is None:
        return _row_mask(r, P, M, N)
    base = r.frame_chunk[-1]
    rel = lambda c: ("sink", c) if c < r.sinks else c - base  # noqa: E731
    key = (tuple(map(rel, r.frame_chunk)), tuple(map(rel, r.past_chunk)), r.sinks, r.window, P, M, N)
    if key not in cache:
        if len(cache) > 256:
            cache.clear()
        cache[key] = _row_mask(r, P, M, N)
    return cache[key]


def _pad(x: Tensor, dim: int, length: int) -> Tensor:
    extra = length - x.shape[dim]
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim)


def run_batch(
    model: CausalWanDiT, reqs: list[PassRequest], mask_cache: dict[tuple, Tensor] | None = None
) -> list[PassResult]:
    """Run all rows in one forward pass; the denoiser is called here and nowhere else in the hot loop."""
    P = model.config.tokens_per_frame
    Fmax = max(r.x.shape[1] for r in reqs)
    Mmax = max(0 if r.past_k is None else r.past_k.shape[1] for r in reqs)
    x = _stack([_pad(r.x, 1, Fmax) for r in reqs], 0)  # (B, C, F, H, W)
    t = _stack([_pad(r.t, 0, Fmax) for r in reqs], 0).to(x.device)  # (B, F)
    pos = _stack([_pad(r.pos, 0, Fmax) for r in reqs], 0).to(x.device)
    cross = CrossKV(
        _stack([_pad(r.cross_k, 1, Fmax) for r in reqs], 1), _stack([_pad(r.cross_v, 1, Fmax) for r in reqs], 1)
    )
    past = _stack_past(reqs, Mmax)
    mask = None
    if not _all_visible(reqs, Fmax, Mmax):
        rows = [_cached_mask(r, P, Mmax, Fmax * P, mask_cache) for r in reqs]
        mask = _stack(rows, 0)[:, None].to(x.device, non_blocking=True)  # (B, 1, N, M + N)
    out = model(x, t, pos, cross, past, mask)
    return [_cut(out.velocity, out.keys, out.values, i, r, P) for i, r in enumerate(reqs)]


def _stack_past(reqs: list[PassRequest], M: int) -> PastKV | None:
    if M == 0:
        return None
    if len(reqs) == 1 and reqs[0].past_k is not None and reqs[0].past_v is not None:
        return PastKV(reqs[0].past_k[:, None], reqs[0].past_v[:, None])  # a view: no copy of the cache
    ks, vs = [], []
    for r in reqs:
        if r.past_k is None or r.past_v is None:
            ref = next(q.past_k for q in reqs if q.past_k is not None)
            assert ref is not None
            shape = (ref.shape[0], M, *ref.shape[2:])
            ks.append(ref.new_zeros(shape))
            vs.append(ref.new_zeros(shape))
        else:
            ks.append(_pad(r.past_k, 1, M))
            vs.append(_pad(r.past_v, 1, M))
    return PastKV(torch.stack(ks, 1), torch.stack(vs, 1))


def _all_visible(reqs: list[PassRequest], Fmax: int, Mmax: int) -> bool:
    """True when no mask is needed: one chunk per row, same lengths, every cached chunk visible."""
    for r in reqs:
        if r.x.shape[1] != Fmax or len(set(r.frame_chunk)) != 1:
            return False
        if (0 if r.past_k is None else r.past_k.shape[1]) != Mmax:
            return False
        a = r.frame_chunk[0]
        if any(not (0 <= c <= a and (c < r.sinks or a - c <= r.window)) for c in r.past_chunk):
            return False
    return True


def _cut(v: Tensor, keys: list[Tensor], values: list[Tensor], i: int, r: PassRequest, P: int) -> PassResult:
    Fr = r.x.shape[1]
    return PassResult(v[i, :, :Fr], [k[i, : Fr * P] for k in keys], [u[i, : Fr * P] for u in values])
