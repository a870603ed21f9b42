"""The re-noise sampler (`StreamConfig.sampler = "renoise"`): its step, its noise, its settings. Both schedules
against the reference loop with it are in tests/test_reference.py (the `renoise*` scenarios)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from framecast.errors import InputError
from framecast.sampling.flow import euler_step, predict_x0, renoise_step
from framecast.stream import scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.reference import reference_stream
from framecast.stream.state import RENOISE_SEED, Condition, StreamState
from tests.conftest import RandomTextEncoder, tiny_model


def _cond(text: str) -> Condition:
    model = tiny_model()
    return Condition.from_cross(model.cross_kv(RandomTextEncoder(model.config.text_dim).encode([text])))


def test_renoise_step_is_x0_noised_afresh() -> None:
    gen = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(1, 4, 3, 2, 2, generator=gen) for _ in range(3))
    s, s2 = torch.tensor([0.9, 0.5, 0.2]).view(1, 1, 3, 1, 1), torch.tensor([0.6, 0.2, 0.0]).view(1, 1, 3, 1, 1)
    want = (1 - s2) * (x - s * v) + s2 * noise
    torch.testing.assert_close(renoise_step(x, v, s, s2, noise), want, rtol=0, atol=1e-6)
    # to level 0 both samplers give the clean estimate, bit for bit
    zero = torch.zeros(())
    torch.testing.assert_close(renoise_step(x, v, s, zero, noise), euler_step(x, v, s, zero), rtol=0, atol=0)
    torch.testing.assert_close(renoise_step(x, v, s, zero, noise), predict_x0(x, v, s), rtol=0, atol=0)


def test_sampler_is_checked() -> None:
    assert StreamConfig().sampler == "euler"
    with pytest.raises(InputError, match="sampler must be one of euler, renoise"):
        StreamConfig(sampler="ddim")


def test_renoise_changes_every_chunk_and_one_step_is_euler() -> None:
    """With steps > 1 the fresh noise changes every chunk; with one step there is nothing to re-noise."""
    model, red = tiny_model(), _cond("red")
    cfg = StreamConfig(steps=3, window_chunks=2, sink_chunks=1, refresh_chunks=10_000)
    euler = reference_stream(model, cfg, [red] * 3, 3, 7)
    fresh = reference_stream(model, dataclasses.replace(cfg, sampler="renoise"), [red] * 3, 3, 7)
    assert all((euler[n] - fresh[n]).abs().max() > 1e-3 for n in range(3))
    one = dataclasses.replace(cfg, steps=1)
    torch.testing.assert_close(
        reference_stream(model, one, [red] * 3, 3, 7),
        reference_stream(model, dataclasses.replace(one, sampler="renoise"), [red] * 3, 3, 7),
        rtol=0,
        atol=0,
    )


def test_renoise_draws_apart_from_the_start_noise() -> None:
    """Each chunk takes its `steps - 1` draws when admitted, from a generator of their own: every chunk starts from
    the noise it starts from under Euler, and a stream without the sampler keeps no draws."""
    model, red = tiny_model(), _cond("red")
    cfg = StreamConfig(steps=4)
    states = [
        StreamState.create(model.config, c, 3, torch.float32, torch.device("cpu"))
        for c in (cfg, dataclasses.replace(cfg, sampler="renoise"))
    ]
    plain, fresh = states
    assert plain.renoise is None and fresh.renoise is not None
    for _ in range(3):
        for st in states:
            scheduler.admit(st, red)
    assert plain.x is not None and fresh.x is not None
    torch.testing.assert_close(fresh.x, plain.x, rtol=0, atol=0)  # (1, C, 3 cf, H, W): three chunks' start noise
    assert all(c.renoise is None for c in plain.inflight)
    assert all(c.renoise is not None and c.renoise.shape == (3, *fresh.latent_shape) for c in fresh.inflight)
    gen = torch.Generator().manual_seed(3 + RENOISE_SEED)  # one draw per step after the first, chunk after chunk
    for c in fresh.inflight:
        assert c.renoise is not None
        for j in range(3):
            torch.testing.assert_close(c.renoise[j], torch.randn(fresh.latent_shape, generator=gen), rtol=0, atol=0)
