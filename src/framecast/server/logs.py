"""Structured logs: one line per event, `event=NAME key=value ...`, through the standard logging module.

A session's own lines (its refused messages, prompts, starts, failures) go through its `LineLimit`: at most
`limit` lines per `window_s` seconds, so one client cannot flood the log; the lines held back are counted and
summarised (`event=log_suppressed session=... lines=N`) with the session's next line, and in `session_close`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any


def _value(v: Any) -> str:
    text = str(v)
    return repr(text) if (not text or any(c in text for c in ' ="\n')) else text


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event=EVENT k=v ...`; values with spaces or quotes are quoted."""
    if logger.isEnabledFor(level):
        logger.log(level, " ".join([f"event={event}", *(f"{k}={_value(v)}" for k, v in fields.items())]))


class LineLimit:
    """At most `limit` log lines per window of `window_s` seconds; the rest are counted. Thread-safe (the
    event loop and the engine thread both log for a session)."""

    def __init__(self, limit: int = 20, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._lock = threading.Lock()
        self._start, self._used = clock(), 0
        self._pending = 0  # held back and not yet summarised
        self.suppressed = 0  # held back in all

    def take(self) -> tuple[bool, int]:
        """(may this line be logged, lines held back since the last summary: log that summary first)."""
        with self._lock:
            now = self._clock()
            if now - self._start >= self.window_s:
                self._start, self._used = now, 0
            if self._used >= self.limit:
                self._pending += 1
                self.suppressed += 1
                return False, 0
            self._used += 1
            pending, self._pending = self._pending, 0
            return True, pending


def session_event(
    logger: logging.Logger, limit: LineLimit, event: str, level: int = logging.INFO, **fields: Any
) -> None:
    """`log_event` for a line one session causes, within its `LineLimit`."""
    if not logger.isEnabledFor(level):
        return
    ok, held = limit.take()
    if held:
        log_event(
            logger,
            "log_suppressed",
            logging.WARNING,
            session=fields.get("session"),
            lines=held,
            window_s=limit.window_s,
        )
    if ok:
        log_event(logger, event, level, **fields)


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped key=value lines on stderr for the framecast and uvicorn loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    for name in ("framecast", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
