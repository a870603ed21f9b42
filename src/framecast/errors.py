"""Errors that framecast raises for bad input.

Every error a user can cause (a wrong path, a bad model folder, a malformed option) is a
`FramecastError`: the CLI prints its message on one line and exits non-zero, never a traceback.
"""

from __future__ import annotations


class FramecastError(Exception):
    """A user-facing error with a one-line message."""


class ModelLoadError(FramecastError):
    """A model folder, weight file or built-in name could not be loaded."""


class InputError(FramecastError):
    """An argument or input value is malformed or out of range."""


class MissingExtraError(FramecastError):
    """An optional dependency (an extra such as `server` or `train`) is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed; install it with: pip install 'framecast[{extra}]'")
