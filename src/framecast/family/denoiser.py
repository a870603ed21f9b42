"""The causal family's pass over many streams: admit chunks where due, gather every stream's next pass into
one batch, run it (`causal_batch.run_batch`) and give each stream its result.

    den = Denoiser(model)
    latents = den.step([state_a, state_b], [cond_a, cond_b])   # finished latents (C, cf, H, W) per stream
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from framecast.family.causal_batch import MaskCache, run_batch
from framecast.models.dit import CausalWanDiT
from framecast.stream import recache, scheduler
from framecast.stream.memo import BoundedCache
from framecast.stream.request import PassRequest, PassResult
from framecast.stream.state import Condition, StreamState


@dataclass
class StepHooks:
    """Optional callbacks around each forward pass (profiling, metrics); none by default."""

    before: Callable[[int], None] | None = None
    after: Callable[[int], None] | None = None


class Denoiser:
    """One causal DiT serving any number of `StreamState`s; it holds no per-stream state."""

    def __init__(self, model: CausalWanDiT, hooks: StepHooks | None = None) -> None:
        self.model = model.eval()
        self.hooks = hooks or StepHooks()
        self.passes = 0
        self._masks: MaskCache = BoundedCache(256)  # attention masks by relative chunk layout
        self._head_dim, self._theta = model.config.head_dim, model.config.rope_theta

    def step(self, states: Sequence[StreamState], conds: Sequence[Callable[[], Condition]]) -> list[list[Tensor]]:
        """Admit a chunk where a stream needs one (conds[i]() gives its condition), then run one pass of
        every stream together; returns the latents each stream finished (C, cf, H, W), oldest first."""
        # the guard torch.inference_mode() enters, without its Python layers (~20 us a pass after a forward)
        with torch._C._InferenceMode(True):
            for st, cond in zip(states, conds, strict=True):
                if scheduler.needs_chunk(st):
                    scheduler.admit(st, cond())
            return self._run(states)

    def run(self, states: Sequence[StreamState]) -> list[list[Tensor]]:
        """One pass of every stream (each has its chunks admitted), as one batch."""
        with torch._C._InferenceMode(True):
            return self._run(states)

    def _run(self, states: Sequence[StreamState]) -> list[list[Tensor]]:
        due = [st for st in states if st.recache is not None and recache.due(st)]
        if due:  # a prompt change re-caches the ring before its first chunk's first pass (one forward for all)
            recache.run(due, self._forward, self._head_dim, self._theta)
        reqs = [scheduler.next_request(st, self._head_dim, self._theta) for st in states]
        if self.hooks.before:
            self.hooks.before(len(reqs))
        results = run_batch(self.model, reqs, self._masks)
        if self.hooks.after:
            self.hooks.after(len(reqs))
        self.passes += 1
        return [scheduler.apply_result(st, r) for st, r in zip(states, results, strict=True)]

    def _forward(self, reqs: list[PassRequest]) -> list[PassResult]:
        return run_batch(self.model, reqs, self._masks)
