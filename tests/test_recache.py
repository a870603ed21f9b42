"""KV re-cache on a prompt change (`StreamConfig.recache`). Both schedules against the reference loop with it are in
tests/test_reference.py (the `recache*` scenarios: eviction and refresh, guided with context noise and the re-noise
sampler, video to video); here: the re-cache against a recompute of the whole history, the same prompt leaving the
cache and the frames as they were, the drain, memory, and the stream through the driver."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from framecast.errors import InputError
from framecast.family.causal_batch import run_batch
from framecast.family.denoiser import Denoiser
from framecast.models.dit import CausalWanDiT
from framecast.pipeline import Pipeline
from framecast.planner import kv_cache_bytes
from framecast.recipes import recipe
from framecast.stream import recache, scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.request import visible
from framecast.stream.state import Condition, StreamState
from tests.conftest import RandomTextEncoder, tiny_config, tiny_model

NO_EVICTION = dict(window_chunks=8, sink_chunks=1, refresh_chunks=10_000)  # every chunk stays, positions never move


def _cond(model: CausalWanDiT, text: str) -> Condition:
    return Condition.from_cross(model.cross_kv(RandomTextEncoder(model.config.text_dim).encode([text])))


def _state(model: CausalWanDiT, cfg: StreamConfig, null: Condition | None = None) -> StreamState:
    return StreamState.create(model.config, cfg, 5, torch.float32, torch.device("cpu"), null)


def _to_recache(
    model: CausalWanDiT, st: StreamState, cond: Condition, k: int, new: Condition
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stream under `cond`, change to `new` when chunk k is next, and stop right after the re-cache (before chunk
    k's first pass): the finished latents (C, cf, H, W) so far, and the rings' store just before the re-cache."""
    den, out = Denoiser(model), list[torch.Tensor]()
    while True:
        if st.next_chunk == k and st.recache is not None and st.recache.pending is None and st.recache.barrier < k:
            scheduler.recondition(st, new)
        if scheduler.needs_chunk(st):
            scheduler.admit(st, cond if st.next_chunk < k else new)
        if recache.due(st):
            before = (st.ring.store if st.ring.rows is None else st.ring.rows).clone()
            c = model.config
            recache.run([st], lambda reqs: run_batch(model, reqs), c.head_dim, c.rope_theta)
            return out, before
        out += den.run([st])[0]


def _ring_kv(st: StreamState, row: int) -> torch.Tensor:
    """Keys and values of the filled ring slots of one row (2, L, n, N, h, hd)."""
    slots = [s for s, c in enumerate(st.ring.chunks) if c >= 0]
    store = st.rings[row].store
    return store[:, :, slots]


@pytest.mark.parametrize("batch_steps", [True, False])
@pytest.mark.parametrize("guided", [False, True])
def test_recache_under_the_same_prompt_leaves_the_cache(batch_steps: bool, guided: bool) -> None:
    """Re-running the final passes under the prompt they ran under gives their keys/values again (no chunk was
    evicted, no position moved); the empty prompt's ring is not touched at all."""
    model = tiny_model(text_modulation=True)
    red = _cond(model, "red")
    null = _cond(model, "") if guided else None
    cfg = StreamConfig(steps=3, batch_steps=batch_steps, recache=True, guidance=3.0 if guided else 1.0, **NO_EVICTION)
    st = _state(model, cfg, null)
    _, before = _to_recache(model, st, red, 5, red)
    slots = [s for s, c in enumerate(st.ring.chunks) if c >= 0]
    assert sorted(st.ring.chunks[s] for s in slots) == [0, 1, 2, 3, 4] and st.recache is not None
    assert st.recache.barrier == 5 and st.recache.pending is None
    rows = before[:, :, None] if st.ring.rows is None else before  # (2, L, R, S + G, N, h, hd)
    torch.testing.assert_close(_ring_kv(st, 0), rows[:, :, 0, slots], rtol=1e-5, atol=1e-5)
    if guided:
        assert torch.equal(_ring_kv(st, 1), rows[:, :, 1, slots])


@pytest.mark.parametrize("batch_steps", [True, False])
def test_recache_under_the_same_prompt_leaves_the_frames(batch_steps: bool) -> None:
    """With one step every chunk sees the others at their final pass anyway, so a re-cache under the same prompt
    changes no frame: the drain, the re-cache row and the barrier are the plain stream's computation."""
    model = tiny_model()
    red = _cond(model, "red")
    cfg = StreamConfig(steps=1, batch_steps=batch_steps, **NO_EVICTION)
    plain, st = _state(model, cfg), _state(model, dataclasses.replace(cfg, recache=True))
    den, a, b = Denoiser(model), list[torch.Tensor](), list[torch.Tensor]()
    while len(a) < 7:
        a += den.step([plain], [lambda: red])[0]
    while len(b) < 7:
        store = st.recache
        if st.next_chunk in (2, 5) and store is not None and store.pending is None and store.barrier < st.next_chunk:
            scheduler.recondition(st, red)
        b += den.step([st], [lambda: red])[0]
    assert st.recache is not None and st.recache.barrier == 5
    torch.testing.assert_close(torch.stack(b[:7]), torch.stack(a[:7]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_steps", [True, False])
def test_recache_equals_recomputing_the_history_under_the_new_prompt(batch_steps: bool) -> None:
    """The re-cached ring equals one causal forward over every finished chunk at t = 0 under the new prompt (the
    history's clean passes recomputed from scratch, as in tests/test_stream_core.py), when nothing was evicted."""
    model = tiny_model(text_modulation=True)
    red, blue = _cond(model, "red"), _cond(model, "blue")
    cfg = StreamConfig(steps=2, batch_steps=batch_steps, recache=True, **NO_EVICTION)
    st = _state(model, cfg)
    k = 4
    out, _ = _to_recache(model, st, red, k, blue)
    c, cf = model.config, model.config.chunk_frames
    x = torch.cat(out[:k], 1)[None]  # (1, C, k cf, H, W): the finished latents, what the clean passes read
    ids = torch.arange(k).repeat_interleave(cf * c.tokens_per_frame)
    mask = visible(ids, ids, cfg.sink_chunks, cfg.window_chunks)[None, None]
    kv = model.cross_kv(RandomTextEncoder(c.text_dim).encode(["blue"]))
    with torch.inference_mode():
        full = model(x, torch.zeros(1, k * cf), torch.arange(k * cf)[None], kv.per_frame(k * cf), None, mask)
    N = cf * c.tokens_per_frame
    for chunk in range(k):
        s = st.ring.slot(chunk)
        want = torch.stack([layer[0, chunk * N : (chunk + 1) * N] for layer in full.keys])  # (L, N, h, hd)
        torch.testing.assert_close(st.ring.k[:, s], want, rtol=1e-4, atol=1e-5)
    old = _to_recache(model, _state(model, cfg), red, k, red)[1]  # the same history under red: not vacuous
    assert (old[0, :, st.ring.slot(1)] - st.ring.k[:, st.ring.slot(1)]).abs().max() > 1e-3


def test_the_stream_batch_drains_before_it_recaches() -> None:
    """While a re-cache waits, a stream batch admits nothing: its chunks in flight finish (emitted one a pass, as
    always), then the new chunk comes in alone."""
    model = tiny_model()
    red, blue = _cond(model, "red"), _cond(model, "blue")
    st, den = _state(model, StreamConfig(steps=3, recache=True, **NO_EVICTION)), Denoiser(model)
    for _ in range(6):
        den.step([st], [lambda: red])
    assert [c.chunk for c in st.inflight] == [3, 4, 5] and st.next_chunk == 6
    scheduler.recondition(st, blue)
    emitted = []
    for _ in range(3):  # chunk 3's clean pass and 4's last step, 4's clean pass and 5's last step, 5's clean pass
        assert not scheduler.needs_chunk(st)
        emitted.append(len(den.run([st])[0]))
    assert emitted == [1, 1, 0] and not st.inflight
    assert scheduler.needs_chunk(st)
    den.step([st], [lambda: blue])  # chunk 6 admitted: the re-cache runs before its first pass
    assert st.recache is not None and st.recache.barrier == 6 and st.recache.pending is None
    assert [c.chunk for c in st.inflight] == [6] and scheduler.needs_chunk(st)


def test_memory_counts_the_recache_inputs() -> None:
    for mc, kw in ((tiny_config(), {}), (tiny_config(structure_channels=4), dict(guidance=3.0, batch_steps=False))):
        cfg = StreamConfig(window_chunks=3, sink_chunks=2, **kw)  # type: ignore[arg-type]
        null = Condition(torch.zeros(1), torch.zeros(1)) if cfg.guided else None
        plain = StreamState.create(mc, cfg, 0, torch.float32, torch.device("cpu"), null)
        st = StreamState.create(mc, dataclasses.replace(cfg, recache=True), 0, torch.float32, torch.device("cpu"), null)
        per_chunk = (mc.in_channels + mc.structure_channels) * mc.chunk_frames * mc.latent_height * mc.latent_width
        extra = cfg.cache_chunks * (per_chunk + mc.chunk_frames) * 4  # float32 latents (+ structure) and timesteps
        assert st.memory_bytes() == plain.memory_bytes() + extra
        assert kv_cache_bytes(mc, dataclasses.replace(cfg, recache=True), torch.float32) == st.memory_bytes()


def test_recache_setting() -> None:
    assert StreamConfig().recache is False
    with pytest.raises(InputError, match="recache must be true or false"):
        StreamConfig(recache="yes")  # type: ignore[arg-type]
    assert recipe("longlive").stream_config().recache is True


def test_a_stream_recaches_on_set_prompt() -> None:
    """Through the driver: `set_prompt` re-caches (both schedules), the stream keeps emitting, and the family counts
    the re-cache inputs in the stream's memory."""
    pipe = Pipeline.load("tiny")
    for batch_steps in (True, False):
        stream = pipe.stream("a red circle moving left", 3, recache=True, batch_steps=batch_steps)
        frames = [f for _ in range(6) for f in stream.step()]
        stream.set_prompt("a blue square moving up")
        while len(frames) < 48:
            frames += stream.step()
        st = stream.state
        assert st.recache.barrier > 0 and st.recache.pending is None
        assert st.memory_bytes() == sum(r.nbytes() for r in st.rings) + st.recache.nbytes()
        assert pipe.family.memory_bytes(st) == st.memory_bytes() + st.decoder.nbytes()
        assert np.stack(frames).shape[1:] == (*pipe.frame_size, 3)
