"""A session's outbox: frames and messages handed from the engine thread to the session's asyncio tasks.

`put_frame(s)` and `put_message` never block and may be called from any thread. Frames are bounded: when a
client is slow the oldest frame is dropped (and counted). Messages (acks, errors, `input_ended`) are never
dropped below `MAX_MESSAGES` waiting; over it a new message is dropped, counted (`messages_dropped`) and
handed to `on_message_dropped` (the manager counts it in a metric and logs the first one of a session).
One asyncio.Event wakes the waiters; each re-checks its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_MESSAGES = 256


@dataclass(frozen=True)
class Frame:
    """One frame of a session: uint8 (H, W, 3), its index since the stream started, and when to show it."""

    image: np.ndarray
    index: int
    pts: float  # time.monotonic() at which the client should show it
    made: float  # time.monotonic() when the engine finished it


class OutboxClosedError(Exception):
    """The session ended; no more frames or messages."""


class Outbox:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_frames: int) -> None:
        self._loop, self._event = loop, asyncio.Event()
        self._lock = threading.Lock()
        self._frames: deque[Frame] = deque()
        self._messages: deque[dict[str, Any]] = deque()
        self.max_frames = max_frames
        self.dropped = 0
        self.messages_dropped = 0
        self.on_message_dropped: Callable[[int], None] | None = None  # called with messages_dropped so far
        self.closed = False

    # -- producer side (any thread) -------------------------------------------------------------
    def put_frame(self, frame: Frame) -> bool:
        """Queue a frame; False if the oldest frame had to be dropped to make room."""
        return self.put_frames([frame]) == 0

    def put_frames(self, frames: list[Frame]) -> int:
        """Queue a chunk's frames with one wake-up of the event loop; how many old frames were dropped."""
        with self._lock:
            self._frames.extend(frames)
            dropped = max(len(self._frames) - self.max_frames, 0)
            for _ in range(dropped):
                self._frames.popleft()
            self.dropped += dropped
        self._wake()
        return dropped

    def put_message(self, message: dict[str, Any]) -> bool:
        """Queue a message; False when `MAX_MESSAGES` are waiting already and it was dropped."""
        with self._lock:
            kept = len(self._messages) < MAX_MESSAGES
            if kept:
                self._messages.append(message)
            else:
                self.messages_dropped += 1
            count = self.messages_dropped
        if kept:
            self._wake()
        elif self.on_message_dropped is not None:
            self.on_message_dropped(count)
        return kept

    def close(self) -> None:
        self.closed = True
        self._wake()

    def clear_frames(self) -> None:
        with self._lock:
            self._frames.clear()

    def frames_waiting(self) -> int:
        return len(self._frames)

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(self._event.set)

    # -- consumer side (the session's event loop) ----------------------------------------------
    async def get_frame(self) -> Frame:
        return await self._get(frames=True, messages=False)  # type: ignore[return-value]

    async def get_message(self, timeout: float | None = None) -> dict[str, Any] | None:
        return await self._get(frames=False, messages=True, timeout=timeout)  # type: ignore[return-value]

    async def get_any(self, timeout: float | None = None) -> Frame | dict[str, Any] | None:
        """The next message if there is one, else the next frame; None after `timeout` seconds."""
        return await self._get(frames=True, messages=True, timeout=timeout)

    async def _get(self, frames: bool, messages: bool, timeout: float | None = None) -> Frame | dict[str, Any] | None:
        # one deadline for the whole call: wake-ups for the other queue must not restart the timeout
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            with self._lock:
                if messages and self._messages:
                    return self._messages.popleft()
                if frames and self._frames:
                    return self._frames.popleft()
                if self.closed:
                    raise OutboxClosedError
                self._event.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._event.wait()
            except TimeoutError:
                return None
