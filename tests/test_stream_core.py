"""Fast paths of the streaming core, each against its slow path."""

from __future__ import annotations

import pytest
import torch

from framecast.family import causal_batch as batch
from framecast.family.denoiser import Denoiser as Engine
from framecast.models.dit import CausalWanDiT
from framecast.models.rope import shift_frames
from framecast.stream import scheduler
from framecast.stream.cache import RingKV, staging_slots
from framecast.stream.config import StreamConfig
from framecast.stream.memo import BoundedCache
from framecast.stream.positions import PositionPlan
from framecast.stream.prompt import Conditioner
from framecast.stream.request import visible
from framecast.stream.state import NOISE_BLOCK, Condition, StreamState
from tests.conftest import RandomTextEncoder, tiny_config, tiny_model


def _cond(model: CausalWanDiT, text: str) -> Condition:
    kv = model.cross_kv(RandomTextEncoder(model.config.text_dim).encode([text]))
    return Condition.from_cross(kv)


def _state(model: CausalWanDiT, cfg: StreamConfig, seed: int) -> StreamState:
    return StreamState.create(model.config, cfg, seed, torch.float32, torch.device("cpu"))


def _run(model: CausalWanDiT, cfg: StreamConfig, n: int, seed: int = 7, text: str = "red") -> torch.Tensor:
    st, eng, out = _state(model, cfg, seed), Engine(model), []
    cond = _cond(model, text)
    while len(out) < n:
        out += eng.step([st], [lambda: cond])[0]
    return torch.stack(out[:n])  # (n, C, cf, H, W)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("clean_pass", [True, False])
def test_stream_batch_equals_sequential(steps: int, clean_pass: bool) -> None:
    model = tiny_model()
    base = dict(steps=steps, clean_pass=clean_pass, window_chunks=3, sink_chunks=1, refresh_chunks=5)
    batched = _run(model, StreamConfig(batch_steps=True, **base), 10)  # type: ignore[arg-type]
    sequential = _run(model, StreamConfig(batch_steps=False, **base), 10)  # type: ignore[arg-type]
    torch.testing.assert_close(batched, sequential, rtol=1e-5, atol=1e-5)


def _recompute_last(
    model: CausalWanDiT, clean: list[torch.Tensor], noise: torch.Tensor, cfg: StreamConfig
) -> torch.Tensor:
    """Velocity of the last chunk from one full forward over every chunk with the windowed causal mask."""
    c = model.config
    n, cf = len(clean), c.chunk_frames
    x = torch.cat([*clean, noise], 1)[None]  # (1, C, (n + 1) * cf, H, W)
    t = torch.zeros(1, (n + 1) * cf)
    t[:, n * cf :] = 1000.0
    frame_chunk = torch.arange(n + 1).repeat_interleave(cf)
    token_chunk = frame_chunk.repeat_interleave(c.tokens_per_frame)
    mask = visible(token_chunk, token_chunk, cfg.sink_chunks, cfg.window_chunks)[None, None]
    kv = model.cross_kv(RandomTextEncoder(c.text_dim).encode(["red"]))
    out = model(x, t, torch.arange((n + 1) * cf)[None], kv.per_frame((n + 1) * cf), None, mask)
    return out.velocity[0, :, n * cf :]


@pytest.mark.parametrize("chunks", [3, 9])
@pytest.mark.parametrize("text_modulation", [False, True])
def test_cached_stream_equals_full_recompute(chunks: int, text_modulation: bool) -> None:
    """One-step stream with a clean cache; 9 chunks evict from a 2-chunk window (1 sink kept)."""
    model = tiny_model(text_modulation=text_modulation, precondition=text_modulation)
    cfg = StreamConfig(steps=1, window_chunks=2, sink_chunks=1, refresh_chunks=10_000, batch_steps=False)
    outs = _run(model, cfg, chunks + 1)
    gen = torch.Generator().manual_seed(7)
    noises = [torch.randn(outs.shape[1:], generator=gen) for _ in range(chunks + 1)]
    with torch.no_grad():
        velocity = _recompute_last(model, list(outs[:chunks]), noises[chunks], cfg)
    cached_velocity = noises[chunks] - outs[chunks]  # one Euler step from sigma 1 to 0
    torch.testing.assert_close(cached_velocity, velocity, rtol=1e-4, atol=1e-4)


def test_text_modulation_carries_the_prompt() -> None:
    """With text modulation, a prompt changes every frame's modulation; its (B, D) vector expands per frame."""
    model = tiny_model(text_modulation=True)
    enc = RandomTextEncoder(model.config.text_dim)
    kv = model.cross_kv(enc.encode(["red", "blue"]))
    assert kv.mod is not None and kv.mod.shape == (2, model.config.dim)
    assert kv.per_frame(3).mod.shape == (2, 3, model.config.dim)  # type: ignore[union-attr]
    red, blue = _run(model, StreamConfig(steps=2), 2, text="red"), _run(model, StreamConfig(steps=2), 2, text="blue")
    assert (red - blue).abs().max() > 1e-2
    assert tiny_model().cross_kv(enc.encode(["red"])).mod is None


def test_context_matters() -> None:
    """The recompute test is not vacuous: another history changes the next chunk."""
    model = tiny_model()
    cfg = StreamConfig(steps=1, window_chunks=2, sink_chunks=1, batch_steps=False)
    outs = _run(model, cfg, 4)
    gen = torch.Generator().manual_seed(7)
    noises = [torch.randn(outs.shape[1:], generator=gen) for _ in range(4)]
    with torch.no_grad():
        other = _recompute_last(model, [o * 0.5 for o in outs[:3]], noises[3], cfg)
    assert (other - (noises[3] - outs[3])).abs().max() > 1e-2


def test_refresh_is_lossless_without_sinks() -> None:
    """RoPE refresh only moves positions; with no sinks, relative positions and output are unchanged."""
    model = tiny_model()
    base = dict(steps=2, window_chunks=3, sink_chunks=0)
    wrapped = _run(model, StreamConfig(refresh_chunks=4, **base), 14)  # type: ignore[arg-type]
    unbounded = _run(model, StreamConfig(refresh_chunks=10_000, **base), 14)  # type: ignore[arg-type]
    torch.testing.assert_close(wrapped, unbounded, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch_steps", [True, False])
@pytest.mark.parametrize("text_modulation", [False, True])
def test_interleaved_streams_equal_alone(batch_steps: bool, text_modulation: bool) -> None:
    model = tiny_model(text_modulation=text_modulation, precondition=text_modulation)
    cfg = StreamConfig(steps=3, window_chunks=2, sink_chunks=1, refresh_chunks=4, batch_steps=batch_steps)
    alone_a, alone_b = _run(model, cfg, 6, seed=1, text="red"), _run(model, cfg, 6, seed=2, text="blue")
    a, b = _state(model, cfg, 1), _state(model, cfg, 2)
    out_a, out_b = interleave(Engine(model), (a, _cond(model, "red")), (b, _cond(model, "blue")), 6)
    torch.testing.assert_close(out_a, alone_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_b, alone_b, rtol=1e-5, atol=1e-5)
    assert (alone_a - alone_b).abs().max() > 1e-2


def interleave(
    eng: Engine, a: tuple[StreamState, Condition], b: tuple[StreamState, Condition], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step streams a and b (state, condition) through one engine until each has n chunks (n, C, cf, H, W);
    b starts late and sometimes sits out, so batches hold rows of different lengths."""
    out: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    for i in range(40):
        pairs = [(a, out[0]), (b, out[1])] if i >= 2 and i % 3 else [(a, out[0])]
        res = eng.step([p[0][0] for p in pairs], [(lambda c=p[0][1]: c) for p in pairs])
        for p, r in zip(pairs, res, strict=True):
            p[1].extend(r)
        if len(out[0]) >= n and len(out[1]) >= n:
            break
    return torch.stack(out[0][:n]), torch.stack(out[1][:n])


def test_ten_thousand_chunks_bounded() -> None:
    """Positions stay in a fixed range and the cache keeps its size over an endless stream."""
    model = tiny_model(num_layers=1, dim=16, ffn_dim=16, chunk_frames=1, latent_height=2, latent_width=2)
    cfg = StreamConfig(steps=1, clean_pass=False, window_chunks=4, sink_chunks=2, refresh_chunks=16)
    st, eng = _state(model, cfg, 0), Engine(model)
    cond = _cond(model, "red")
    sizes, lo, hi = set(), 0, 0
    for _ in range(10_000):
        eng.step([st], [lambda: cond])
        pos = st.plan.frame_positions(st.next_chunk - 1, st.tick)
        lo, hi = min(lo, int(pos.min())), max(hi, int(pos.max()))
        sizes.add(st.memory_bytes())
    assert st.next_chunk == 10_000
    assert len(sizes) == 1
    limit = (cfg.refresh_chunks + cfg.cache_chunks + cfg.final_pass) * model.config.chunk_frames
    assert -limit <= lo and hi <= limit
    assert torch.isfinite(st.ring.k).all()


# -- fast paths of the hot loop against their slow paths ------------------------------------------------


def _warm_state(model: CausalWanDiT, batch_steps: bool, passes: int = 12) -> tuple[StreamState, Condition]:
    cfg = StreamConfig(steps=3, window_chunks=2, sink_chunks=1, refresh_chunks=5, batch_steps=batch_steps)
    st, eng, cond = _state(model, cfg, 3), Engine(model), _cond(model, "red")
    for _ in range(passes):  # past warm-up: full ring, masks, staged keys, a RoPE refresh
        eng.step([st], [lambda: cond])
    return st, cond


@pytest.mark.parametrize("batch_steps", [True, False])
def test_single_row_equals_general_batch_path(batch_steps: bool) -> None:
    """One row goes to the model as it is (views, cached mask); the general path pads and concatenates."""
    model = tiny_model()
    for passes in (1, 3, 12):
        st, cond = _warm_state(model, batch_steps, passes)
        if scheduler.needs_chunk(st):
            scheduler.admit(st, cond)
        c = model.config
        req = scheduler.next_request(st, c.head_dim, c.rope_theta)
        with torch.inference_mode():
            fast = batch._run_one(model, req, BoundedCache(8))[0]
            slow = batch._run_many(model, [req], None)[0]
        torch.testing.assert_close(fast.velocity, slow.velocity, rtol=1e-6, atol=1e-6)
        for a, b in zip(fast.keys + fast.values, slow.keys + slow.values, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _ring(final_pass: int = 4) -> RingKV:
    ring = RingKV.empty(2, 1, 3, 4, 2, 12, torch.float32, torch.device("cpu"), staging_slots(final_pass))
    ring.store.copy_(torch.randn(ring.store.shape, generator=torch.Generator().manual_seed(0)))
    return ring


def test_gather_equals_slot_copies() -> None:
    ring = _ring()
    S = len(ring.chunks)
    for slots in ([0, 1, 2], [2, 0, 5, 9], [3, 12, 4], list(range(S))):
        kv = ring.gather(slots)
        k, v = kv.k, kv.v
        torch.testing.assert_close(k, torch.cat([ring.store[0, :, s] for s in slots], 1)[:, None], rtol=0, atol=0)
        torch.testing.assert_close(v, torch.cat([ring.store[1, :, s] for s in slots], 1)[:, None], rtol=0, atol=0)
    assert ring.gather(list(range(S))).k.data_ptr() == ring.store.data_ptr()  # the whole ring is a view


def test_write_and_stage_copy_the_right_tokens() -> None:
    ring, N = _ring(), 4
    keys = [torch.randn(3, 2 * N, 2, 12) for _ in range(2)]  # two layers, a batch of 3 rows of 2 chunks
    values = [torch.randn(3, 2 * N, 2, 12) for _ in range(2)]
    ring.write(5, keys, values, row=1, start=N)
    s = ring.slot(5)
    torch.testing.assert_close(ring.k[:, s], torch.stack([k[1, N:] for k in keys]), rtol=0, atol=0)
    torch.testing.assert_close(ring.v[:, s], torch.stack([v[1, N:] for v in values]), rtol=0, atol=0)
    assert ring.chunks[s] == 5 and ring.last == 5
    ring.stage(7, 2, keys, values, row=2, start=0)
    t = ring.staged_at(7, 2)
    assert t is not None and ring.staged_at(7, 1) is None and ring.staged_at(6, 2) is None
    torch.testing.assert_close(ring.store[0, :, t], torch.stack([k[2, :N] for k in keys]), rtol=0, atol=0)
    ring.stage(10, 2, keys, values, row=0, start=0)  # pass 2 keeps 3 slots: chunk 10 takes chunk 7's
    assert ring.staged_at(7, 2) is None and ring.staged_at(10, 2) == t


def test_rotate_to_equals_shift_frames_per_slot() -> None:
    ring = _ring()
    cfg = StreamConfig(steps=2, window_chunks=3, sink_chunks=1, refresh_chunks=2)
    plan = PositionPlan(cfg, 1)
    ring.chunks = [0, -1, 4, 5]  # a sink, an empty slot, two window chunks
    for epoch in (1, 3, 2, 7):
        before = ring.k.clone()
        expected = [
            shift_frames(before[:, s], plan.frame_delta(c, ring.epoch, epoch), 12, 10_000.0) if c >= 0 else before[:, s]
            for s, c in enumerate(ring.chunks)
        ]
        ring.rotate_to(epoch, plan, 12, 10_000.0)
        for s, exp in enumerate(expected):
            torch.testing.assert_close(ring.k[:, s], exp, rtol=0, atol=0)


def test_row_positions_equal_frame_positions() -> None:
    cfg = StreamConfig(steps=3, window_chunks=2, sink_chunks=1, refresh_chunks=5)
    plan = PositionPlan(cfg, 2)
    for tick in range(40):
        rows = [list(range(max(0, tick - cfg.final_pass), tick + 1))]  # a stream batch row
        rows += [[tick - j] for j in range(cfg.final_pass + 1) if tick - j >= 0]  # sequential rows
        for chunks in rows:
            slow = torch.cat([plan.frame_positions(c, tick) for c in chunks])[None]
            torch.testing.assert_close(plan.row_positions(chunks, tick), slow, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(4, 2, 4, 4), (16, 1, 8, 8), (3, 1, 6, 6)])
def test_noise_blocks_equal_one_draw_per_chunk(shape: tuple[int, int, int, int]) -> None:
    """Noise drawn a block of chunks at a time gives the numbers one draw per chunk gives."""
    C, cf, H, W = shape
    mc = tiny_config(in_channels=C, out_channels=C, chunk_frames=cf, latent_height=H, latent_width=W)
    st = StreamState.create(mc, StreamConfig(), 5, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    for _ in range(2 * NOISE_BLOCK + 3):
        torch.testing.assert_close(st.noise.next()[0], torch.randn(shape, generator=gen), rtol=0, atol=0)


def test_conditioner_is_least_recently_used() -> None:
    computed: list[str] = []
    cond = Conditioner(lambda text: computed.append(text) or torch.zeros(1), lambda e: Condition(e, e), size=2)
    for text in ["a", "a", "b", "a", "c", "a", "b"]:  # "c" evicts "b", the least recently used
        cond(text)
    assert computed == ["a", "b", "c", "b"]


def test_mask_skip_follows_the_visibility_rule() -> None:
    """A single-chunk row runs without a mask exactly when `visible` allows every cached chunk."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(500):
        a, sinks, window = (
            int(torch.randint(0, 12, (1,), generator=gen)),
            int(torch.randint(0, 3, (1,), generator=gen)),
            3,
        )
        past = torch.randint(-1, 14, (int(torch.randint(0, 8, (1,), generator=gen)),), generator=gen).tolist()
        x = torch.zeros(1, 1, 2, 1, 1)
        req = batch.PassRequest(x, x, x, [a, a], None, None, past, sinks, window)  # type: ignore[arg-type]
        rule = bool(visible(torch.tensor([a]), torch.tensor(past, dtype=torch.long), sinks, window).all())
        assert batch._all_visible(req) == rule, (a, past, sinks)
