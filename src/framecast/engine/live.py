"""A live stream: one viewer's state, prompt, decoder state and input, stepped by the shared driver.

Iterate it for uint8 (H, W, 3) frames; `set_prompt` steers it live. With a `feed` (video to video) every
chunk it admits starts from the next input chunk and every input chunk gives one output chunk, in order;
iteration ends when a finite input does (after the chunks in flight drain).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from framecast.family.contract import Condition, ModelFamily, State
from framecast.stream.config import StreamConfig
from framecast.stream.prompt import PromptState, check_prompt
from framecast.v2v.feed import Action, FeedStats, InputFeed


@dataclass
class Emitted:
    """What one step did for one stream."""

    action: Action  # RUN: in the pass; SKIP: re-emitted its last chunk; WAIT: no input yet; END: finished
    chunks: list[np.ndarray] = field(default_factory=list)  # frames (T, H, W, 3) of each chunk out, in order
    admitted: int = 0  # chunks it started in this step
    input_ended: bool = False  # its input ended or broke, and it goes on from the prompt
    input_error: str | None = None  # how the input broke (None: it ended normally)

    @property
    def frames(self) -> list[np.ndarray]:
        return [f for c in self.chunks for f in c]


class Stepper(Protocol):
    """What a stream needs of the driver that steps it (`engine.driver.Driver`)."""

    family: ModelFamily

    def step(self, streams: Sequence[Stream], timeout: float = 0.0) -> list[Emitted]: ...


class Stream:
    """One endless stream of frames over a model family; a batch of one for the driver."""

    def __init__(
        self,
        driver: Stepper,
        cfg: StreamConfig,
        prompt: str,
        seed: int = 0,
        feed: InputFeed | None = None,
        input_end: Literal["stop", "prompt"] = "stop",
    ) -> None:
        self.driver, self.family = driver, driver.family
        self.cfg, self.feed, self.input_end = cfg, feed, input_end
        self.state: State = self.family.new_state(cfg, seed)
        self.prompt = PromptState(prompt, self.family.conditioner.embed(check_prompt(prompt)))
        self.frames_emitted = 0
        self.last_stats: FeedStats | None = None  # the input's figures after it was detached

    def set_prompt(self, text: str, blend_chunks: int | None = None) -> None:
        """Take `text` from the next chunk on, keeping the cache; optionally blend over a few chunks. Unblended,
        the chunks in flight that have run fewer than `StreamConfig.switch_passes` passes take it too."""
        blend = self.cfg.blend_chunks if blend_chunks is None else blend_chunks
        cond = self.family.conditioner
        self.prompt.switch(text, cond.embed(check_prompt(text)), blend)
        if not blend:
            self.family.recondition(self.state, cond(text))

    def next_condition(self) -> Condition:
        """Condition of the next chunk admitted (a blend step, while a blend runs)."""
        cond = self.family.conditioner
        return self.prompt.next_condition(cond, cond.cross)

    def step(self, timeout: float = 0.0) -> list[np.ndarray]:
        """One driver step of this stream alone: the frames it emitted (none during warm-up or while waiting)."""
        return self.driver.step([self], timeout)[0].frames

    def detach_input(self) -> str | None:
        """Go on from the prompt alone (text to video), keeping the cache; chunks in flight finish as they are.
        Returns how the input broke (None: it ended normally, or there was none)."""
        feed, self.feed = self.feed, None
        if feed is None:
            return None
        self.last_stats = feed.stats
        feed.source.close()
        return feed.source.error

    @property
    def input_stats(self) -> FeedStats | None:
        """What the stream did with its input (None without one)."""
        return self.feed.stats if self.feed is not None else self.last_stats

    def __iter__(self) -> Iterator[np.ndarray]:
        wait = self.feed.cfg.wait_s if self.feed is not None else 0.0
        while True:
            out = self.driver.step([self], wait)[0]
            yield from out.frames
            if out.action is Action.END:
                return
