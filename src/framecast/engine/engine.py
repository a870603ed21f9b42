"""The engine: one denoiser, many streams. Gathers the ready pass of every stream into one batch.

Every front end (the Python iterator, the CLI, the server, the benchmarks) drives streams through
`Engine.step`; the denoise/cache loop exists only here and in `stream.scheduler`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from framecast.engine.batch import run_batch
from framecast.models.dit import CausalWanDiT
from framecast.stream import scheduler
from framecast.stream.state import Condition, StreamState


@dataclass
class StepHooks:
    """Optional callbacks around each forward pass (profiling, metrics); none by default."""

    before: Callable[[int], None] | None = None
    after: Callable[[int], None] | None = None


class Engine:
    def __init__(self, model: CausalWanDiT, hooks: StepHooks | None = None) -> None:
        self.model = model.eval()
        self.hooks = hooks or StepHooks()
        self.passes = 0
        self._masks: dict[tuple, Tensor] = {}  # attention masks by relative chunk layout
        self._head_dim, self._theta = model.config.head_dim, model.config.rope_theta

    def step(self, states: Sequence[StreamState], conds: Sequence[Callable[[], Condition]]) -> list[list[Tensor]]:
        """Run one pass of every stream together; returns the latents each stream finished (C, cf, H, W).

        conds[i] gives the condition for a new chunk of states[i], called only when one is admitted.
        """
        # the guard torch.inference_mode() enters, without its Python layers (~20 us a pass after a forward)
        with torch._C._InferenceMode(True):
            for st, cond in zip(states, conds, strict=True):
                if scheduler.needs_chunk(st):
                    scheduler.admit(st, cond())
            reqs = [scheduler.next_request(st, self._head_dim, self._theta) for st in states]
            if self.hooks.before:
                self.hooks.before(len(reqs))
            results = run_batch(self.model, reqs, self._masks)
            if self.hooks.after:
                self.hooks.after(len(reqs))
            self.passes += 1
            return [scheduler.apply_result(st, r) for st, r in zip(states, results, strict=True)]
