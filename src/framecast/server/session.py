"""One viewer's session: what the transports and the engine thread share about it.

The asyncio side (a transport) posts commands and reads the outbox; the engine thread owns the stream
(`engine_loop.Live`) and writes frames, messages and counters. Commands cross threads through a deque
(append and popleft are atomic), counters are plain numbers written by one thread only.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from framecast.server.capacity import Demand
from framecast.server.logs import LineLimit
from framecast.server.outbox import Outbox
from framecast.server.ratelimit import MessageLimit
from framecast.v2v import LiveSource

_ids = itertools.count(1)  # session ids: unique and readable in logs; not state that anything depends on


@dataclass(frozen=True)
class StreamParams:
    """How a session's stream runs; fixed from one start message to the next."""

    prompt: str
    seed: int
    steps: int
    fps: float
    format: str = "jpeg"
    quality: int = 80
    source: str = "none"  # video-to-video input: none, webcam (the session's live input) or file (its upload)
    strength: float | None = None  # fixed strength; None: motion-aware


@dataclass(frozen=True)
class Start:
    params: StreamParams


@dataclass(frozen=True)
class SetPrompt:
    text: str
    blend: int
    received: float  # time.monotonic() when the message arrived


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Close:
    pass


Command = Start | SetPrompt | Stop | Close


def coalesce(commands: list[Command]) -> list[Command]:
    """What is left to do of a session's pending commands, in order: at most one start, stop or close (the
    last one: it replaces or ends whatever came before it) and at most one prompt (the last one after it).

    A prompt flood then costs the engine one text encoding per session per iteration, not one per message. A
    start followed by prompts becomes one start with the last prompt (the new stream begins with it).
    """
    last = max((i for i, c in enumerate(commands) if not isinstance(c, SetPrompt)), default=-1)
    head = commands[last] if last >= 0 else None
    prompts = [c for c in commands[last + 1 :] if isinstance(c, SetPrompt)]
    prompt = prompts[-1] if prompts else None
    if isinstance(head, Start) and prompt is not None:
        return [Start(replace(head.params, prompt=prompt.text))]
    return [c for c in (head, prompt) if c is not None]


@dataclass
class SessionStats:
    """Counters of the current stream, written by the engine thread (reset at every start)."""

    chunks: int = 0
    frames: int = 0
    misses: int = 0
    latency_ms: float = 0.0  # chunk latency, exponential average: admitted -> decoded
    prompt_latency_ms: float | None = None  # last prompt change -> first frame with the new prompt
    input: dict[str, Any] | None = None  # video to video: what the input feed counted (see `EngineLoop`)
    started: float = field(default_factory=time.monotonic)


class Session:
    def __init__(
        self, outbox: Outbox, transport: str, limit: MessageLimit | None = None, log: LineLimit | None = None
    ) -> None:
        self.id = f"s{next(_ids)}"
        self.transport = transport
        self.outbox = outbox
        self.commands: deque[Command] = deque()
        self.params: StreamParams | None = None  # what the client last started (asyncio side)
        self.demand: Demand | None = None  # capacity reserved while streaming
        self.stats = SessionStats()
        self.opened = time.monotonic()
        self.live_input: LiveSource | None = None  # webcam frames (WebRTC track or WebSocket JPEGs)
        self.upload: Path | None = None  # the video file this session uploaded
        self.upload_token = secrets.token_urlsafe(16)  # names the session to POST /upload
        self.limit = limit or MessageLimit(10.0, 20)  # control messages (event loop only)
        self.log = log or LineLimit()  # this session's log lines (any thread)

    @property
    def streaming(self) -> bool:
        return self.params is not None
