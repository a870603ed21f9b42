"""The causal family as a pipeline over ranks: the DiT's blocks split into contiguous stages, one per rank.

    plan = StagePlan(bounds=(0, 2, 4), rank=r)           # rank 0 runs blocks 0-1, rank 1 blocks 2-3
    family = StagedFamily(causal_family, plan, link)     # trims the family's DiT to this rank's blocks

Every rank runs the same driver loop over the same streams (SPMD: the same prompts, seeds and steps), and so the
same scheduling: admissions, pass tables, positions, masks. What differs is the network each runs:

* rank 0 encodes the prompts (the embedding is broadcast; each rank makes the cross-attention keys/values of its
  own blocks from it) and video-to-video inputs, embeds the latents and runs its blocks;
* rank r > 0 receives the tokens from rank r - 1 and runs its blocks; every rank but the last sends its tokens on
  (asynchronously: it goes on with the next micro-batch while they travel);
* the last rank runs the head, sends the velocities back to every rank (so every rank's latents and scheduler
  state stay equal, bit for bit) and decodes; the others get the frame counts and give blank frames.

A stream's KV cache lives with the stage that owns its layers: each rank's `StreamState` rings hold only its own
blocks' keys/values (`StreamState.create` sized by the trimmed `DiTConfig`).

Circulation, across steps: `denoise(states)` splits the streams into micro-batches (default: one per stage, at
most one per stream) and runs them through the stages in turn. A rank before the last does not wait for a
micro-batch's velocities: it sends the tokens on, posts the receive of the velocities and goes on, with the next
micro-batch and then, returning to the driver, with the next step. A stream's pass stays in flight there (its
result is applied, its velocities waited for, just before the stream's next pass), and what the driver asks of it
meanwhile is answered from the schedule (`needs_chunk`, the count of chunks the pass finishes, their frame
counts) or deferred until the pass lands (`admit`, `recondition`), each checked when it lands. So while the last
rank runs micro-batch A of step j and decodes step j's chunks, rank 0 already runs micro-batch B, then A of step
j + 1: with micro-batches >= stages the stages stay busy. Each stream's passes, admissions and draws run in the
single-process order, and a micro-batch is the batch the single-process family would run for those streams, so
the frames are the single-process frames (tested bit for bit in tests/test_pipeline_parallel.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from framecast.errors import InputError
from framecast.family.causal import CausalFamily
from framecast.family.causal_batch import MaskCache, run_batch
from framecast.family.link import COUNTS, VELOCITY, Incoming, Link, StageError
from framecast.models.config import DiTConfig
from framecast.models.dit import CausalWanDiT, CrossKV, DiTOutput, PastKV
from framecast.stream import scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.memo import BoundedCache
from framecast.stream.request import PassRequest, PassResult
from framecast.stream.state import ChunkInput, Condition, StreamState


@dataclass(frozen=True)
class StagePlan:
    """Stage r runs blocks bounds[r] .. bounds[r + 1] - 1; this process is stage `rank`."""

    bounds: tuple[int, ...]  # (stages + 1,): 0 = b0 < b1 < ... < b_S = num_layers
    rank: int

    def __post_init__(self) -> None:
        b = self.bounds
        if len(b) < 2 or b[0] != 0 or any(x >= y for x, y in zip(b, b[1:], strict=False)):
            raise InputError(f"stage bounds must rise from 0 with at least one block a stage, got {list(b)}")
        if not 0 <= self.rank < len(b) - 1:
            raise InputError(f"rank {self.rank} is not a stage of {list(b)}")

    @property
    def world(self) -> int:
        return len(self.bounds) - 1

    @property
    def start(self) -> int:
        return self.bounds[self.rank]

    @property
    def stop(self) -> int:
        return self.bounds[self.rank + 1]

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1

    def name(self, rank: int) -> str:
        """`rank 1 (blocks 2-3)`: how errors name a stage."""
        return f"rank {rank} (blocks {self.bounds[rank]}-{self.bounds[rank + 1] - 1})"

    def names(self) -> list[str]:
        return [self.name(r) for r in range(self.world)]


# -- the balancer --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTimes:
    """Measured seconds of one pass's parts: the embedding (first stage), each block, the head (last stage)."""

    embed: float
    blocks: tuple[float, ...]
    head: float

    def stage(self, bounds: Sequence[int]) -> list[float]:
        """Seconds of each stage of a split: its blocks, plus the embedding on the first and the head on the last."""
        out = [sum(self.blocks[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
        out[0] += self.embed
        out[-1] += self.head
        return out


def split_blocks(times: StageTimes, stages: int) -> tuple[int, ...]:
    """Contiguous stages by prefix sums: stage k ends at the block where the running time (the embedding counted
    before block 0, the head after the last) comes nearest to (k + 1) / stages of the whole; at least one block a
    stage. Returns the bounds (stages + 1,)."""
    n = len(times.blocks)
    if not 1 <= stages <= n:
        raise InputError(f"cannot split {n} blocks into {stages} stages (one block a stage at least)")
    prefix = [times.embed]
    for t in times.blocks:
        prefix.append(prefix[-1] + t)  # prefix[i]: time through block i - 1
    total = prefix[-1] + times.head
    bounds = [0]
    for k in range(1, stages):
        lo, hi = bounds[-1] + 1, n - (stages - k)  # room for one block in every later stage
        target = total * k / stages
        bounds.append(min(range(lo, hi + 1), key=lambda i: abs(prefix[i] - target)))
    return (*bounds, n)


@torch.inference_mode()
def time_blocks(dit: CausalWanDiT, cfg: StreamConfig, device: torch.device, repeats: int = 2) -> StageTimes:
    """Time each part of one steady stream-batch pass of one stream under `cfg` (a full row and a full ring),
    the best of `repeats` runs after a warm-up, on random inputs."""
    c, dtype = dit.config, next(dit.blocks.parameters()).dtype
    R, F = cfg.rows, (cfg.final_pass + 1) * c.chunk_frames
    g = torch.Generator().manual_seed(0)
    x = torch.randn(R, c.in_channels, F, c.latent_height, c.latent_width, generator=g).to(device)
    t = torch.full((R, F), 500.0, device=device)
    pos = torch.arange(F, device=device)[None].expand(R, -1)
    cross = dit.cross_kv(torch.randn(R, 1, c.text_dim, generator=g).to(device)).per_frame(F)
    M = cfg.cache_chunks * c.chunk_frames * c.tokens_per_frame
    store = torch.randn(2, len(dit.blocks), R, M, c.num_heads, c.head_dim, generator=g).to(device, dtype)
    past = PastKV(store[0], store[1])

    def clock(fn: object) -> float:
        best = float("inf")
        for _ in range(repeats + 1):  # the first run warms up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the GPU's work is in the time
            best = min(best, time.perf_counter() - t0)
        return best

    mod = dit.modulation(t, pos, cross, x.shape[-2:])
    tokens = dit.embed(x)
    embed = clock(lambda: (dit.embed(x), dit.modulation(t, pos, cross, x.shape[-2:])))
    blocks = []
    for i, blk in enumerate(dit.blocks):
        kv, text = (past.k[i], past.v[i]), (cross.k[i], cross.v[i])
        blocks.append(clock(lambda b=blk, kv=kv, text=text: b(tokens, mod.e6, mod.rope, text, kv, None)))
    head = clock(lambda: dit.output(x, t, tokens, mod))
    return StageTimes(embed, tuple(blocks), head)


# -- one stage's network -------------------------------------------------------------------------------


def as_causal(family: object) -> CausalFamily:
    """`family` if it is a causal DiT family (the one kind a pipeline splits), else a clear error."""
    if not isinstance(family, CausalFamily):
        raise InputError(f"pipeline parallelism is for causal DiT models, not {type(family).__name__}")
    return family


def trim(dit: CausalWanDiT, plan: StagePlan) -> CausalWanDiT:
    """`dit` with only this stage's blocks (in place: the others are freed); its config counts those blocks, so a
    stream's rings hold only their keys/values."""
    if len(dit.blocks) != plan.bounds[-1]:
        have = len(dit.blocks)
        raise InputError(f"the stage bounds {list(plan.bounds)} are for {plan.bounds[-1]} blocks, the DiT has {have}")
    dit.blocks = nn.ModuleList(list(dit.blocks)[plan.start : plan.stop])
    dit.config = dataclasses.replace(dit.config, num_layers=plan.stop - plan.start)
    return dit


class StageNet:
    """This rank's part of the DiT's forward, called as the DiT is (`causal_batch.Network`): it receives the
    tokens (or embeds the latents), runs its blocks with its own layers' context, and sends them on (or runs the
    head). A stage before the last returns a placeholder velocity (zeros); the family replaces it with the last
    stage's."""

    def __init__(self, dit: CausalWanDiT, plan: StagePlan, link: Link) -> None:
        self.dit, self.plan, self.link = dit, plan, link
        self.config: DiTConfig = dit.config
        self.dtype = next(dit.blocks.parameters()).dtype

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        frame_pos: Tensor,
        cross: CrossKV,
        past: PastKV | list[PastKV] | None = None,
        mask: Tensor | None = None,
        structure: Tensor | None = None,
    ) -> DiTOutput:
        dit, plan, c = self.dit, self.plan, self.config
        B, _, F, H, W = x.shape
        mod = dit.modulation(t, frame_pos, cross, (H, W))
        if plan.first:
            tokens = dit.embed(x, structure)  # (B, F, P, D)
        else:
            tokens = self.link.recv((B, F, mod.grid[0] * mod.grid[1], c.dim), self.dtype, plan.rank - 1)
        tokens, keys, values = dit.run_blocks(tokens, mod, cross, past, mask)
        if plan.last:
            return DiTOutput(dit.output(x, t, tokens, mod, structure), keys, values)
        self.link.send(tokens.contiguous(), plan.rank + 1)  # asynchronous: the next micro-batch runs meanwhile
        return DiTOutput(x.new_zeros((B, c.out_channels, F, H, W), dtype=torch.float32), keys, values)


# -- the family ------------------------------------------------------------------------------------------


def micro_batches(states: Sequence[StreamState], groups: int) -> list[list[StreamState]]:
    """The streams in `groups` contiguous micro-batches of near-equal size (fewer when there are fewer streams)."""
    n = len(states)
    g = max(1, min(groups, n))
    sizes = [n // g + (i < n % g) for i in range(g)]
    out, at = [], 0
    for s in sizes:
        out.append(list(states[at : at + s]))
        at += s
    return out


@dataclass
class Flight:
    """A micro-batch's pass on a rank before the last: sent on, its velocities (one flat tensor) on their way."""

    states: list[StreamState]
    results: list[PassResult]  # this rank's keys/values; placeholder velocities
    shapes: list[tuple[int, ...]]  # each stream's velocity (1, C, F, H, W)
    finishing: list[int]  # chunks each stream's pass finishes (returned to the driver as placeholders)
    velocities: Incoming


class StagedFamily(CausalFamily):
    """The causal family with this rank's stage of the DiT (`ModelFamily`); every rank runs the same driver."""

    def __init__(self, family: CausalFamily, plan: StagePlan, link: Link, groups: int | None = None) -> None:
        """`family`: the whole model as loaded (its DiT is trimmed in place); `groups`: micro-batches a pass is
        split into (default: one per stage)."""
        super().__init__(trim(family.dit, plan), family.autoencoder, family.text_encoder, family.device, family.dtype)
        self.plan, self.link, self.groups = plan, link, groups or plan.world
        self.net = StageNet(self.dit, plan, link)
        self._masks: MaskCache = BoundedCache(256)
        self._flights: dict[int, Flight] = {}  # id(state) -> its pass in flight (ranks before the last)
        self._after: dict[int, list[Callable[[], None]]] = {}  # id(state) -> what to do once its pass lands
        self._frames: dict[tuple[bool, int], int] = {}  # (decoder started, latent frames) -> frames a chunk gives
        self._counts: list[tuple[Incoming, list[tuple[bool, int]]]] = []  # the last rank's frame counts, to check

    # -- conditioning and inputs: rank 0 encodes, every rank gets the result ------------------------------
    def _embed(self, text: str) -> Tensor:
        return self._from_first(lambda: super(StagedFamily, self)._embed(text))  # (T, D)

    def null_condition(self) -> Condition:
        if self._null is None:
            emb = self._from_first(lambda: self.text_encoder.encode([""])[0].to(self.device))
            self._null = self._cross(emb)
        return self._null

    def encode(self, frames: np.ndarray) -> Tensor:
        return self._from_first(lambda: super(StagedFamily, self).encode(frames))

    def _from_first(self, make: object) -> Tensor:
        """What rank 0 makes (`make()`), on every rank: one broadcast of its shape and one of its data."""
        return self.link.broadcast(make() if self.plan.first else None, 0)  # type: ignore[operator]

    def new_state(self, cfg: StreamConfig, seed: int) -> StreamState:
        if cfg.recache:
            raise InputError("recache (KV re-cache on a prompt change) does not run across pipeline stages yet")
        return super().new_state(cfg, seed)

    # -- a stream with a pass in flight: answered from the schedule, or deferred until the pass lands -------
    def needs_chunk(self, state: StreamState) -> bool:
        if id(state) not in self._flights:
            return scheduler.needs_chunk(state)
        # what scheduler.needs_chunk says once the pass lands (re-cache is refused here): the stream batch always
        # takes one; a sequential stream when its chunk leaves, i.e. this pass is the final pass of all in flight
        final = state.cfg.final_pass
        due = state.cfg.batch_steps or all(r.next_pass == final for r in state.inflight)
        self._defer(state, lambda: _check(scheduler.needs_chunk(state) == due, "needs_chunk", state))
        return due

    def admit(self, state: StreamState, cond: Condition, inp: ChunkInput | None = None) -> None:
        if id(state) in self._flights:
            self._defer(state, lambda: CausalFamily.admit(self, state, cond, inp))
        else:
            super().admit(state, cond, inp)

    def recondition(self, state: StreamState, cond: Condition) -> None:
        if id(state) in self._flights:
            self._defer(state, lambda: CausalFamily.recondition(self, state, cond))
        else:
            super().recondition(state, cond)

    def in_flight(self, state: StreamState) -> bool:
        """True when the stream's last pass is on its way through the later stages (ranks before the last)."""
        return id(state) in self._flights

    def _defer(self, state: StreamState, op: Callable[[], None]) -> None:
        self._after.setdefault(id(state), []).append(op)

    def _land(self, state: StreamState) -> None:
        """The stream's pass in flight, if any, lands: its micro-batch's velocities (waited for), every stream of
        that micro-batch stepped with them, then what the driver asked of each meanwhile, in order."""
        f = self._flights.get(id(state))
        if f is None:
            return
        parts = f.velocities.wait().split([int(np.prod(s)) for s in f.shapes])
        for st, r, v, shape, n in zip(f.states, f.results, parts, f.shapes, f.finishing, strict=True):
            del self._flights[id(st)]
            done = scheduler.apply_result(st, dataclasses.replace(r, velocity=v.view(shape)))
            _check(len(done) == n, "the chunks a pass finishes", st)
            for op in self._after.pop(id(st), []):
                op()

    # -- passes --------------------------------------------------------------------------------------------
    def denoise(self, states: Sequence[StreamState]) -> list[list[Tensor]]:
        """One pass of every stream, micro-batch by micro-batch through this rank's stage; finished latents per
        stream: the last rank's own, placeholders of their shape on the others (which decode none), whose passes
        stay in flight until the stream's next pass."""
        with torch._C._InferenceMode(True):
            if self.plan.last:
                return self._denoise_last(states)
            hd, theta = self.dit.config.head_dim, self.dit.config.rope_theta
            out: dict[int, list[Tensor]] = {}
            groups = micro_batches(states, self.groups)
            for group in groups:
                for st in group:
                    self._land(st)
                reqs = [scheduler.next_request(st, hd, theta) for st in group]
                results = run_batch(self.net, reqs, self._masks)  # the tokens go on to the next rank
                flight = self._launch(group, reqs, results)
                for st, n in zip(group, flight.finishing, strict=True):
                    out[id(st)] = [_placeholder(st)] * n
            self.link.flush(keep=len(groups))  # the previous step's sends; this step's travel on
        return [out[id(st)] for st in states]

    def _launch(self, group: list[StreamState], reqs: list[PassRequest], results: list[PassResult]) -> Flight:
        """A rank before the last: post the receive of the micro-batch's velocities and keep its pass in flight."""
        c = self.dit.config
        shapes = [(1, c.out_channels, *r.x.shape[2:]) for r in reqs]
        size = sum(int(np.prod(s)) for s in shapes)
        incoming = self.link.post((size,), torch.float32, self.plan.world - 1, VELOCITY)
        # chunks the pass finishes: those at their last denoising step (scheduler._make_table's `emitted`)
        finishing = [sum(r.next_pass == st.cfg.steps - 1 for r in st.inflight) for st in group]
        flight = Flight(list(group), results, shapes, finishing, incoming)
        for st in group:
            self._flights[id(st)] = flight
        return flight

    def _denoise_last(self, states: Sequence[StreamState]) -> list[list[Tensor]]:
        """The last rank: each micro-batch's velocities to every other rank as soon as they are made, and its
        streams stepped at once."""
        hd, theta = self.dit.config.head_dim, self.dit.config.rope_theta
        out: dict[int, list[Tensor]] = {}
        for group in micro_batches(states, self.groups):
            reqs = [scheduler.next_request(st, hd, theta) for st in group]
            results = run_batch(self.net, reqs, self._masks)
            flat = torch.cat([r.velocity.reshape(-1) for r in results]) if len(results) > 1 else results[0].velocity
            for dst in range(self.plan.world - 1):
                self.link.send(flat.contiguous(), dst, VELOCITY)  # received: the others posted it with their tokens
            for st, r in zip(group, results, strict=True):
                out[id(st)] = scheduler.apply_result(st, r)
        self.link.flush()
        return [out[id(st)] for st in states]

    # -- decoding: the last stage ----------------------------------------------------------------------------
    def decode(self, states: Sequence[StreamState], latents: Sequence[Tensor]) -> list[np.ndarray]:
        """The last stage decodes and sends the others how many frames each chunk gave. They give blank frames of
        that count at once, from what earlier chunks gave (a chunk's count depends only on whether its stream's
        decoder has started and on its latent frames: 4 F, or 4 F - 3 first, for Wan's), so they need not wait
        for this step's decode; they wait for the counts only the first time a kind of chunk comes, and check the
        others two steps later (so every rank's driver counts the same frames and stops at the same step)."""
        if not latents:
            return []
        if self.plan.last:
            frames = super().decode(states, latents)
            counts = torch.tensor([len(f) for f in frames], dtype=torch.long, device=self.device)
            for dst in range(self.plan.world - 1):
                self.link.send(counts, dst, COUNTS)
            self.link.flush()
            return frames
        kinds = []
        for st, lat in zip(states, latents, strict=True):  # a stream may come twice: its first chunk first
            kinds.append((st.decoder is not None, int(lat.shape[1])))
            if st.decoder is None:
                st.decoder = self.autoencoder.new_decoder_state()  # marks the stream's decoder started (empty)
        self._counts.append((self.link.post((len(latents),), torch.long, self.plan.world - 1, COUNTS), kinds))
        self._check_counts(0 if any(k not in self._frames for k in kinds) else 2)
        h, w = self.frame_size
        return [np.zeros((self._frames[k], h, w, 3), np.uint8) for k in kinds]

    def _check_counts(self, keep: int) -> None:
        """Take in the last rank's frame counts but the `keep` newest: learn each kind's count, or fail clearly when
        a count is not the one this rank gave."""
        while len(self._counts) > keep:
            incoming, kinds = self._counts.pop(0)
            for kind, n in zip(kinds, incoming.wait().tolist(), strict=True):  # host sync: two steps late
                if self._frames.setdefault(kind, n) != n:
                    raise StageError(
                        f"{self.plan.name(self.plan.rank)}: a chunk decoded to {n} frames on the last rank where "
                        f"this rank counted {self._frames[kind]} (the autoencoder's frame count is not a function "
                        "of its started state and latent frames): the ranks' drivers no longer agree"
                    )

    def close(self) -> None:
        """Land every pass in flight, check every frame count and wait for every send (before a rank leaves a run
        while the others go on, or between runs)."""
        with torch._C._InferenceMode(True):
            while self._flights:
                self._land(next(iter(self._flights.values())).states[0])
        self._check_counts(0)
        self.link.flush()


def _placeholder(state: StreamState) -> Tensor:
    """A finished latent's stand-in (C, cf, H, W) on a rank that decodes none: zeros, no memory."""
    return torch.zeros((), device=state.ring.device).expand(state.latent_shape)


def _check(ok: bool, what: str, state: StreamState) -> None:
    if not ok:
        raise StageError(f"{what} of a stream in flight was foreseen wrongly (tick {state.tick}): a pipeline bug")
