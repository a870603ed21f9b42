"""Typed per-stream state: everything a stream remembers between passes, owned by the stream.

Nothing here lives on an `nn.Module`; a model serves any number of `StreamState`s.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from framecast.errors import InputError
from framecast.models.autoencoder import DecoderState
from framecast.models.config import DiTConfig
from framecast.models.dit import CrossKV
from framecast.sampling.flow import noise_like
from framecast.stream.cache import RingKV, ring_rows, staging_slots
from framecast.stream.config import StreamConfig
from framecast.stream.memo import BoundedCache
from framecast.stream.positions import PositionPlan

CONTEXT_SEED = 0x5EED  # the clean pass's noise comes from its own generator, seeded seed + this
RENOISE_SEED = 0xE1F0  # the re-noise sampler's fresh noise comes from its own generator, seeded seed + this
NOISE_BLOCK = 8  # chunks of noise drawn at once where that gives the same numbers (`NoiseDraws`)


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
    renoise: Tensor | None = None  # (steps - 1, C, cf, H, W) fresh noise of its steps 1.. (sampler "renoise")


@dataclass
class PassTable:
    """What a row's pass pattern (the next pass of each chunk in flight) fixes, computed once per pattern."""

    t: Tensor  # (R, F) timesteps (R: the stream's rows, 2 when guided; a view of one row)
    dsigma: Tensor | None  # (1, 1, F, 1, 1) Euler step sigma_next - sigma of each frame (0: no step); None: none
    sigma: Tensor | None  # (1, 1, F, 1, 1) sigma, then sigma_next, of each frame (0, 0: no step): sampler "renoise"
    sigma_next: Tensor | None  # only (None with "euler")
    final: int  # rows at their final pass (the first ones: they leave the row)
    staged: list[tuple[int, int]]  # (row, pass) of rows whose keys/values are staged (sequential)
    emitted: list[int]  # rows whose chunk is finished by this pass


class NoiseDraws:
    """Gaussian noise of one chunk after another from a CPU generator, drawn a block of chunks at a time where
    that gives the numbers one draw per chunk gives: the CPU generator fills normals 16 at a time, so when a
    chunk holds a multiple of 16 numbers, one draw of NOISE_BLOCK chunks equals NOISE_BLOCK draws (tested)."""

    def __init__(self, seed: int, shape: tuple[int, ...], device: torch.device) -> None:
        self.generator = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on any device
        self.shape, self.device = shape, device
        self.block = NOISE_BLOCK if math.prod(shape) % 16 == 0 else 1
        self._drawn: Tensor | None = None  # (block, *shape) on `device`
        self._used = 0

    def next(self) -> Tensor:
        """The next chunk's noise (1, *shape), float32 on `device` (a view of the block drawn)."""
        if self._drawn is None or self._used == self._drawn.shape[0]:
            noise = noise_like((self.block, *self.shape), self.generator, dtype=torch.float32)
            self._drawn, self._used = noise.to(self.device, non_blocking=True), 0
        self._used += 1
        return self._drawn.narrow(0, self._used - 1, 1)


@dataclass
class RecacheStore:
    """What re-caching a stream's ring under a new prompt needs (`StreamConfig.recache`; `stream.recache`): the input
    the final pass of each ring slot's chunk read, and the prompt change waiting for its re-cache. Float32.

    x:         (S, C, cf, H, W) that input: the finished latent as the clean pass read it (noised to
               `context_noise` with the noise it drew), or without a clean pass the last step's input.
    t:         (S, cf) the timesteps of that pass.
    structure: (S, Cs, cf, H, W) the chunk's structure input (zeros: none), for a model with one; else None.
    pending:   the new prompt's condition while a re-cache is due, else None.
    first:     the chunk before whose first pass the due re-cache runs (the first admitted after the change).
    barrier:   every chunk from the last re-cache's `first` on sees the chunks before it at their re-cached final
               pass (0: no re-cache yet).
    """

    x: Tensor
    t: Tensor
    structure: Tensor | None
    pending: Condition | None = None
    first: int = 0
    barrier: int = 0

    @classmethod
    def create(
        cls, slots: int, shape: tuple[int, int, int, int], structure_channels: int, device: torch.device
    ) -> RecacheStore:
        """An empty store for `slots` ring slots of chunks of `shape` (C, cf, H, W)."""
        C, cf, H, W = shape
        x = torch.zeros((slots, C, cf, H, W), device=device)
        structure = torch.zeros((slots, structure_channels, cf, H, W), device=device) if structure_channels else None
        return cls(x, torch.zeros((slots, cf), device=device), structure)

    def keep(self, slot: int, x: Tensor, t: Tensor, structure: Tensor | None) -> None:
        """Keep the input (C, cf, H, W), timesteps (cf,) and structure (Cs, cf, H, W) or None of a final pass."""
        self.x[slot].copy_(x)
        self.t[slot].copy_(t)
        if self.structure is not None and structure is not None:
            self.structure[slot].copy_(structure)
        elif self.structure is not None:
            self.structure[slot].zero_()

    def nbytes(self) -> int:
        parts = [self.x, self.t] + ([] if self.structure is None else [self.structure])
        return sum(p.numel() * p.element_size() for p in parts)


@dataclass
class StreamMemo:
    """What a stream computes once and reuses: pass tables by pass pattern, schedules by start strength, and
    the per-frame view of the last condition (guided: the prompt's and the empty prompt's rows)."""

    tables: BoundedCache[tuple, PassTable] = field(default_factory=lambda: BoundedCache(256))
    schedules: BoundedCache[float, Tensor] = field(default_factory=lambda: BoundedCache(64))
    cross: tuple[Condition, int, CrossKV] | None = None  # (condition, F, its per-frame view of the stream's rows)


@dataclass
class StreamState:
    """Everything one stream remembers between passes. `rings[0]` is the prompt's KV cache; a guided stream
    has a second ring for the empty prompt (the same slots, one store: `cache.ring_rows`)."""

    cfg: StreamConfig
    plan: PositionPlan
    rings: list[RingKV]
    noise: NoiseDraws  # the noise every chunk starts from
    sigmas: Tensor  # (steps + 1,) noise levels, last one 0
    latent_shape: tuple[int, int, int, int]  # (C, cf, H, W) of one chunk
    inflight: list[InFlight] = field(default_factory=list)  # oldest first
    x: Tensor | None = None  # (1, C, F, H, W) latents of the chunks in flight, oldest first: the next row
    next_chunk: int = 0
    tick: int = 0
    inputs: deque[ChunkInput] = field(default_factory=deque)  # video to video: inputs of the next chunks, in order
    null: Condition | None = None  # the empty prompt's condition: the unconditional row of guidance
    context_noise: NoiseDraws | None = None  # noise of the clean pass (`StreamConfig.context_noise`)
    renoise: NoiseDraws | None = None  # fresh noise of the re-noise sampler (`StreamConfig.sampler`), steps > 1
    structured: bool = False  # the model takes a structure input: inputs also go in as `InFlight.structure`
    decoder: DecoderState | None = None  # what the autoencoder carries between chunks (None until the first decode)
    recache: RecacheStore | None = None  # the inputs to re-cache the ring from (`StreamConfig.recache`)
    memo: StreamMemo = field(default_factory=StreamMemo)

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
        rings = ring_rows(cfg.rows, *dims, stage)
        shape = (mc.in_channels, mc.chunk_frames, mc.latent_height, mc.latent_width)
        ctx = NoiseDraws(seed + CONTEXT_SEED, shape, device) if cfg.context_noise else None
        renoise = cfg.sampler == "renoise" and cfg.steps > 1
        fresh = NoiseDraws(seed + RENOISE_SEED, shape, device) if renoise else None
        plan = PositionPlan(cfg, mc.chunk_frames, device)
        store = RecacheStore.create(cfg.cache_chunks, shape, mc.structure_channels, device) if cfg.recache else None
        return cls(
            cfg, plan, rings, NoiseDraws(seed, shape, device), cfg.noise_levels(), shape,
            null=null, context_noise=ctx, renoise=fresh, structured=mc.structure_channels > 0, recache=store,
        )  # fmt: skip

    @property
    def ring(self) -> RingKV:
        """The prompt's KV cache."""
        return self.rings[0]

    def memory_bytes(self) -> int:
        """Bytes of cached keys/values (ring and staging; twice when guided): the part that scales with the model;
        with `recache`, also the inputs the ring's chunks are re-cached from."""
        kv = sum(r.nbytes() for r in self.rings)
        return kv if self.recache is None else kv + self.recache.nbytes()
