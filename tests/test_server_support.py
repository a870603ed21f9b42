"""Helpers of the server tests (no tests here): a tiny random pipeline, a server on loopback, WS clients."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.pipeline import Pipeline
from framecast.stream.state import StreamState
from tests.conftest import RandomTextEncoder, tiny_model

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server]'")
websockets_sync = pytest.importorskip("websockets.sync.client")

from framecast.server import ServerSettings, create_app  # noqa: E402
from framecast.server.encode import decode_frame  # noqa: E402
from framecast.server.run import ServerThread  # noqa: E402

FAST = dict(port=0, max_fps=1000.0, admission=False, calibrate_passes=1, queue_chunks=64, stats_interval_s=0.2)


def tiny_pipeline(seed: int = 0, text_encoder: Callable[[int], Any] | None = None) -> Pipeline:
    """32x32 frames, 4 frames a chunk, a random DiT, decoder and text encoder (`text_encoder(text_dim)` makes
    another one): fast on any CPU."""
    dit = tiny_model(seed, latent_height=4, latent_width=4, chunk_frames=1)
    torch.manual_seed(seed)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=dit.config.in_channels, width=8, decoder_context=1))
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # a default-init decoder maps every latent to nearly the same grey: add contrast
        for p in ae.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return Pipeline(dit, ae, (text_encoder or RandomTextEncoder)(dit.config.text_dim))


@contextmanager
def running(pipe: Pipeline, **overrides: Any) -> Iterator[ServerThread]:
    settings = ServerSettings(**{**FAST, **overrides})  # type: ignore[arg-type]
    with ServerThread(create_app(pipe, settings), settings) as srv:
        yield srv


class Client:
    """A blocking WebSocket client: JSON messages and decoded frames, kept apart."""

    def __init__(self, url: str) -> None:
        self.ws = _connect(url)
        self.messages: list[dict[str, Any]] = []
        self.frames: list[tuple[int, np.ndarray]] = []

    def send(self, msg: dict[str, Any] | str) -> None:
        self.ws.send(msg if isinstance(msg, str) else json.dumps(msg))

    def recv(self, timeout: float = 10.0) -> None:
        data = self.ws.recv(timeout=timeout)
        if isinstance(data, bytes):
            self.frames.append(decode_frame(data))
        else:
            self.messages.append(json.loads(data))

    def wait_for(self, pred: Callable[[Client], bool], timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while not pred(self):
            left = end - time.monotonic()
            assert left > 0, f"timed out; messages: {self.messages[-5:]}, frames: {len(self.frames)}"
            self.recv(timeout=left)

    def message(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next message of this type (earlier ones of other types are kept)."""
        seen = len(self.messages)
        self.wait_for(lambda c: any(m["type"] == kind for m in c.messages[seen:]), timeout)
        return next(m for m in self.messages[seen:] if m["type"] == kind)

    def close(self) -> None:
        self.ws.close()


def _connect(url: str) -> Any:
    """A blocking connection that queues every incoming message (websockets >= 16 needs legacy=True for this)."""
    try:
        return websockets_sync.connect(url, open_timeout=10, max_queue=None, legacy=True)
    except TypeError:
        return websockets_sync.connect(url, open_timeout=10)


def live_states() -> int:
    gc.collect()
    return sum(isinstance(o, StreamState) for o in gc.get_objects())


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)
