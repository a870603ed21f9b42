"""The model-family contract carries a per-frame IMAGE family (tests/image_family.py: a diffusers UNet, a TAESD,
StreamDiffusion's stream batch over denoising steps) through the driver, `Stream`, `Pipeline` and the live server
with no change to any of them (docs/architecture.md, "Adding a family: a worked example")."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from torch import Tensor

from framecast.engine import Stream
from framecast.family.contract import ModelFamily
from framecast.pipeline import Pipeline, PipelineConfig
from framecast.stream.config import StreamConfig
from framecast.v2v import V2VConfig
from tests.conftest import RandomTextEncoder
from tests.image_family import (
    ImageFamily,
    ImageState,
    alphas_cumprod,
    ddim_step,
    even_timesteps,
    sdedit_timesteps,
    t_index_timesteps,
    tiny_unet,
    tiny_vae,
)

FPS = 24.0
SIZE = (32, 32)
CONFIG = PipelineConfig(fps=FPS, stream=StreamConfig(steps=3))  # the causal-only fields (clean pass, ...) unused


def stream_diffusion_timesteps(steps: int) -> list[int]:
    """StreamDiffusion's default t_index_list [0, 16, 32, 45] of a 50-step schedule, its first `steps`."""
    return t_index_timesteps([0, 16, 32, 45][:steps])


SCHEDULES = {"even": even_timesteps, "t_index": stream_diffusion_timesteps}


class RecordingFamily(ImageFamily):
    """The image family, keeping every finished latent per stream state (in the order they decode)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.finished: dict[int, tuple[ImageState, list[Tensor]]] = {}  # by id; the state kept, so ids stay unique

    def decode(self, states: Sequence[ImageState], latents: Sequence[Tensor]) -> list[np.ndarray]:
        for st, lat in zip(states, latents, strict=True):
            self.finished.setdefault(id(st), (st, []))[1].append(lat)
        return super().decode(states, latents)

    def latents(self, stream: Stream) -> list[Tensor]:
        return self.finished.get(id(stream.state), (None, []))[1]


def make_family(
    timesteps: Callable[[int], list[int]] = even_timesteps, seed: int = 0, kind: type[ImageFamily] = ImageFamily
) -> ImageFamily:
    enc = RandomTextEncoder(dim=12, seq_len=4)
    return kind(tiny_unet(seed), tiny_vae(seed), lambda text: enc.encode([text])[0], timesteps=timesteps)


def make_pipe(timesteps: Callable[[int], list[int]] = even_timesteps) -> tuple[Pipeline, RecordingFamily]:
    fam = make_family(timesteps, kind=RecordingFamily)
    assert isinstance(fam, RecordingFamily)
    return Pipeline.from_family(fam, CONFIG), fam


def reference_latents(
    fam: ImageFamily,
    prompt: str,
    seed: int,
    timesteps: list[int],
    n: int,
    inputs: Sequence[tuple[Tensor, float]] = (),
) -> list[Tensor]:
    """The slow path: one frame at a time through all its steps, a UNet call of one row per step. `inputs`:
    (latent (1, C, 1, h, w), strength) per frame for video to video (SDEdit)."""
    g, ac = torch.Generator().manual_seed(seed), alphas_cumprod()
    cond = fam.conditioner.embed(prompt)[None]  # (1, T, D)
    out = []
    for k in range(n):
        x = torch.randn((1, *fam.latent_shape), generator=g)
        ts = list(timesteps)
        if k < len(inputs):
            latent, strength = inputs[k]
            ts = sdedit_timesteps(timesteps, strength)
            x = (ac[ts[0]].sqrt() * latent[:, :, 0].double() + (1 - ac[ts[0]]).sqrt() * x.double()).float()
        for i, t in enumerate(ts):
            a_next = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
            with torch.no_grad():
                eps = fam.unet(x, torch.tensor([t]), encoder_hidden_states=cond).sample
            x = ddim_step(x, eps, ac[t][None], a_next[None])
        out.append(x[0, :, None])
    return out


def run_until(pipe: Pipeline, fam: RecordingFamily, streams: list[Stream], n: int) -> list[list[np.ndarray]]:
    """Step the streams together until each has finished `n` frames; their frames."""
    frames: list[list[np.ndarray]] = [[] for _ in streams]
    while min(len(fam.latents(s)) for s in streams) < n:
        for got, e in zip(frames, pipe.driver.step(streams), strict=True):
            got += e.frames
    return frames


def assert_latents_close(got: Sequence[Tensor], ref: Sequence[Tensor]) -> None:
    """Equal to 1e-5 of their scale. A random UNet does not predict the noise, so DDIM's clean estimate at the top
    timestep, (x - sqrt(1 - a) eps) / sqrt(a) with sqrt(a_999) = 0.068, leaves latents of size ~100 and scales
    the batch's float rounding (~1e-7 relative) by as much."""
    assert len(got) == len(ref)
    a, b = torch.stack(list(got)), torch.stack(list(ref))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(b.abs().max()))


def assert_frames_close(a: np.ndarray | Sequence[np.ndarray], b: np.ndarray | Sequence[np.ndarray]) -> None:
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- 1. the contract ----------------------------------------------------------------------------------------------
def test_the_image_family_is_a_model_family_by_duck_typing() -> None:
    fam = make_family()
    assert isinstance(fam, ModelFamily)  # runtime-checkable protocol: every member is there
    assert ModelFamily not in type(fam).__mro__  # structurally, not by inheritance
    typed: ModelFamily = fam  # and statically (mypy checks this line)
    assert typed.frame_size == SIZE and typed.frames_per_chunk == 1
    assert not isinstance(object(), ModelFamily)
    clip = np.random.default_rng(0).integers(0, 256, (1, *SIZE, 3), dtype=np.uint8)
    latent = fam.encode(clip)
    assert latent.shape == (1, 4, 1, 8, 8)
    (frame,) = fam.decode([fam.new_state(CONFIG.stream, 0)], [latent[0]])
    assert frame.dtype == np.uint8 and frame.shape == (1, *SIZE, 3)


# -- 2. Pipeline.from_family: stream, generate, seeds ---------------------------------------------------------------
def test_pipeline_streams_and_generates_through_the_image_family() -> None:
    pipe = Pipeline.from_family(make_family(), PipelineConfig(fps=FPS))  # the default StreamConfig: 4 steps
    assert pipe.frame_size == SIZE and pipe.frames_per_chunk == 1
    it = iter(pipe.stream("a red circle", seed=0))
    streamed = [next(it) for _ in range(6)]
    assert all(f.dtype == np.uint8 and f.shape == (*SIZE, 3) for f in streamed)
    clip = pipe.generate("a red circle", 6, seed=0)
    assert clip.dtype == np.uint8 and clip.shape == (6, *SIZE, 3)
    np.testing.assert_array_equal(clip, np.stack(streamed))  # one driver path: same seed, same frames
    np.testing.assert_array_equal(pipe.generate("a red circle", 6, seed=0), clip)
    assert mean_diff(pipe.generate("a red circle", 6, seed=1), clip) > 5  # another seed, other noise
    assert mean_diff(clip[1:], clip[:-1]) > 5  # every frame starts from fresh noise
    assert clip.std() > 10  # not a flat image


# -- 3. the stream batch against the slow path ----------------------------------------------------------------------
def test_ddim_step_is_diffusers_ddim() -> None:
    """The scheduler: `ddim_step` over `even_timesteps` is diffusers' DDIMScheduler (trailing spacing, eta 0)."""
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    g = torch.Generator().manual_seed(0)
    for steps in (1, 2, 4):  # where diffusers' prev_timestep (t - 1000 // steps) is the next listed timestep
        sched = DDIMScheduler(
            beta_schedule="linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
            set_alpha_to_one=True, clip_sample=False,
        )  # fmt: skip
        sched.set_timesteps(steps)
        assert sched.timesteps.tolist() == even_timesteps(steps)
        ac, x = alphas_cumprod(), torch.randn(2, 4, 8, 8, generator=g)
        ours, theirs = x, x
        for i, t in enumerate(even_timesteps(steps)):
            eps = torch.randn(2, 4, 8, 8, generator=g)
            nxt = ac[even_timesteps(steps)[i + 1]] if i + 1 < steps else torch.tensor(1.0, dtype=torch.float64)
            ours = ddim_step(ours, eps, ac[t].expand(2), nxt.expand(2))
            theirs = sched.step(eps, t, theirs, eta=0.0).prev_sample
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("schedule", "batch_steps"), [("even", True), ("t_index", True), ("even", False)])
def test_stream_batch_and_sequential_equal_one_frame_at_a_time(schedule: str, batch_steps: bool) -> None:
    pipe, fam = make_pipe(SCHEDULES[schedule])
    calls = [0]
    fam.network.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    for steps in (1, 2, 3, 4):
        stream = pipe.stream("a red circle", seed=steps, steps=steps, batch_steps=batch_steps)
        n, before = 4, calls[0]
        run_until(pipe, fam, [stream], n)
        passes, got = calls[0] - before, fam.latents(stream)
        assert len(got) == n
        ref = reference_latents(fam, "a red circle", steps, SCHEDULES[schedule](steps), n)
        assert_latents_close(got, ref)
        # stream batch: one UNet call per frame after `steps - 1` of warm-up; sequential: `steps` per frame
        assert passes == (n + steps - 1 if batch_steps else n * steps)


def test_schedule_facts_the_front_ends_read_match_the_family() -> None:
    """What the server's admission (`chunk_units`), `bench` (`passes_per_chunk`, `warm_passes`) and lag bounds
    (`emit_delay`) read off the family's `schedule(cfg)` is what the image family does."""
    pipe, fam = make_pipe()
    for batch_steps in (True, False):
        cfg = pipe.stream_config(steps=3, batch_steps=batch_steps)
        facts = fam.schedule(cfg)
        stream = pipe.stream("a red circle", config=cfg)
        admitted_at: list[int] = []
        emitted_at: list[int] = []
        units: list[int] = []
        passes = 0
        while len(emitted_at) < 6:
            units.append(fam.pass_units(stream.state))
            e = pipe.driver.step([stream])[0]
            passes += 1
            admitted_at += [passes] * e.admitted
            emitted_at += [passes] * len(e.frames)
        if batch_steps:  # a frame comes out `emit_delay` passes after the pass that admitted it
            assert {out - inp for inp, out in zip(admitted_at, emitted_at, strict=False)} == {facts.emit_delay}
        else:  # each frame is out before the next is admitted: no input frame waits behind it (emit_delay 0)
            assert all(out < nxt for out, nxt in zip(emitted_at, admitted_at[1:], strict=False))
        assert np.diff(emitted_at[2:]).tolist() == [facts.passes_per_chunk] * 3
        assert sum(units[-facts.passes_per_chunk :]) == facts.chunk_units  # steady work per frame in UNet rows


# -- 4. many streams in one driver step ---------------------------------------------------------------------------
def test_three_streams_in_one_step_equal_each_alone_with_one_unet_call_per_step() -> None:
    pipe, fam = make_pipe()
    specs = [("a red circle", 1, 2), ("a blue square", 2, 3), ("a green star", 3, 4)]
    calls = {"unet": 0, "decoder": 0}
    fam.network.register_forward_pre_hook(lambda m, a: calls.__setitem__("unet", calls["unet"] + 1))
    fam.vae.decoder.register_forward_pre_hook(lambda m, a: calls.__setitem__("decoder", calls["decoder"] + 1))
    together = [pipe.stream(p, seed=s, steps=k) for p, s, k in specs]
    frames: list[list[np.ndarray]] = [[] for _ in specs]
    for _ in range(8):
        before = dict(calls)
        out = pipe.driver.step(together)
        assert calls["unet"] - before["unet"] == 1  # every stream's buffer in one UNet call
        finished = sum(len(e.frames) for e in out)
        assert calls["decoder"] - before["decoder"] == (1 if finished else 0)  # all finished frames in one decode
        for got, e in zip(frames, out, strict=True):
            got += e.frames
    assert [len(f) for f in frames] == [8 - k + 1 for _, _, k in specs]  # each after its own warm-up
    for (p, s, k), stream, got in zip(specs, together, frames, strict=True):
        alone = pipe.stream(p, seed=s, steps=k)
        alone_frames = [f for _ in range(8) for f in alone.step()]
        assert_frames_close(got, alone_frames)
        assert_latents_close(fam.latents(stream), fam.latents(alone))
    assert mean_diff(np.stack(frames[0][:5]), np.stack(frames[1][:5])) > 5  # the streams really differ


# -- 5. prompt switches and video to video ---------------------------------------------------------------------------
@pytest.mark.parametrize("switch_passes", [0, 3])
def test_set_prompt_changes_the_frames_admitted_after_it(switch_passes: int) -> None:
    pipe, _ = make_pipe()
    steps, at, n = 3, 5, 12
    red = pipe.generate("a red circle", n, seed=2, steps=steps)
    blue = pipe.generate("a blue square", n, seed=2, steps=steps)
    assert mean_diff(red, blue) > 2
    mixed = pipe.generate("a red circle", n, seed=2, steps=steps, switch_passes=switch_passes,
                          prompt_at=[(at, "a blue square")])  # fmt: skip
    # the switch comes before frame `at` is yielded; frames at+1 .. at+steps-1 are in flight then
    first_new = at + steps
    kept = first_new if switch_passes == 0 else at + 1  # with switch_passes >= steps the frames in flight take it
    assert_frames_close(mixed[:kept], red[:kept])
    assert_frames_close(mixed[first_new:], blue[first_new:])  # per-frame model: the new prompt, exactly
    if switch_passes:
        for k in range(kept, first_new):  # part of their steps under each prompt: neither clip
            assert mean_diff(mixed[k], red[k]) > 0 and mean_diff(mixed[k], blue[k]) > 0


def test_set_prompt_on_a_live_stream_with_a_blend() -> None:
    pipe, _ = make_pipe()
    red = pipe.generate("a red circle", 10, seed=4, steps=2)
    blue = pipe.generate("a blue square", 10, seed=4, steps=2)
    stream = pipe.stream("a red circle", seed=4, steps=2)
    it = iter(stream)
    got = [next(it) for _ in range(4)]
    stream.set_prompt("a blue square", blend_chunks=2)  # frames 5 and 6 blend, from frame 7 on the new prompt
    got += [next(it) for _ in range(6)]
    assert_frames_close(got[:5], red[:5])  # frame 4 was in flight (steps 2) and keeps its prompt
    assert_frames_close(got[7:], blue[7:])
    for k in (5, 6):
        assert mean_diff(got[k], red[k]) > 0 and mean_diff(got[k], blue[k]) > 0


def _moving_square(n: int, offset: int = 0) -> np.ndarray:
    clip = np.zeros((n, *SIZE, 3), dtype=np.uint8)
    clip[..., 2] = np.linspace(40, 200, SIZE[1], dtype=np.uint8)  # a blue gradient
    for i in range(n):
        x = 4 + 3 * i + offset
        clip[i, 10:20, x : x + 8] = (230, 60, 40)
    return clip


def test_video_to_video_one_output_frame_per_input_frame_equal_to_sdedit_reference() -> None:
    pipe, fam = make_pipe()
    clip = _moving_square(5)
    v2v = V2VConfig.fixed(0.5, skip_similar=False)
    stream = pipe.video_stream("a blue square", clip, seed=6, v2v=v2v, steps=2)
    out = list(stream)
    assert len(out) == len(clip) and all(f.shape == (*SIZE, 3) and f.dtype == np.uint8 for f in out)
    stats = stream.input_stats
    assert stats is not None and stats.frames_in == stats.frames_out == len(clip) and stats.model_chunks == len(clip)
    inputs = [(fam.encode(f[None]), 0.5) for f in clip]
    ref = reference_latents(fam, "a blue square", 6, even_timesteps(2), len(clip), inputs)
    assert_latents_close(fam.latents(stream)[: len(clip)], ref)  # after them: the drain's padding frame
    other = list(pipe.video_stream("a blue square", _moving_square(5, offset=10), seed=6, v2v=v2v, steps=2))
    assert mean_diff(np.stack(out), np.stack(other)) > 1  # the input shows through
    text = pipe.generate("a blue square", 5, seed=6, steps=2)
    assert mean_diff(np.stack(out), text) > 1
    controlled = list(pipe.video_to_video("a blue square", clip, seed=6, steps=2))  # the motion-aware controller
    assert len(controlled) == len(clip)


# -- 6. the live server ----------------------------------------------------------------------------------------------
def test_a_server_session_streams_the_image_family() -> None:
    from tests.test_server_support import Client, running  # skips without the server extra

    pipe, _ = make_pipe()
    ref = pipe.generate("a red circle", 8, seed=3, steps=2)
    with running(pipe) as srv:
        c = Client(srv.ws_url)
        hello = c.message("hello")
        assert hello["frame_size"] == list(SIZE) and hello["frames_per_chunk"] == 1
        c.send({"type": "start", "prompt": "a red circle", "seed": 3, "steps": 2, "fps": 200, "format": "raw"})
        c.wait_for(lambda c: len(c.frames) >= 8)
        c.send({"type": "prompt", "text": "a blue square"})
        assert c.message("prompt")["text"] == "a blue square"
        c.wait_for(lambda c: len(c.frames) >= 40)
        stats = c.message("stats")
        assert srv.app.state.manager.engine.state_bytes() > 0  # memory_bytes of the live stream
        c.close()
    assert [i for i, _ in c.frames[:40]] == list(range(40))
    assert all(f.shape == (*SIZE, 3) and f.dtype == np.uint8 for _, f in c.frames)
    assert_frames_close([f for _, f in c.frames[:8]], ref)
    assert stats["frames"] >= 40 and stats["prompt_latency_ms"] is not None
    red_late = pipe.generate("a red circle", 40, seed=3, steps=2)[-4:]
    assert mean_diff(np.stack([f for _, f in c.frames[36:40]]), red_late) > 2  # the new prompt shows


# -- 7. bench ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a few seconds of benchmark rounds
def test_bench_measures_the_image_family() -> None:
    """`framecast bench`'s library call hooks `family.network` and replays its recorded UNet calls (no timed
    assertions: only that both schedules ran with the passes per frame this family takes)."""
    from framecast.bench import run_bench

    pipe = Pipeline.from_family(make_family(), CONFIG)
    r = run_bench("image-family", pipeline=pipe, seconds=0.2, progress=False, threads=1)
    assert r.frame_size == SIZE and r.frames_per_chunk == 1 and r.steps == 3
    assert (r.stream_batch.passes_per_chunk, r.sequential.passes_per_chunk) == (1, 3)
    for s in (r.stream_batch, r.sequential):
        assert s.chunks >= 2 and s.passes > 0 and s.fps > 0 and s.engine_vs_bare > 0
