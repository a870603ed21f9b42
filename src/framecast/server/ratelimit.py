"""A session's control-message rate limit: a token bucket, and one error a burst.

The bucket holds at most `burst` tokens and refills at `rate` tokens a second; each control message takes
one. A message that finds the bucket empty is dropped. The client is told once (the first message dropped),
not once a message: the next error comes only after it has slowed down long enough for the bucket to fill
again. Used on the event loop only (no lock).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class MessageLimit:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._last = float(burst), clock()
        self._told = False
        self.dropped = 0  # messages dropped over the limit, in all

    def take(self) -> tuple[bool, bool]:
        """(may this message be handled, is it the first one dropped of a burst: tell the client)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= self.burst:  # a full bucket: the client slowed down, a new burst will be told again
            self._told = False
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True, False
        self.dropped += 1
        tell, self._told = not self._told, True
        return False, tell
