"""The driver: one batched denoiser call and one batched decode per step, whatever the number of streams."""

from __future__ import annotations

import numpy as np
import torch

from framecast.engine import Driver, Stream
from framecast.v2v import Action
from tests.test_pipeline import _pipe


def test_one_forward_and_one_decode_per_step_for_many_streams() -> None:
    pipe = _pipe()
    calls = {"forward": 0, "decode": 0}
    pipe.family.network.register_forward_pre_hook(lambda m, a: calls.__setitem__("forward", calls["forward"] + 1))
    decode = pipe.autoencoder.decode

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls["decode"] += 1
        return decode(*args, **kwargs)  # type: ignore[arg-type]

    pipe.autoencoder.decode = counted  # type: ignore[method-assign]
    streams = [pipe.stream(p, seed=i, steps=2) for i, p in enumerate(["red", "blue", "green", "white"])]
    for _ in range(6):
        before = dict(calls)
        out = pipe.driver.step(streams)
        assert calls["forward"] - before["forward"] == 1  # every stream's pass in one forward
        finished = sum(len(e.chunks) for e in out)
        assert calls["decode"] - before["decode"] == (1 if finished else 0)  # all finished chunks in one decode
        assert all(e.action is Action.RUN and e.admitted == 1 for e in out)  # the stream batch admits every pass
    assert all(s.frames_emitted == 5 * pipe.frames_per_chunk for s in streams)  # steps - 1 passes of warm-up


def test_a_stream_is_a_batch_of_one() -> None:
    """Iterating a stream and stepping it through the driver by hand give the same frames."""
    pipe = _pipe()
    it = iter(pipe.stream("red", seed=3))
    by_iter = [next(it) for _ in range(12)]
    stream: Stream = pipe.stream("red", seed=3)
    driver: Driver = pipe.driver
    by_step: list[np.ndarray] = []
    while len(by_step) < 12:
        by_step += driver.step([stream])[0].frames
    np.testing.assert_array_equal(np.stack(by_iter), np.stack(by_step[:12]))
