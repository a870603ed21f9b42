"""Classifier-free guidance and context noise in the streaming core, each against its reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from framecast.errors import InputError
from framecast.family.causal_batch import run_batch
from framecast.family.denoiser import Denoiser as Engine
from framecast.models.dit import CausalWanDiT, CrossKV, PastKV
from framecast.stream import scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.request import PassRequest
from framecast.stream.state import Condition, StreamState
from tests.conftest import RandomTextEncoder, tiny_model


def _cond(model: CausalWanDiT, text: str) -> Condition:
    return Condition.from_cross(model.cross_kv(RandomTextEncoder(model.config.text_dim).encode([text])))


def _state(model: CausalWanDiT, cfg: StreamConfig, seed: int) -> StreamState:
    null = _cond(model, "<empty>") if cfg.guided else None
    return StreamState.create(model.config, cfg, seed, torch.float32, torch.device("cpu"), null)


def _run(model: CausalWanDiT, cfg: StreamConfig, n: int, seed: int = 7, text: str = "red") -> torch.Tensor:
    st, eng, out, cond = _state(model, cfg, seed), Engine(model), [], _cond(model, text)
    while len(out) < n:
        out += eng.step([st], [lambda: cond])[0]
    return torch.stack(out[:n])  # (n, C, cf, H, W)


GUIDED = dict(guidance=2.5, context_noise=0.2, window_chunks=3, sink_chunks=1, refresh_chunks=5)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_guided_noisy_context_stream_batch_equals_sequential(steps: int) -> None:
    model = tiny_model(text_modulation=True, precondition=True)
    batched = _run(model, StreamConfig(steps=steps, batch_steps=True, **GUIDED), 9)  # type: ignore[arg-type]
    sequential = _run(model, StreamConfig(steps=steps, batch_steps=False, **GUIDED), 9)  # type: ignore[arg-type]
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


def test_guided_velocity_is_the_guidance_formula() -> None:
    """One guided request = v_u + w (v_c - v_u) from its two rows run apart; each keeps its own keys/values."""
    model = tiny_model(text_modulation=True)
    cfg = StreamConfig(steps=3, guidance=3.0)
    st, eng, cond = _state(model, cfg, 3), Engine(model), _cond(model, "red")
    for _ in range(5):  # warm: a full row with cached context
        eng.step([st], [lambda: cond])
    scheduler.admit(st, cond)
    req = scheduler.next_request(st, model.config.head_dim, model.config.rope_theta)
    assert req.rows == 2 and req.guidance == 3.0
    cond_row, uncond_row = _row(req, 0), _row(req, 1)
    with torch.inference_mode():
        guided = run_batch(model, [req])[0]
        plain = run_batch(model, [cond_row])[0]
        uncond = run_batch(model, [uncond_row])[0]
    want = uncond.velocity + 3.0 * (plain.velocity - uncond.velocity)
    torch.testing.assert_close(guided.velocity, want, rtol=1e-5, atol=1e-5)
    n = req.x.shape[2] * model.config.tokens_per_frame
    torch.testing.assert_close(guided.keys[0][guided.row, :n], plain.keys[0][0, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided.keys[0][guided.row + 1, :n], uncond.keys[0][0, :n], rtol=1e-5, atol=1e-5)
    assert (plain.velocity - uncond.velocity).abs().max() > 1e-3  # the empty prompt is another condition
    assert req.past is not None and (req.past.k[:, 0] - req.past.k[:, 1]).abs().max() > 1e-3  # its own cache


def _row(req: PassRequest, i: int) -> PassRequest:
    """Row i of a guided request as an unguided request of one row."""
    mod = None if req.cross.mod is None else req.cross.mod[i : i + 1]
    past = None if req.past is None else PastKV(req.past.k[:, i : i + 1], req.past.v[:, i : i + 1])
    return dataclasses.replace(
        req,
        x=req.x[i : i + 1],
        t=req.t[i : i + 1],
        cross=CrossKV(req.cross.k[:, i : i + 1], req.cross.v[:, i : i + 1], mod),
        past=past,
        guidance=1.0,
        structure=None if req.structure is None else req.structure[i : i + 1],
    )


def test_guided_stream_in_a_shared_batch_equals_alone() -> None:
    """A guided stream next to an unguided one: each gets what it gets alone (rows and their extra row)."""
    model = tiny_model(text_modulation=True, precondition=True)
    cg, cp = StreamConfig(steps=2, **GUIDED), StreamConfig(steps=3, window_chunks=2)  # type: ignore[arg-type]
    alone_g, alone_p = _run(model, cg, 5, seed=1, text="red"), _run(model, cp, 5, seed=2, text="blue")
    g, p, eng = _state(model, cg, 1), _state(model, cp, 2), Engine(model)
    conds = [_cond(model, "red"), _cond(model, "blue")]
    outs: list[list[torch.Tensor]] = [[], []]
    while min(len(o) for o in outs) < 5:
        res = eng.step([g, p], [lambda: conds[0], lambda: conds[1]])
        for o, r in zip(outs, res, strict=True):
            o.extend(r)
    torch.testing.assert_close(torch.stack(outs[0][:5]), alone_g, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack(outs[1][:5]), alone_p, rtol=1e-5, atol=1e-5)


def test_context_noise_reaches_only_later_chunks() -> None:
    """The first chunk has no context, so it is the same; the next ones read a noised cache and change."""
    model = tiny_model()
    base = dict(steps=2, window_chunks=3)
    clean = _run(model, StreamConfig(**base), 4)  # type: ignore[arg-type]
    noisy = _run(model, StreamConfig(context_noise=0.3, **base), 4)  # type: ignore[arg-type]
    torch.testing.assert_close(noisy[0], clean[0])
    assert (noisy[1:] - clean[1:]).abs().max() > 1e-3
    again = _run(model, StreamConfig(context_noise=0.3, **base), 4)  # type: ignore[arg-type]
    torch.testing.assert_close(noisy, again)  # the context noise is seeded with the stream


def test_guidance_and_context_noise_settings_are_checked() -> None:
    with pytest.raises(InputError, match="clean_pass"):
        StreamConfig(context_noise=0.1, clean_pass=False)
    with pytest.raises(InputError, match="context_noise"):
        StreamConfig(context_noise=1.0)
    with pytest.raises(InputError, match="guidance"):
        StreamConfig(guidance=-1.0)
    with pytest.raises(InputError, match="empty prompt"):
        StreamState.create(tiny_model().config, StreamConfig(guidance=2.0), 0, torch.float32, torch.device("cpu"))
