"""Typed per-stream state: everything a stream remembers between passes, owned by the stream.

Nothing here lives on an `nn.Module`; a model serves any number of `StreamState`s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from framecast.errors import InputError
from framecast.models.config import DiTConfig
from framecast.models.dit import CrossKV
from framecast.sampling.flow import sigmas
from framecast.stream.cache import RingKV, staging_slots
from framecast.stream.config import StreamConfig
from framecast.stream.positions import PositionPlan

CONTEXT_SEED = 0x5EED  # the clean pass's noise comes from its own generator, seeded seed + this


@dataclass
class Condition:
    """Text condition of one chunk: cross-attention keys/values (L, T, h, hd), text modulation (D,) or None."""

    k: Tensor
    v: Tensor
    mod: Tensor | None = None

    @classmethod
    def from_cross(cls, kv: CrossKV) -> Condition:
        """Row 0 of `CausalWanDiT.cross_kv`'s output (L, 1, T, h, hd)."""
        return cls(kv.k[:, 0], kv.v[:, 0], None if kv.mod is None else kv.mod[0])


@dataclass(frozen=True)
class ChunkInput:
    """What a video-to-video chunk starts from (SDEdit): its encoded input and the noise level to start at.

    latent:   (1, C, cf, H, W) the input frames of the chunk, encoded.
    strength: s in (0, 1]: the chunk starts at (1 - s) * latent + s * noise and is denoised by the stream's
              `steps` passes over the schedule restricted to [0, s] (`flow.sdedit_sigmas`); at 1 the start
              ignores the input. A model with a structure input also reads the latent in every pass.
    """

    latent: Tensor
    strength: float


@dataclass
class InFlight:
    """A chunk being denoised: the index of its next pass, its condition and the noise level it started at
    (1: text to video; below: video to video). Its latent is in `StreamState.x`."""

    chunk: int
    next_pass: int
    cond: Condition
    strength: float = 1.0
    structure: Tensor | None = None  # (1, C, cf, H, W) its encoded input, for a model with a structure input


@dataclass
class PassTable:
    """What a row's pass pattern (the next pass of each chunk in flight) fixes, computed once per pattern."""

    t: Tensor  # (1, F) timesteps
    dsigma: Tensor | None  # (1, 1, F, 1, 1) Euler step sigma_next - sigma of each frame (0: no step); None: none
    final: int  # rows at their final pass (the first ones: they leave the row)
    staged: list[tuple[int, int]]  # (row, pass) of rows whose keys/values are staged (sequential)
    emitted: list[int]  # rows whose chunk is finished by this pass


@dataclass
class StreamState:
    cfg: StreamConfig
    plan: PositionPlan
    ring: RingKV
    generator: torch.Generator
    sigmas: Tensor  # (steps + 1,) noise levels, last one 0
    latent_shape: tuple[int, int, int, int]  # (C, cf, H, W) of one chunk
    inflight: list[InFlight] = field(default_factory=list)  # oldest first
    x: Tensor | None = None  # (1, C, F, H, W) latents of the chunks in flight, oldest first: the next row
    noise: Tensor | None = None  # (n, C, cf, H, W) noise of the next chunks, drawn ahead from `generator`
    noise_used: int = 0  # chunks of `noise` already admitted
    next_chunk: int = 0
    tick: int = 0
    tables: dict[tuple, PassTable] = field(default_factory=dict)  # by the row's pass pattern (and start strengths)
    cross: tuple[Condition, int, CrossKV] | None = None  # the last (condition, F, its per-frame view)
    inputs: deque[ChunkInput] = field(default_factory=deque)  # video to video: inputs of the next chunks, in order
    schedules: dict[float, Tensor] = field(default_factory=dict)  # (steps + 1,) noise levels by start strength < 1
    null: Condition | None = None  # the empty prompt's condition: the unconditional row of guidance
    null_ring: RingKV | None = None  # guided: the unconditional row's own cache (same slots as `ring`)
    null_cross: tuple[int, CrossKV] | None = None  # (F, its per-frame view) of `null`
    context_generator: torch.Generator | None = None  # noise of the clean pass (`StreamConfig.context_noise`)
    structured: bool = False  # the model takes a structure input: inputs also go in as `InFlight.structure`

    @classmethod
    def create(
        cls,
        model_cfg: DiTConfig,
        cfg: StreamConfig,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
        null: Condition | None = None,
    ) -> StreamState:
        """A new stream; `null` (the empty prompt's condition) is required when `cfg.guided`."""
        if cfg.guided and null is None:
            raise InputError("a guided stream (guidance != 1) needs the empty prompt's condition")
        mc = model_cfg
        tokens = mc.chunk_frames * mc.tokens_per_frame
        stage = [] if cfg.batch_steps else staging_slots(cfg.final_pass)
        dims = (mc.num_layers, cfg.sink_chunks, cfg.window_chunks, tokens, mc.num_heads, mc.head_dim, dtype, device)
        ring = RingKV.empty(*dims, stage)
        gen = torch.Generator().manual_seed(seed)  # on the CPU: the same seed gives the same noise on any device
        shape = (mc.in_channels, mc.chunk_frames, mc.latent_height, mc.latent_width)
        ctx = torch.Generator().manual_seed(seed + CONTEXT_SEED) if cfg.context_noise else None
        plan = PositionPlan(cfg, mc.chunk_frames, device)
        null_ring = RingKV.empty(*dims, list(stage)) if cfg.guided else None
        return cls(
            cfg, plan, ring, gen, sigmas(cfg.steps, cfg.shift), shape,
            null=null, null_ring=null_ring, context_generator=ctx, structured=mc.structure_channels > 0,
        )  # fmt: skip

    def memory_bytes(self) -> int:
        """Bytes of cached keys/values (ring and staging; twice when guided): the part that scales with the model."""
        return self.ring.nbytes() + (self.null_ring.nbytes() if self.null_ring is not None else 0)
