"""Video to video in the streaming core: SDEdit chunk inputs against the text-to-video path and across schedules."""

from __future__ import annotations

import pytest
import torch

from framecast.errors import InputError
from framecast.family.denoiser import Denoiser as Engine
from framecast.models.dit import CausalWanDiT
from framecast.sampling.flow import sdedit_sigmas, sigmas
from framecast.stream import scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.state import ChunkInput, StreamState
from tests.conftest import tiny_model
from tests.test_stream_core import _cond, _state


def _inputs(model: CausalWanDiT, n: int, strengths: list[float], seed: int = 11) -> list[ChunkInput]:
    c, gen = model.config, torch.Generator().manual_seed(seed)
    shape = (1, c.in_channels, c.chunk_frames, c.latent_height, c.latent_width)
    return [ChunkInput(torch.randn(shape, generator=gen), strengths[i % len(strengths)]) for i in range(n)]


def _run_v2v(model: CausalWanDiT, cfg: StreamConfig, inputs: list[ChunkInput], n: int, seed: int = 7) -> torch.Tensor:
    st, eng, out = _state(model, cfg, seed), Engine(model), []
    cond = _cond(model, "red")
    for inp in inputs:
        scheduler.queue_input(st, inp)
    while len(out) < n:
        out += eng.step([st], [lambda: cond])[0]
    return torch.stack(out[:n])  # (n, C, cf, H, W)


def _run_t2v(model: CausalWanDiT, cfg: StreamConfig, n: int, seed: int = 7) -> torch.Tensor:
    return _run_v2v(model, cfg, [], n, seed)


@pytest.mark.parametrize("batch_steps", [True, False])
def test_strength_one_is_text_to_video_bit_for_bit(batch_steps: bool) -> None:
    """(1 - 1) * latent + 1 * noise is the noise itself and the schedule is the stream's own: same frames."""
    model = tiny_model()
    cfg = StreamConfig(steps=3, window_chunks=2, sink_chunks=1, refresh_chunks=4, batch_steps=batch_steps)
    t2v = _run_t2v(model, cfg, 8)
    v2v = _run_v2v(model, cfg, _inputs(model, 20, [1.0]), 8)
    torch.testing.assert_close(v2v, t2v, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("clean_pass", [True, False])
def test_v2v_stream_batch_equals_sequential(steps: int, clean_pass: bool) -> None:
    """Chunks of different strengths in one row: both schedules still give the same frames."""
    model = tiny_model()
    base = dict(steps=steps, clean_pass=clean_pass, window_chunks=3, sink_chunks=1, refresh_chunks=5)
    inputs = _inputs(model, 30, [0.6, 0.35, 1.0, 0.8, 0.123])
    batched = _run_v2v(model, StreamConfig(batch_steps=True, **base), inputs, 10)  # type: ignore[arg-type]
    sequential = _run_v2v(model, StreamConfig(batch_steps=False, **base), inputs, 10)  # type: ignore[arg-type]
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)
    assert (batched - _run_t2v(model, StreamConfig(batch_steps=True, **base), 10)).abs().max() > 1e-2  # type: ignore[arg-type]


def test_first_pass_starts_from_the_noised_input_at_its_strength() -> None:
    model = tiny_model()
    cfg = StreamConfig(steps=2, batch_steps=False)
    st = _state(model, cfg, 5)
    inp = _inputs(model, 1, [0.4])[0]
    scheduler.queue_input(st, inp)
    scheduler.admit(st, _cond(model, "red"))
    noise = torch.randn(st.latent_shape, generator=torch.Generator().manual_seed(5))[None]
    assert st.x is not None
    torch.testing.assert_close(st.x, 0.6 * inp.latent + 0.4 * noise, rtol=1e-6, atol=1e-6)
    c = model.config
    req = scheduler.next_request(st, c.head_dim, c.rope_theta)
    torch.testing.assert_close(req.t, torch.full_like(req.t, 400.0), rtol=1e-5, atol=1e-3)


def test_low_strength_keeps_the_input() -> None:
    """As the strength goes to 0 the finished chunk goes to the input latent; at 1 it does not."""
    model = tiny_model()
    cfg = StreamConfig(steps=2, batch_steps=False)
    inputs = _inputs(model, 4, [1e-3])
    out = _run_v2v(model, cfg, inputs, 4)
    expect = torch.stack([i.latent[0] for i in inputs])
    assert (out - expect).abs().max() < 0.05
    far = _run_v2v(model, cfg, [ChunkInput(i.latent, 1.0) for i in inputs], 4)
    assert (far - expect).abs().max() > 0.5


def test_sdedit_schedule_starts_at_the_strength_and_follows_the_shifted_curve() -> None:
    torch.testing.assert_close(sdedit_sigmas(4, 3.0, 1.0), sigmas(4, 3.0), rtol=0, atol=0)
    for s in (0.9, 0.5, 0.2):
        sig = sdedit_sigmas(4, 3.0, s)
        assert abs(float(sig[0]) - s) < 1e-6 and float(sig[-1]) == 0.0
        assert bool((sig[1:] < sig[:-1]).all())
    with pytest.raises(InputError, match="strength"):
        sdedit_sigmas(4, 3.0, 0.0)


def test_tables_stay_bounded_with_a_new_strength_every_chunk() -> None:
    model = tiny_model(num_layers=1, dim=16, ffn_dim=16, chunk_frames=1, latent_height=2, latent_width=2)
    cfg = StreamConfig(steps=3, window_chunks=2)
    n = 400
    strengths = [0.3 + 0.6 * i / n for i in range(n)]
    st: StreamState = _state(model, cfg, 0)
    eng, cond = Engine(model), _cond(model, "red")
    for inp in _inputs(model, n, strengths):
        scheduler.queue_input(st, inp)
        eng.step([st], [lambda: cond])
    assert len(st.memo.tables) <= st.memo.tables.size and len(st.memo.schedules) <= st.memo.schedules.size
    assert not st.inputs


def test_queue_input_checks_shape_and_strength() -> None:
    model = tiny_model()
    st = _state(model, StreamConfig(), 0)
    good = _inputs(model, 1, [0.5])[0]
    with pytest.raises(InputError, match="shape"):
        scheduler.queue_input(st, ChunkInput(good.latent[:, :1], 0.5))
    with pytest.raises(InputError, match="strength"):
        scheduler.queue_input(st, ChunkInput(good.latent, 1.5))
