"""Guarded imports of the `server` extra: one clear message when a package is missing."""

from __future__ import annotations

import importlib

from framecast.errors import MissingExtraError

# import name -> package name on PyPI
PACKAGES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "aiortc": "aiortc",
    "prometheus_client": "prometheus-client",
    "PIL": "pillow",
    "websockets": "websockets",
}


def require_server_extra() -> None:
    """Raise `MissingExtraError` naming the first missing package of the server extra."""
    for module, package in PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtraError(package, "server") from None
