"""The fast paths (stream batch and sequential) against the plain reference loop (`stream.reference`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from framecast.errors import InputError
from framecast.family.denoiser import Denoiser
from framecast.models.dit import CausalWanDiT
from framecast.stream import scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.reference import reference_stream
from framecast.stream.state import ChunkInput, Condition, StreamState
from tests.conftest import RandomTextEncoder, tiny_config, tiny_model


def _fast(
    model: CausalWanDiT,
    cfg: StreamConfig,
    conds: Callable[[int], Condition],
    chunks: int,
    seed: int,
    null: Condition | None = None,
    inputs: list[ChunkInput | None] | None = None,
    recache: set[int] | None = None,
) -> torch.Tensor:
    """The fast path under test, one stream on the engine (the only place this file drives it): the first
    `chunks` finished latents (chunks, C, cf, H, W). Inputs go in as a queue, so only a prefix of chunks has one.
    A chunk k in `recache` is a prompt change (`scheduler.recondition`, as `Stream.set_prompt` calls it) made as
    soon as chunk k is the next to be admitted (`cfg.recache` re-caches)."""
    st = StreamState.create(model.config, cfg, seed, torch.float32, torch.device("cpu"), null)
    given = [i for i in inputs or [] if i is not None]
    assert all(i is not None for i in (inputs or [])[: len(given)]), "inputs of the fast path are a prefix"
    for inp in given:
        scheduler.queue_input(st, inp)
    den, out, changes = Denoiser(model), list[torch.Tensor](), sorted(recache or ())
    while len(out) < chunks:
        if changes and st.next_chunk == changes[0]:
            scheduler.recondition(st, conds(changes.pop(0)))
        out += den.step([st], [lambda: conds(st.next_chunk)])[0]
    return torch.stack(out[:chunks])


def _cond(model: CausalWanDiT, text: str) -> Condition:
    return Condition.from_cross(model.cross_kv(RandomTextEncoder(model.config.text_dim).encode([text])))


def _shape(model: CausalWanDiT) -> tuple[int, int, int, int]:
    c = model.config
    return c.in_channels, c.chunk_frames, c.latent_height, c.latent_width


def _inputs(model: CausalWanDiT, n: int, strengths: list[float], seed: int = 11) -> list[ChunkInput | None]:
    gen = torch.Generator().manual_seed(seed)
    return [
        ChunkInput(torch.randn((1, *_shape(model)), generator=gen), strengths[i % len(strengths)]) for i in range(n)
    ]


CHUNKS, SEED = 8, 7
EVICT = dict(window_chunks=2, sink_chunks=1, refresh_chunks=10_000)  # a 2-chunk window evicts from chunk 4 on
REFRESH = dict(window_chunks=2, sink_chunks=1, refresh_chunks=3)  # positions wrap, and the sink moves, in the run

# name -> (model options, stream settings, prompt switch at chunk (or None), video-to-video strengths (or None))
SCENARIOS: dict[str, tuple[dict, dict, int | None, list[float] | None]] = {
    "plain": ({}, {}, None, None),
    "evict": ({}, EVICT, None, None),
    "refresh": ({}, REFRESH, None, None),
    "guided": ({}, dict(REFRESH, guidance=3.0), None, None),
    "context_noise": ({}, dict(REFRESH, context_noise=0.2), None, None),
    "text_modulation": (dict(text_modulation=True, precondition=True), REFRESH, None, None),
    "switch": (dict(text_modulation=True), REFRESH, 4, None),
    "guided_noisy_switch": (dict(text_modulation=True), dict(REFRESH, guidance=3.0, context_noise=0.2), 5, None),
    "v2v": (dict(structure_channels=tiny_config().in_channels), REFRESH, None, [1.0, 0.6, 0.9, 0.3]),
    "listed": ({}, dict(REFRESH, timesteps=(1000, 757, 522, 300), shift=1.0), None, None),  # a recipe's list
    "listed_v2v": (
        dict(structure_channels=tiny_config().in_channels),
        dict(REFRESH, timesteps=(700, 500, 400, 200), shift=8.0),
        None,
        [1.0, 0.6, 0.9],
    ),
    "renoise": ({}, dict(REFRESH, sampler="renoise"), None, None),  # the anchors' sampler
    "renoise_guided_switch": ({}, dict(REFRESH, sampler="renoise", guidance=3.0, context_noise=0.2), 4, None),
    "renoise_v2v": (
        dict(structure_channels=tiny_config().in_channels),
        dict(REFRESH, sampler="renoise", timesteps=(700, 500, 400, 200), shift=8.0),
        None,
        [1.0, 0.6, 0.9],
    ),
    # KV re-cache (`recache`) at the switch: eviction and refresh in the run, guided with context noise and the
    # re-noise sampler, structured video to video
    "recache": (dict(text_modulation=True), dict(REFRESH, recache=True), 4, None),
    "recache_guided_noisy_renoise": (
        dict(text_modulation=True),
        dict(REFRESH, recache=True, guidance=3.0, context_noise=0.2, sampler="renoise"),
        5,
        None,
    ),
    "recache_v2v": (dict(structure_channels=tiny_config().in_channels), dict(REFRESH, recache=True), 3, [0.6, 1.0]),
    "v2v_refiner_guided": (
        dict(structure_channels=tiny_config().in_channels, refiner_channels=8),
        dict(REFRESH, guidance=3.0, context_noise=0.2),
        3,
        [0.6, 1.0, 0.8],
    ),
}


Case = tuple[
    CausalWanDiT, StreamConfig, Callable[[int], Condition], Condition | None, list[ChunkInput | None] | None, set[int]
]


def _case(name: str, steps: int, clean_pass: bool) -> Case:
    """Model, settings, condition of chunk n, empty prompt (guided), inputs and re-cache chunks of a scenario."""
    model_kw, stream_kw, switch, strengths = SCENARIOS[name]
    model = tiny_model(**model_kw)
    cfg = StreamConfig(steps=steps, clean_pass=clean_pass, **stream_kw)
    red, blue = _cond(model, "red"), _cond(model, "blue")
    conds = (lambda n: red) if switch is None else (lambda n: red if n < switch else blue)
    null = _cond(model, "") if cfg.guided else None
    inputs = None
    if strengths is not None:  # the first 6 chunks have an input, the rest none: rows mix both
        inputs = _inputs(model, 6, strengths) + [None] * (CHUNKS - 6)
    return model, cfg, conds, null, inputs, ({switch} if cfg.recache and switch is not None else set())


# every step count with and without the clean pass on the window that evicts and refreshes; each other scenario at
# 2 and 4 steps, with and without the clean pass where it allows (context noise needs it)
CASES = [("refresh", s, c) for s in (1, 2, 3, 4) for c in (True, False)] + [
    (name, s, c)
    for name, (_, kw, _, _) in SCENARIOS.items()
    if name != "refresh"
    for s in (2, 4)
    for c in ((True,) if kw.get("context_noise") else (True, False))
]


@pytest.mark.parametrize(
    ("name", "steps", "clean_pass"), CASES, ids=[f"{n}-{s}-{'clean' if c else 'noclean'}" for n, s, c in CASES]
)
def test_fast_paths_equal_the_reference(name: str, steps: int, clean_pass: bool) -> None:
    model, cfg, conds, null, inputs, recache = _case(name, steps, clean_pass)
    want = reference_stream(model, cfg, conds, CHUNKS, SEED, null, inputs, recache)
    assert want.shape == (CHUNKS, *_shape(model)) and torch.isfinite(want).all()
    got = {
        schedule: _fast(model, dataclasses.replace(cfg, batch_steps=b), conds, CHUNKS, SEED, null, inputs, recache)
        for schedule, b in (("stream batch", True), ("sequential", False))
    }
    torch.testing.assert_close(got, {schedule: want for schedule in got}, rtol=1e-5, atol=1e-5)  # names the schedule


def test_the_reference_is_not_vacuous() -> None:
    """Seed, context (window, sinks), prompt, clean pass and inputs all change what the reference draws."""
    model = tiny_model(text_modulation=True, structure_channels=tiny_config().in_channels)
    red, blue = _cond(model, "red"), _cond(model, "blue")
    cfg = StreamConfig(steps=2, window_chunks=1, sink_chunks=0, refresh_chunks=10_000)
    base = reference_stream(model, cfg, [red] * 4, 4, SEED)

    def differs(other: torch.Tensor, first: int = 0) -> None:
        """`other` equals `base` before chunk `first` and differs from it in every chunk from there."""
        torch.testing.assert_close(other[:first], base[:first], rtol=0, atol=0)
        for n in range(first, len(base)):
            assert (other[n] - base[n]).abs().max() > 1e-4, f"chunk {n} unchanged"  # 10x the equivalence tolerance

    differs(reference_stream(model, cfg, [red] * 4, 4, SEED + 1))
    differs(reference_stream(model, dataclasses.replace(cfg, window_chunks=2), [red] * 4, 4, SEED), first=2)
    differs(reference_stream(model, dataclasses.replace(cfg, sink_chunks=1), [red] * 4, 4, SEED), first=2)
    differs(reference_stream(model, cfg, [red, red, blue, blue], 4, SEED), first=2)
    differs(reference_stream(model, dataclasses.replace(cfg, clean_pass=False), [red] * 4, 4, SEED), first=1)
    differs(reference_stream(model, cfg, [red] * 4, 4, SEED, inputs=[None, *_inputs(model, 3, [1.0])]), first=1)
    # chunks 1.. start from the same noise under the same prompt: they differ only through what they see
    differs(reference_stream(model, cfg, [red] * 4, 4, SEED, inputs=_inputs(model, 1, [0.5])))


def test_the_reference_needs_the_empty_prompt_when_guided() -> None:
    model = tiny_model()
    with pytest.raises(InputError):
        reference_stream(model, StreamConfig(guidance=2.0), lambda n: _cond(model, "red"), 1, SEED)
