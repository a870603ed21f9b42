"""One stream's pass as a batch row, and what comes back: the interface between scheduling and the batch.

The scheduler (`stream.scheduler`) turns a stream's chunks in flight into a `PassRequest`; the causal
family's batch (`family.causal_batch`) runs many requests as one forward and hands each a `PassResult`.
Visibility follows one rule everywhere (`visible`): a frame of chunk a sees chunk c if c <= a and (c is a
sink or a - c <= window).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from framecast.models.dit import CrossKV, PastKV


@dataclass
class PassRequest:
    x: Tensor  # (R, C, F, H, W) latent frames of this row's chunks, oldest first (R = 2 when guided)
    t: Tensor  # (1, F) timesteps
    pos: Tensor  # (1, F) long temporal positions
    frame_chunk: list[int]  # (F,) chunk of every frame
    cross: CrossKV  # (L, R, F, T, h, hd) text keys/values per frame (guided: the prompt's row, then the empty one's)
    past: PastKV | list[PastKV] | None  # (L, R, M, h, hd) cached keys (rotated) and values, or its parts in order
    past_chunk: list[int]  # chunk of every cached token group (M / tokens_per_chunk_frame entries)
    sinks: int
    window: int
    guidance: float = 1.0  # classifier-free guidance scale (1: off; else R = 2 and v = v_u + w * (v_c - v_u))
    structure: Tensor | None = None  # (R, Cs, F, H, W) encoded input frames (video to video, zeros: none)

    @property
    def rows(self) -> int:
        """Batch rows this request takes: 2 when guided (the prompt's and the empty prompt's), else 1."""
        return self.x.shape[0]


@dataclass
class PassResult:
    """Output of one request: the (guided) velocity (1, C, F, H, W); keys/values of the whole batch, this
    request's rows starting at `row` (guided: the prompt's row at `row`, the empty prompt's at `row + 1`).

    keys, values: per layer (B, N', h, hd); a row's own tokens are keys[l][row, :F * P] (padding after).
    """

    velocity: Tensor
    keys: list[Tensor]
    values: list[Tensor]
    row: int = 0


def visible(query_chunk: Tensor, key_chunk: Tensor, sinks: int, window: int) -> Tensor:
    """(Q,) x (K,) chunk ids -> (Q, K) bool visibility (negative key ids are padding)."""
    a, c = query_chunk[:, None], key_chunk[None, :]
    return (c >= 0) & (c <= a) & ((c < sinks) | (a - c <= window))
