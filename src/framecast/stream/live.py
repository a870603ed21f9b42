"""A live stream: per-viewer state plus the prompt, driven by the shared engine, yielding RGB frames.

With an input feed attached (video to video, `framecast.v2v`), every chunk the stream admits starts from
the next input chunk, and every input chunk gives one output chunk, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch import Tensor

from framecast.engine.engine import Engine
from framecast.stream import scheduler
from framecast.stream.prompt import PromptState
from framecast.stream.state import Condition, StreamState
from framecast.v2v.feed import Action, InputFeed


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
    """One endless stream of frames. Iterate it for uint8 (H, W, 3) frames; `set_prompt` steers it live.

    With a `feed` (video to video) the stream follows its input: iteration ends when a finite input does.
    """

    def __init__(
        self,
        engine: Engine,
        state: StreamState,
        prompt: str,
        conditioner: Conditioner,
        decode: Callable[[Tensor, Tensor | None], list[np.ndarray]],
        feed: InputFeed | None = None,
    ) -> None:
        self.engine, self.state, self.conditioner, self.decode = engine, state, conditioner, decode
        self.prompt = PromptState(prompt, conditioner.embed(prompt))
        self.decoder_past: Tensor | None = None  # (C, h, w): the last latent frame decoded (see `take_past`)
        self.frames_emitted = 0
        self.feed = feed

    def set_prompt(self, text: str, blend_chunks: int | None = None) -> None:
        """Take `text` from the next chunk on, keeping the cache; optionally blend over a few chunks. Unblended,
        the chunks in flight that have run fewer than `StreamConfig.switch_passes` passes take it too."""
        blend = self.state.cfg.blend_chunks if blend_chunks is None else blend_chunks
        self.prompt.switch(text, self.conditioner.embed(text), blend)
        if not blend:
            scheduler.recondition(self.state, self.conditioner(text))

    def next_condition(self) -> Condition:
        return self.prompt.next_condition(self.conditioner, self.conditioner.cross)

    def accept(self, latents: list[Tensor]) -> list[np.ndarray]:
        """Decode latents (C, cf, H, W) the engine finished for this stream into frames."""
        chunks = [self.decode(lat, self.take_past(lat)) for lat in latents]
        if self.feed is not None:  # in input order; a padding chunk gives none
            chunks = [list(self.feed.emitted(np.stack(c))) for c in chunks]
        frames = [f for c in chunks for f in c]
        self.frames_emitted += len(frames)
        return frames

    def take_past(self, latent: Tensor) -> Tensor | None:
        """The decoder's past for the finished chunk `latent` (C, cf, h, w): the latent frame decoded just
        before it (None for the first chunk); `latent`'s last frame becomes the next chunk's past."""
        past, self.decoder_past = self.decoder_past, latent[:, -1]
        return past

    def step(self, timeout: float = 0.0) -> list[np.ndarray]:
        """Run one engine pass for this stream alone; frames it finished (none during warm-up).

        With a feed, a pass that admits a chunk takes the next input chunk first (waiting up to `timeout`
        s for a live source): no whole chunk yet, no pass; a chunk the similarity filter skips, no pass
        and the last output again.
        """
        if self.feed is not None and scheduler.needs_chunk(self.state):
            action = self.feed.prepare(self.state, timeout)
            if action is Action.SKIP:
                frames = list(self.feed.repeat())
                self.frames_emitted += len(frames)
                return frames
            if action is not Action.RUN:
                return []
        return self.accept(self.engine.step([self.state], [self.next_condition])[0])

    def drain(self) -> list[np.ndarray]:
        """After a finite input ended: the frames of the chunks still in flight (the last input chunk is
        queued again to push them out; what it gives is dropped)."""
        frames: list[np.ndarray] = []
        while self.feed is not None and self.feed.pending():
            if scheduler.needs_chunk(self.state):
                self.feed.pad(self.state)
            frames += self.accept(self.engine.step([self.state], [self.next_condition])[0])
        return frames

    def detach_input(self) -> None:
        """Go on from the prompt alone (text to video), keeping the cache; chunks in flight finish as they are."""
        self.feed = None
        self.state.inputs.clear()

    def __iter__(self) -> Iterator[np.ndarray]:
        while self.feed is None or not self.feed.done:
            yield from self.step(self.feed.cfg.wait_s if self.feed is not None else 0.0)
        yield from self.drain()
