"""A live stream: per-viewer state plus the prompt, driven by the shared engine, yielding RGB frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch import Tensor

from framecast.engine.engine import Engine
from framecast.stream.prompt import PromptState
from framecast.stream.state import Condition, StreamState


class Conditioner:
    """Text -> condition for a pipeline: embeddings and cross-attention K/V cached per prompt."""

    def __init__(self, embed: Callable[[str], Tensor], cross: Callable[[Tensor], Condition], size: int = 64) -> None:
        self.embed, self.cross = embed, cross
        self._cache: dict[str, Condition] = {}
        self._last: tuple[str, Condition] | None = None  # the most recent entry of the cache
        self.size = size

    def __call__(self, text: str) -> Condition:
        if self._last is not None and self._last[0] == text:  # already the most recent: nothing moves
            return self._last[1]
        cond = self._cache.pop(text, None)
        if cond is None:
            cond = self.cross(self.embed(text))
        self._cache[text] = cond  # most recent last
        if len(self._cache) > self.size:
            self._cache.pop(next(iter(self._cache)))
        self._last = (text, cond) if text in self._cache else None
        return cond


class Stream:
    """One endless stream of frames. Iterate it for uint8 (H, W, 3) frames; `set_prompt` steers it live."""

    def __init__(
        self,
        engine: Engine,
        state: StreamState,
        prompt: str,
        conditioner: Conditioner,
        decode: Callable[[Tensor], list[np.ndarray]],
    ) -> None:
        self.engine, self.state, self.conditioner, self.decode = engine, state, conditioner, decode
        self.prompt = PromptState(prompt, conditioner.embed(prompt))
        self.frames_emitted = 0

    def set_prompt(self, text: str, blend_chunks: int | None = None) -> None:
        """Take `text` from the next chunk on, keeping the cache; optionally blend over a few chunks."""
        blend = self.state.cfg.blend_chunks if blend_chunks is None else blend_chunks
        self.prompt.switch(text, self.conditioner.embed(text), blend)

    def next_condition(self) -> Condition:
        return self.prompt.next_condition(self.conditioner, self.conditioner.cross)

    def accept(self, latents: list[Tensor]) -> list[np.ndarray]:
        """Decode latents (C, cf, H, W) the engine finished for this stream into frames."""
        frames = [f for lat in latents for f in self.decode(lat)]
        self.frames_emitted += len(frames)
        return frames

    def step(self) -> list[np.ndarray]:
        """Run one engine pass for this stream alone; frames it finished (none during warm-up)."""
        return self.accept(self.engine.step([self.state], [self.next_condition])[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield from self.step()
