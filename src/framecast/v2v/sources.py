"""Where video-to-video input comes from. Every source hands out its frames in order, a chunk at a time.

    VideoFileSource(path)      a video file (PyAV), decoded as it is read; never drops a frame
    IteratorSource(frames)     any iterable of uint8 (H, W, 3) frames: a numpy clip, a generator; never drops
    LiveSource(capacity)       frames pushed by another thread (a webcam, a screen, a WebRTC track): a bounded
                               buffer that drops its oldest frame when full, and counts it

`poll(n, timeout)` returns a `Grab` of n frames when n are there; fewer only as the last grab of a source
that ended; None when there are none yet (a live source, after waiting up to `timeout` s) or no more.
Finite sources are read as fast as the engine asks (they wait for nobody), so they never drop frames.
A live source keeps at most `capacity` frames: whatever the reader's speed, memory and the input lag
stay bounded, what is kept is always the newest, and `dropped` = pushed - taken - buffered.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from framecast.errors import InputError
from framecast.io.video import VideoReader
from framecast.v2v.frames import as_rgb


@dataclass
class Grab:
    """Frames taken from a source: uint8 (H, W, 3) each, as the source gave them, and when each arrived
    (time.monotonic(): pushed, for a live source; read, for the others)."""

    frames: list[np.ndarray]
    times: list[float]


@runtime_checkable
class FrameSource(Protocol):
    fps: float | None  # the source's own frame rate, when it knows one
    dropped: int  # frames lost because the reader fell behind (live sources only)
    ended: bool  # no frame will come after the ones buffered
    error: str | None  # why it ended, when that was not the normal end of the input

    def poll(self, n: int, timeout: float = 0.0) -> Grab | None: ...

    def close(self) -> None: ...


class _Finite:
    """Shared by the sources read on demand: they end when their input does and never drop a frame."""

    fps: float | None = None
    dropped = 0
    ended = False
    error: str | None = None

    def _next(self) -> np.ndarray | None:
        raise NotImplementedError

    def poll(self, n: int, timeout: float = 0.0) -> Grab | None:
        frames: list[np.ndarray] = []
        while len(frames) < n and not self.ended:
            frame = self._next()
            if frame is None:
                self.ended = True
                self.close()
            else:
                frames.append(frame)
        return Grab(frames, [time.monotonic()] * len(frames)) if frames else None

    def close(self) -> None:
        pass


class VideoFileSource(_Finite):
    """A video file, decoded as it is read. A missing, unreadable, corrupt or empty file raises `InputError`
    here, before anything runs; one found corrupt part way raises it from `poll`."""

    def __init__(self, path: str | Path, max_frames: int | None = None) -> None:
        self.reader = VideoReader(path)
        self.fps, self.max_frames = self.reader.fps, max_frames

    def _next(self) -> np.ndarray | None:
        if self.max_frames is not None and self.reader.frames_read >= self.max_frames:
            return None
        frame = self.reader.read()
        return None if frame is None else as_rgb(frame, self.reader.frames_read - 1)

    def close(self) -> None:
        self.reader.close()


class IteratorSource(_Finite):
    """Frames from any iterable, checked one by one (`InputError` names the frame that is wrong)."""

    def __init__(self, frames: Iterable[np.ndarray], fps: float | None = None) -> None:
        self._it: Iterator[np.ndarray] = iter(frames)
        self.fps, self.count = fps, 0

    def _next(self) -> np.ndarray | None:
        frame = next(self._it, None)
        if frame is None:
            return None
        self.count += 1
        return as_rgb(frame, self.count - 1)


class LiveSource:
    """Frames pushed from another thread, read a chunk at a time; thread-safe.

    `push` never blocks: when `capacity` frames wait already, the oldest is dropped and counted. `end`
    closes the source (with an error message when it broke, e.g. a webcam that disconnected); frames
    already buffered can still be read.
    """

    def __init__(self, capacity: int = 8, fps: float | None = None) -> None:
        if capacity < 1:
            raise InputError(f"a live source needs a capacity of at least 1 frame, got {capacity}")
        self.capacity, self.fps = capacity, fps
        self._buf: deque[tuple[np.ndarray, float]] = deque()
        self._cond = threading.Condition()
        self.pushed = self.taken = self.dropped = 0
        self.ended = False
        self.error: str | None = None
        self.last_push = time.monotonic()  # when the last frame came (creation time before the first)

    def push(self, frame: np.ndarray) -> bool:
        """Add a frame (uint8 (H, W, 3)); False if the oldest buffered frame was dropped for it or the
        source has ended (then the frame is ignored)."""
        rgb = as_rgb(frame, self.pushed)
        with self._cond:
            if self.ended:
                return False
            dropped = len(self._buf) >= self.capacity
            if dropped:
                self._buf.popleft()
                self.dropped += 1
            self.last_push = time.monotonic()
            self._buf.append((rgb, self.last_push))
            self.pushed += 1
            self._cond.notify_all()
        return not dropped

    def end(self, error: str | None = None) -> None:
        """No more frames: the input finished (error None) or broke (error says how)."""
        with self._cond:
            if not self.ended:
                self.ended, self.error = True, error
            self._cond.notify_all()

    def clear(self) -> None:
        """Drop the buffered frames (counted as dropped) and restart the silence clock (`last_push`): a new
        stream starts on this source."""
        with self._cond:
            self.dropped += len(self._buf)
            self._buf.clear()
            self.last_push = time.monotonic()

    def buffered(self) -> int:
        return len(self._buf)

    def poll(self, n: int, timeout: float = 0.0) -> Grab | None:
        if n > self.capacity:
            raise InputError(f"a live source of capacity {self.capacity} can never hold a chunk of {n} frames")
        with self._cond:
            if timeout > 0:
                self._cond.wait_for(lambda: len(self._buf) >= n or self.ended, timeout)
            if len(self._buf) < n and not (self.ended and self._buf):
                return None
            items = [self._buf.popleft() for _ in range(min(n, len(self._buf)))]
            self.taken += len(items)
        return Grab([f for f, _ in items], [t for _, t in items])

    def close(self) -> None:
        self.end()


def as_source(source: object, fps: float | None = None) -> FrameSource:
    """A `FrameSource` from a source, a video file path, a clip (T, H, W, 3) or an iterable of frames."""
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (str, Path)):
        return VideoFileSource(source)
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise InputError(f"an input clip must be an array (T, H, W, 3), got shape {source.shape}")
        if len(source) == 0:
            raise InputError("the input clip has no frames")
        return IteratorSource(list(source), fps)
    if isinstance(source, Iterable):
        return IteratorSource(source, fps)
    raise InputError(f"cannot read input frames from a {type(source).__name__}: pass a path, a clip or frames")
