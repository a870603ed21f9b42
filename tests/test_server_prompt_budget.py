"""Prompt encodings are bounded per engine pass (issue 20): several sessions flooding distinct prompts cost the
engine `prompts_per_pass` text encodings between two passes, not one per session, so another session keeps
its frame rate. Loopback only, bounded; a text encoder that sleeps as long as a slow real one (no CPU)."""

from __future__ import annotations

import threading
import time

import torch

from tests.conftest import RandomTextEncoder
from tests.test_server_attack import NO_RATE_LIMIT, _Watch
from tests.test_server_support import Client, running, tiny_pipeline

FLOODERS = 6
ENCODE_S = 0.1  # per prompt text; a new prompt costs about two (its embedding, then its condition)


class _SleepyText(RandomTextEncoder):
    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.calls = 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += len(texts)
        time.sleep(ENCODE_S * len(texts))
        return super().encode(texts)


def _flood(url: str, name: str, seconds: float, sent: list[int]) -> None:
    """A session that streams at 4 fps and sends a new prompt every 20 ms for `seconds`."""
    c = Client(url)
    c.send({"type": "start", "prompt": f"{name} start", "seed": 2, "steps": 1, "fps": 4})
    c.message("started")
    end, i = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        c.send({"type": "prompt", "text": f"{name} prompt {i}"})
        i += 1
        time.sleep(0.02)
    sent.append(i)
    c.close()


def test_many_sessions_flooding_prompts_do_not_stall_another() -> None:
    encoders: list[_SleepyText] = []

    def encoder(dim: int) -> _SleepyText:
        encoders.append(_SleepyText(dim))
        return encoders[-1]

    with running(tiny_pipeline(text_encoder=encoder), **NO_RATE_LIMIT) as srv:
        watch = _Watch(srv.ws_url)
        sent: list[int] = []
        threads = [threading.Thread(target=_flood, args=(srv.ws_url, f"f{k}", 4.0, sent)) for k in range(FLOODERS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        gap = watch.longest_gap(t0 + 1.0)  # from when every flooder streams
        watch.close()
    assert len(sent) == FLOODERS and min(sent) > 50, sent
    # before: every iteration encoded one prompt per flooding session (6 x 2 x 0.1 s), and the 16 fps session
    # waited 1.03 s for a frame; now one prompt (~0.2 s) between two passes: 0.065 s (its 62.5 ms frame period)
    assert gap < 0.45, f"the other session waited {gap:.2f} s for a frame"
