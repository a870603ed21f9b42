"""Pacing: each session's playback deadline, and which sessions join the next engine pass (EDF).

A session plays its frames at its target rate. Its clock holds the deadline of its next chunk: the moment
the client will have shown every frame it has and needs the next one. The engine may work on a session
from `lead` seconds before that deadline; a session further ahead sits out the pass, so nobody is
generated far ahead of playback. When a pass runs, sessions due within one more chunk period join it too
(so sessions with nearby deadlines share passes instead of each paying for its own), earliest deadline
first, at most `max_rows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class PlaybackClock:
    fps: float
    frames_per_chunk: int
    deadline: float | None = None  # None until the first chunk: a stream warms up as fast as it can

    @property
    def period(self) -> float:
        """Seconds of playback in one chunk."""
        return self.frames_per_chunk / self.fps

    def ready_at(self, lead: float) -> float:
        """Earliest time the engine should work on this session."""
        return -math.inf if self.deadline is None else self.deadline - lead

    def emit(self, now: float) -> tuple[float, bool]:
        """A chunk finished at `now`: when its first frame plays, and whether it missed its deadline.

        A late chunk plays at once and the clock restarts from it; the session does not try to catch up.
        """
        if self.deadline is None:
            start, missed = now, False
        else:
            start, missed = max(self.deadline, now), now > self.deadline
        self.deadline = start + self.period
        return start, missed


def pick_due(clocks: dict[str, PlaybackClock], now: float, lead_chunks: float, max_rows: int) -> list[str]:
    """Keys of the sessions for the next pass, earliest deadline first; empty if nobody is due yet."""
    ready = {k: c.ready_at(lead_chunks * c.period) for k, c in clocks.items()}
    if not any(t <= now for t in ready.values()):
        return []
    joining = [k for k, c in clocks.items() if ready[k] <= now + c.period]
    return sorted(joining, key=ready.__getitem__)[:max_rows]


def next_ready(clocks: dict[str, PlaybackClock], lead_chunks: float) -> float:
    """When the earliest session becomes due (inf with no sessions)."""
    return min((c.ready_at(lead_chunks * c.period) for c in clocks.values()), default=math.inf)
