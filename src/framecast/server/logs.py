"""Structured logs: one line per event, `event=NAME key=value ...`, through the standard logging module."""

from __future__ import annotations

import logging
from typing import Any


def _value(v: Any) -> str:
    text = str(v)
    return repr(text) if (not text or any(c in text for c in ' ="\n')) else text


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `event=EVENT k=v ...`; values with spaces or quotes are quoted."""
    if logger.isEnabledFor(level):
        logger.log(level, " ".join([f"event={event}", *(f"{k}={_value(v)}" for k, v in fields.items())]))


def setup_logging(level: int = logging.INFO) -> None:
    """Timestamped key=value lines on stderr for the framecast and uvicorn loggers."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    for name in ("framecast", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
