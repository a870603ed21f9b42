"""The model-family contract: what the streaming driver (`engine.driver`) needs from a model, and nothing more.

A family is one kind of model behind one set of calls. It says

* what a chunk is: `frames_per_chunk` output frames of `frame_size`, and as many input frames (video to video);
* what a schedule costs: `schedule(cfg)`, the passes per chunk, the work of a pass, the emit delay, the warm-up;
* how conditioning is encoded: `conditioner` turns a prompt into the family's condition (cached per prompt),
  `conditioner.embed` gives the embedding that prompt blends interpolate;
* what per-stream state it keeps: `new_state(cfg, seed)`, an object the driver never looks inside;
* how a stream takes a new chunk: `needs_chunk`, `admit` (with an encoded input chunk for video to video) and
  `recondition` (a prompt change that reaches the chunks in flight);
* how passes of different streams batch: `denoise(states)`, ONE batched denoiser call over every stream's
  next pass, returning the latents each stream finished;
* how latents decode: `decode(states, latents)`, ONE batched decode in which each stream carries its own
  decoder state; `encode(frames)` for inputs.

The causal DiT family (`family.causal`) keeps a KV cache per stream and a stream batch of chunks at different
denoising steps; a per-frame image family would keep a buffer of frames at different steps instead. The driver,
the server, the CLI and the benchmarks see only this contract (docs/architecture.md, "Adding a model family").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from framecast.stream.config import StreamConfig
from framecast.stream.prompt import Conditioner
from framecast.stream.state import ChunkInput

State = Any  # a family's per-stream state: opaque to the driver
Condition = Any  # a family's encoded prompt: opaque to the driver


@dataclass(frozen=True)
class Schedule:
    """What the front ends need to know of a stream's schedule under a family, in steady state."""

    passes_per_chunk: int  # denoiser passes per emitted chunk (one cycle of the schedule's kinds of pass)
    chunk_units: int  # work of one steady pass in chunk-rows: the server's cost-model unit
    emit_delay: int  # passes between the pass that admits a chunk and the pass that emits it
    warm_passes: int  # passes until the stream runs at its steady-state shapes (a full cache, a full row)


@runtime_checkable
class ModelFamily(Protocol):
    device: torch.device
    dtype: torch.dtype
    conditioner: Conditioner[Any]
    network: nn.Module  # the denoiser network `denoise` calls once (benchmarks hook its forward)

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of output frames in pixels."""
        ...

    @property
    def frames_per_chunk(self) -> int:
        """Frames a finished chunk decodes to; input frames a video-to-video chunk takes."""
        ...

    def schedule(self, cfg: StreamConfig) -> Schedule:
        """The steady-state schedule facts of a stream under `cfg` (benchmarks, admission, lag bounds)."""
        ...

    def new_state(self, cfg: StreamConfig, seed: int) -> State:
        """A new stream's state: its caches, noise (seeded) and schedule, sized from the model."""
        ...

    def needs_chunk(self, state: State) -> bool:
        """True when the stream's next pass starts a new chunk (`admit` it first)."""
        ...

    def admit(self, state: State, cond: Condition, inp: ChunkInput | None = None) -> None:
        """Start the stream's next chunk under `cond`, from noise or from an encoded input chunk."""
        ...

    def recondition(self, state: State, cond: Condition) -> None:
        """A prompt change: give `cond` to the chunks in flight that may still take it."""
        ...

    def denoise(self, states: Sequence[State]) -> list[list[Tensor]]:
        """One pass of every stream in one batched denoiser call; finished latents per stream, oldest first."""
        ...

    def decode(self, states: Sequence[State], latents: Sequence[Tensor]) -> list[np.ndarray]:
        """Finished latents, each with the state of the stream it belongs to (a stream may appear more than
        once, in order), in one batch -> uint8 frames (T, H, W, 3) each."""
        ...

    def encode(self, frames: np.ndarray) -> Tensor:
        """Input frames uint8 (T, H, W, 3) at `frame_size`, T = `frames_per_chunk` -> a latent chunk."""
        ...

    def pass_units(self, state: State) -> int:
        """Work of the stream's next pass in chunk-rows (its share of a batch), for the server's cost model."""
        ...

    def memory_bytes(self, state: State) -> int:
        """Bytes the stream's state holds on the device (what scales with the model and the stream count)."""
        ...
