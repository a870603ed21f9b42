"""Golden: one prompt and seed give the same frames through every front end, because every front end is a loop
over the one driver (`engine.driver`): `framecast generate`, `Pipeline.stream`, a server session (lossless raw
frames) and the driver stepping the stream beside three others. Run with the shipped model (guided)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.cli import main
from framecast.engine.driver import Driver
from framecast.io.video import VideoWriter
from framecast.pipeline import Pipeline
from tests.test_server_support import Client, running

PROMPT, SEED, FRAMES = "a red circle moving left on a blue background", 5, 24  # six chunks of four frames
OTHERS = [("a green square moving up", 1), ("a yellow star", 2), ("a white triangle moving right", 3)]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.load("tiny")


@pytest.fixture(scope="module")
def golden(pipe: Pipeline) -> np.ndarray:
    """The frames of `Pipeline.stream`, the Python API."""
    stream, frames = pipe.stream(PROMPT, SEED), []
    for frame in stream:
        frames.append(frame)
        if len(frames) == FRAMES:
            return np.stack(frames)
    raise AssertionError("the stream ended")


def test_generate_writes_the_stream_frames(pipe: Pipeline, golden: np.ndarray, tmp_path: Path) -> None:
    """The CLI's file is byte for byte the file of the Python API's frames (the writer is deterministic)."""
    fps = pipe.config.fps
    assert main(["generate", PROMPT, "-o", str(tmp_path / "cli.mp4"), "--seed", str(SEED),
                 "--seconds", str(FRAMES / fps)]) == 0  # fmt: skip
    h, w = pipe.frame_size
    with VideoWriter(tmp_path / "api.mp4", fps, w, h) as out:
        for frame in golden:
            out.write(frame)
    assert (tmp_path / "cli.mp4").read_bytes() == (tmp_path / "api.mp4").read_bytes()


def test_generate_equals_the_stream(pipe: Pipeline, golden: np.ndarray) -> None:
    np.testing.assert_array_equal(pipe.generate(PROMPT, FRAMES, seed=SEED), golden)


def test_a_server_session_sends_the_stream_frames(pipe: Pipeline, golden: np.ndarray) -> None:
    """One session over the WebSocket, raw frames (lossless): bit-identical to the Python API. The server runs
    torch on as many CPU threads as the API did (by default it leaves one core to its event loop, and another
    thread count sums in another order)."""
    with running(pipe, engine_threads=torch.get_num_threads()) as srv:
        c = Client(srv.ws_url)
        c.message("hello")
        c.send({"type": "start", "prompt": PROMPT, "seed": SEED, "fps": 200.0, "format": "raw"})
        c.wait_for(lambda c: len(c.frames) >= FRAMES, timeout=120.0)
        c.close()
    assert [i for i, _ in c.frames[:FRAMES]] == list(range(FRAMES))
    np.testing.assert_array_equal(np.stack([f for _, f in c.frames[:FRAMES]]), golden)


def test_the_driver_alone_gives_the_stream_frames(pipe: Pipeline, golden: np.ndarray) -> None:
    stream, frames = pipe.stream(PROMPT, SEED), []
    while len(frames) < FRAMES:
        frames += pipe.driver.step([stream])[0].frames
    np.testing.assert_array_equal(np.stack(frames[:FRAMES]), golden)


def test_the_batched_driver_with_three_other_streams(pipe: Pipeline, golden: np.ndarray) -> None:
    """Beside three other streams, in one batched pass and one batched decode, the stream gets its own frames.

    The CPU kernels of a batch of 8 rows do not round exactly as those of a batch of 2 (oneDNN's conv2d/conv3d
    pick their algorithm by batch size), so the frames agree to one level of uint8 rounding, in a few pixels.
    """
    stream = pipe.stream(PROMPT, SEED)
    others = [pipe.stream(p, s) for p, s in OTHERS]
    frames: list[np.ndarray] = []
    k = 0
    while len(frames) < FRAMES:
        order = others[: k % 4] + [stream] + others[k % 4 :]  # the stream at every place of the batch in turn
        out = pipe.driver.step(order)
        frames += out[order.index(stream)].frames
        assert all(len(e.frames) == len(out[order.index(stream)].frames) for e in out)  # they run in step
        k += 1
    diff = np.abs(np.stack(frames[:FRAMES]).astype(np.int16) - golden.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


def test_a_batch_invariant_driver_gives_the_stream_frames_beside_three_others(
    pipe: Pipeline, golden: np.ndarray
) -> None:
    """With `Driver.batch_invariant` (a pass and a decode per stream), bit for bit the stream's own frames."""
    driver = Driver(pipe.family, batch_invariant=True)
    stream = pipe.stream(PROMPT, SEED)
    others = [pipe.stream(p, s) for p, s in OTHERS]
    frames: list[np.ndarray] = []
    k = 0
    while len(frames) < FRAMES:
        order = others[: k % 4] + [stream] + others[k % 4 :]
        frames += driver.step(order)[order.index(stream)].frames
        k += 1
    np.testing.assert_array_equal(np.stack(frames[:FRAMES]), golden)
