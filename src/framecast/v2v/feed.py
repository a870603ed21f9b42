"""The input side of one video-to-video stream, between a frame source and the streaming core.

For every chunk the stream admits (`prepare`, called by the driver before the pass):

1. take the next chunk_frames * temporal_factor frames from the source (a short last chunk of a finite
   input is padded with its last frame; the padding never reaches the output);
2. fit them to the model's frame size; measure their motion, which gives the chunk's strength (controller);
3. similarity filter: a chunk nearly identical to the last one the model saw skips the model (SKIP: the
   stream re-emits its last output, runs no pass);
4. otherwise encode the chunk and hand it back as a `ChunkInput` (RUN): the driver admits the stream's next
   chunk from it (SDEdit).

Every input chunk gives exactly one output chunk, in order: output frame i is emitted for input frame i.
The feed keeps the bookkeeping that measures the lag (docs/v2v.md): which input chunk each output chunk
shows, how many input frames had been read when it was emitted, and when its input arrived.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from torch import Tensor

from framecast.stream.config import StreamConfig
from framecast.stream.state import ChunkInput
from framecast.v2v.controller import MotionConfig, MotionController
from framecast.v2v.frames import fit_chunk
from framecast.v2v.similarity import SimilarityConfig, SimilarityFilter
from framecast.v2v.sources import FrameSource

STRENGTH_DECIMALS = 3  # strengths are rounded so chunks share schedules and pass tables


class Action(Enum):
    RUN = "run"  # an input chunk is queued on the stream state: run the pass
    SKIP = "skip"  # a static chunk: re-emit the last output, no pass
    WAIT = "wait"  # no whole chunk yet (a live source)
    END = "end"  # the source ended and every frame was taken


@dataclass(frozen=True)
class V2VConfig:
    """How a stream follows its input: the strength controller, the similarity filter, and how long one
    step waits for a live source."""

    motion: MotionConfig = field(default_factory=MotionConfig)
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    wait_s: float = 0.25

    @classmethod
    def fixed(cls, strength: float, skip_similar: bool = True) -> V2VConfig:
        """The controller off: every chunk at `strength`."""
        return cls(MotionConfig(enabled=False, fixed=strength), SimilarityConfig(enabled=skip_similar))


@dataclass
class FeedStats:
    """What a video-to-video stream did with its input. Frames are input frames (the padding of a short
    last chunk not counted); lags are measured per output chunk, from its first frame."""

    frames_in: int = 0  # frames taken from the source
    chunks_in: int = 0  # chunks taken (each gives one output chunk)
    model_chunks: int = 0  # chunks that went through the model
    skipped: int = 0  # chunks re-emitted without the model (similarity filter)
    chunks_out: int = 0
    frames_out: int = 0
    max_latency_frames: int = 0  # input frames read beyond an output frame when it was emitted
    max_content_lag_frames: int = 0  # output frame index minus the index of the input frame it shows
    latency_s_sum: float = 0.0  # wall clock: the newest frame of a chunk arrived -> that output chunk emitted
    max_latency_s: float = 0.0
    strength: float = 0.0  # of the last chunk
    strength_sum: float = 0.0
    motion: float = 0.0  # of the last chunk
    dropped: int = 0  # frames the source dropped since the feed started (live sources)

    @property
    def mean_latency_s(self) -> float:
        return self.latency_s_sum / self.chunks_out if self.chunks_out else 0.0

    @property
    def mean_strength(self) -> float:
        return self.strength_sum / self.chunks_in if self.chunks_in else 0.0


class InputFeed:
    """Per stream: the source, the controller and filter states, and the order of outputs."""

    def __init__(
        self,
        source: FrameSource,
        encode: Callable[[np.ndarray], Tensor],
        frame_size: tuple[int, int],
        frames_per_chunk: int,
        cfg: V2VConfig | None = None,
    ) -> None:
        self.source, self.encode, self.size, self.per = source, encode, frame_size, frames_per_chunk
        self.cfg = cfg or V2VConfig()
        self.controller = MotionController(self.cfg.motion)
        self.filter = SimilarityFilter(self.cfg.similarity)
        self.stats = FeedStats()
        self.done = False  # the source ended and every frame was taken
        self._arrivals: deque[float] = deque()  # per input chunk not yet answered: when its newest frame came
        self._queued: deque[int] = deque()  # input chunk of every model chunk in flight, oldest first
        self._last: tuple[np.ndarray, int] | None = None  # the last output chunk and the input chunk it shows
        self._pad: ChunkInput | None = None  # the last input queued, repeated to drain a finite input
        self._dropped0 = source.dropped  # drops before this feed are not its own

    # -- before a pass ------------------------------------------------------------------------------
    def prepare(self, timeout: float = 0.0) -> tuple[Action, ChunkInput | None]:
        """Take the next input chunk: RUN with its encoded input, or why there is no pass to run."""
        grab = self.source.poll(self.per, timeout)
        if grab is None:
            self.done = self.source.ended
            return (Action.END if self.done else Action.WAIT), None
        chunk = fit_chunk(grab.frames, self.size, self.per)  # (F, H, W, 3) uint8
        index = self.stats.chunks_in
        self._take(len(grab.frames), grab.times[-1])
        strength = max(round(self.controller.update(chunk), STRENGTH_DECIMALS), 10.0**-STRENGTH_DECIMALS)
        self.stats.strength, self.stats.motion = strength, self.controller.state.motion
        self.stats.strength_sum += strength
        if self.filter.skip(chunk, allowed=self._last is not None):
            self.stats.skipped += 1
            return Action.SKIP, None
        self._pad = ChunkInput(self.encode(chunk), strength)
        self._queued.append(index)
        self.stats.model_chunks += 1
        return Action.RUN, self._pad

    def _take(self, frames: int, arrived: float) -> None:
        st = self.stats
        st.frames_in += frames
        st.chunks_in += 1
        st.dropped = self.source.dropped - self._dropped0
        self._arrivals.append(arrived)

    def pending(self) -> int:
        """Model chunks queued or in flight whose output has not come out yet."""
        return len(self._queued)

    def pad(self) -> ChunkInput:
        """The last input again: a chunk that only pushes the ones in flight out (its output is dropped)."""
        assert self._pad is not None, "nothing to drain"
        return self._pad

    # -- after a pass --------------------------------------------------------------------------------
    def emitted(self, frames: np.ndarray) -> np.ndarray:
        """A model chunk came out, frames (T, H, W, 3): the frames to show (none for a padding chunk)."""
        if not self._queued:
            return frames[:0]
        return self._record(frames, self._queued.popleft())

    def repeat(self) -> np.ndarray:
        """The output of a skipped chunk: the last output chunk again."""
        assert self._last is not None
        return self._record(*self._last)

    def _record(self, frames: np.ndarray, source: int) -> np.ndarray:
        st, now = self.stats, time.monotonic()
        first = st.chunks_out  # the input chunk this output answers, by position
        latency_s = now - self._arrivals.popleft()
        st.latency_s_sum += latency_s
        st.max_latency_s = max(st.max_latency_s, latency_s)
        st.max_latency_frames = max(st.max_latency_frames, st.frames_in - 1 - first * self.per)
        st.max_content_lag_frames = max(st.max_content_lag_frames, (first - source) * self.per)
        st.chunks_out += 1
        self._last = (frames, source)
        out = frames[: max(0, st.frames_in - st.frames_out)]  # the padding of a short last chunk goes
        st.frames_out += len(out)
        return out


def latency_bound(cfg: StreamConfig, frames_per_chunk: int) -> int:
    """Most input frames read beyond output frame i when it comes out, for a finite source: the chunk must
    be whole, and the stream batch emits a chunk `cfg.emit_delay` passes after admitting it. (A live source
    adds the frames waiting in its buffer, at most its capacity.)"""
    return (cfg.emit_delay + 1) * frames_per_chunk - 1


def content_lag_bound(cfg: StreamConfig, frames_per_chunk: int, max_skips: int) -> int:
    """Most frames by which output frame i shows an older input frame than frame i: 0 without skips; a
    skip re-emits the last output, which in the stream batch is the chunk `cfg.emit_delay` passes older, and
    delays the chunks in flight by one chunk (docs/v2v.md)."""
    return (cfg.emit_delay + 1) * max_skips * frames_per_chunk
