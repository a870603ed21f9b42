"""The model-family contract carries the per-frame IMAGE family (`framecast.family.image`: a diffusers UNet, a
TAESD, StreamDiffusion's stream batch over denoising steps), loaded from a tiny diffusers folder, through the
driver, `Stream`, `Pipeline`, the live server and `bench` (docs/architecture.md, "Adding a family: a worked
example"). Its scheduler facts and step math against diffusers' own pipelines are tests/test_image_peer.py."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from framecast.engine import Stream
from framecast.family.contract import ModelFamily
from framecast.family.image import ImageFamily, ImageState
from framecast.family.image_settings import ImageSettings
from framecast.models.diffusers_image import ImageParts, load_image_folder
from framecast.pipeline import Pipeline, PipelineConfig
from framecast.sampling import ddpm
from framecast.stream.config import StreamConfig
from framecast.v2v import V2VConfig
from tests.image_models import save, save_taesd, sd_pipeline

FPS = 24.0
SIZE = (32, 32)
CONFIG = PipelineConfig(fps=FPS, stream=StreamConfig(steps=3))  # the causal-only fields (clean pass, ...) unused
FRESH = ImageSettings(noise="fresh")  # new noise for every frame (the default "fixed" reuses one draw)
T_INDEX = (0, 16, 32, 45)  # StreamDiffusion's default t-index list of a 50-step grid


def trailing_timesteps(steps: int) -> list[int]:
    """DDIM's "trailing" timesteps from the top: 4 -> [999, 749, 499, 249] (diffusers rounds half to even)."""
    return [round(1000 * (steps - i) / steps) - 1 for i in range(steps)]


class RecordingFamily(ImageFamily):
    """The image family, keeping every finished latent per stream state (in the order they decode)."""

    def __init__(self, parts: ImageParts, settings: ImageSettings | None = None) -> None:
        super().__init__(parts, settings)
        self.finished: dict[int, tuple[ImageState, list[Tensor]]] = {}  # by id; the state kept, so ids stay unique

    def decode(self, states: Sequence[ImageState], latents: Sequence[Tensor]) -> list[np.ndarray]:
        for st, lat in zip(states, latents, strict=True):
            self.finished.setdefault(id(st), (st, []))[1].append(lat)
        return super().decode(states, latents)

    def latents(self, stream: Stream) -> list[Tensor]:
        return self.finished.get(id(stream.state), (None, []))[1]


@dataclass(frozen=True)
class Model:
    """A tiny SD folder (DDIM, trailing spacing: deterministic steps from t = 999) and a TAESD folder."""

    folder: Path
    taesd: Path

    def parts(self) -> ImageParts:
        return load_image_folder(self.folder, tiny_vae=self.taesd)  # fresh modules: hooks stay with one test

    def pipe(
        self, settings: ImageSettings = FRESH, config: PipelineConfig = CONFIG
    ) -> tuple[Pipeline, RecordingFamily]:
        fam = RecordingFamily(self.parts(), settings)
        return Pipeline.from_family(fam, config), fam


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    root = tmp_path_factory.mktemp("image-model")
    pipe = sd_pipeline("ddim")
    pipe.scheduler.register_to_config(timestep_spacing="trailing")  # one step runs from t = 999, not t = 1
    return Model(save(pipe, root / "sd"), save_taesd(root / "taesd"))


def reference_latents(
    fam: ImageFamily,
    prompt: str,
    seed: int,
    timesteps: list[int],
    n: int,
    inputs: Sequence[tuple[Tensor, float]] = (),
) -> list[Tensor]:
    """The slow path: one frame at a time through all its steps, the UNet called directly on one row per step,
    DDIM steps by `sampling.ddpm`. `inputs`: (latent (1, C, 1, h, w), strength) per frame for video to video."""
    g, ac = torch.Generator().manual_seed(seed), ddpm.alphas_cumprod()  # SD's scaled-linear betas
    hidden = fam.prompts.encode(prompt)[0][None]  # (1, T, D)
    out = []
    for k in range(n):
        x = torch.randn((1, *fam.latent_shape), generator=g)
        ts = list(timesteps)
        if k < len(inputs):
            latent, strength = inputs[k]
            ts = ddpm.strength_timesteps(timesteps, strength)
            x = ddpm.renoise(latent[:, :, 0], x, ac[ts[0] : ts[0] + 1]).float()
        for i, t in enumerate(ts):
            a_next = ac[ts[i + 1] : ts[i + 1] + 1] if i + 1 < len(ts) else torch.ones(1, dtype=torch.float64)
            with torch.no_grad():
                eps = fam.unet(x, torch.tensor([t]), encoder_hidden_states=hidden).sample
            x0, eps = ddpm.split_prediction(x, eps, ac[t : t + 1], "epsilon")
            x = ddpm.step("ode", x, x0, eps, torch.tensor([t]), a_next)
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
def test_the_image_family_is_a_model_family_by_duck_typing(model: Model) -> None:
    fam = ImageFamily(model.parts(), FRESH)
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
def test_pipeline_streams_and_generates_through_the_image_family(model: Model) -> None:
    pipe, _ = model.pipe(config=PipelineConfig(fps=FPS))  # the default StreamConfig: 4 steps
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
@pytest.mark.parametrize(("schedule", "batch_steps"), [("trailing", True), ("t_index", True), ("trailing", False)])
def test_stream_batch_and_sequential_equal_one_frame_at_a_time(model: Model, schedule: str, batch_steps: bool) -> None:
    """The folder scheduler's own timesteps (DDIM, trailing), or a t-index list (a family per steps count)."""
    calls = [0]
    for steps in (1, 2, 3, 4):
        if schedule == "t_index":
            pipe, fam = model.pipe(ImageSettings(noise="fresh", t_index=T_INDEX[:steps]))
            timesteps = ddpm.t_index_timesteps(T_INDEX[:steps])
        else:
            pipe, fam = model.pipe()
            timesteps = trailing_timesteps(steps)
        fam.network.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
        before = calls[0]
        stream = pipe.stream("a red circle", seed=steps, steps=steps, batch_steps=batch_steps)
        n = 4
        run_until(pipe, fam, [stream], n)
        passes, got = calls[0] - before, fam.latents(stream)
        assert len(got) == n
        assert_latents_close(got, reference_latents(fam, "a red circle", steps, timesteps, n))
        # stream batch: one UNet call per frame after `steps - 1` of warm-up; sequential: `steps` per frame
        assert passes == (n + steps - 1 if batch_steps else n * steps) == fam.unet_calls


def test_schedule_facts_the_front_ends_read_match_the_family(model: Model) -> None:
    """What the server's admission (`chunk_units`), `bench` (`passes_per_chunk`, `warm_passes`) and lag bounds
    (`emit_delay`) read off the family's `schedule(cfg)` is what the image family does."""
    pipe, fam = model.pipe()
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
def test_three_streams_in_one_step_equal_each_alone_with_one_unet_call_per_step(model: Model) -> None:
    pipe, fam = model.pipe()
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
def test_set_prompt_changes_the_frames_admitted_after_it(model: Model, switch_passes: int) -> None:
    pipe, _ = model.pipe()
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


def test_set_prompt_on_a_live_stream_with_a_blend(model: Model) -> None:
    pipe, _ = model.pipe()
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


def test_video_to_video_one_output_frame_per_input_frame_equal_to_sdedit_reference(model: Model) -> None:
    pipe, fam = model.pipe()
    clip = _moving_square(5)
    v2v = V2VConfig.fixed(0.5, skip_similar=False)
    stream = pipe.video_stream("a blue square", clip, seed=6, v2v=v2v, steps=2)
    out = list(stream)
    assert len(out) == len(clip) and all(f.shape == (*SIZE, 3) and f.dtype == np.uint8 for f in out)
    stats = stream.input_stats
    assert stats is not None and stats.frames_in == stats.frames_out == len(clip) and stats.model_chunks == len(clip)
    inputs = [(fam.encode(f[None]), 0.5) for f in clip]
    ref = reference_latents(fam, "a blue square", 6, trailing_timesteps(2), len(clip), inputs)
    assert_latents_close(fam.latents(stream)[: len(clip)], ref)  # after them: the drain's padding frame
    other = list(pipe.video_stream("a blue square", _moving_square(5, offset=10), seed=6, v2v=v2v, steps=2))
    assert mean_diff(np.stack(out), np.stack(other)) > 1  # the input shows through
    text = pipe.generate("a blue square", 5, seed=6, steps=2)
    assert mean_diff(np.stack(out), text) > 1
    controlled = list(pipe.video_to_video("a blue square", clip, seed=6, steps=2))  # the motion-aware controller
    assert len(controlled) == len(clip)


# -- 6. the live server ----------------------------------------------------------------------------------------------
def test_a_server_session_streams_the_image_family(model: Model) -> None:
    from tests.test_server_support import Client, running  # skips without the server extra

    pipe, _ = model.pipe()
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


SESSIONS = [("a red circle", 1, 2), ("a blue square", 2, 2), ("a green star", 3, 3), ("a white circle", 4, 1)]


def test_four_server_sessions_on_one_image_model_each_get_only_their_own_frames_equal_to_alone(model: Model) -> None:
    """Four sessions at once (prompts, seeds and steps of their own) share the model's passes; each gets its own
    frames, in order, equal to `pipe.generate` of its prompt and seed (lossless raw frames, loopback only)."""
    from tests.test_server_support import Client, running  # skips without the server extra

    pipe, _ = model.pipe()
    n = 10
    refs = [pipe.generate(p, n, seed=s, steps=k) for p, s, k in SESSIONS]
    clients: dict[int, Client] = {}

    def session(url: str, prompt: str, seed: int, steps: int) -> None:
        c = Client(url)
        try:
            c.message("hello")
            c.send({"type": "start", "prompt": prompt, "seed": seed, "steps": steps, "fps": 200, "format": "raw"})
            c.wait_for(lambda c: len(c.frames) >= n)
            clients[seed] = c
        finally:
            c.close()

    with running(pipe) as srv:
        threads = [threading.Thread(target=session, args=(srv.ws_url, *spec)) for spec in SESSIONS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        shared = srv.app.state.manager.engine.max_rows
    assert len(clients) == len(SESSIONS), "a session did not get its frames in time"
    assert shared >= 2, "the sessions never shared a pass"
    for (_, seed, _), ref in zip(SESSIONS, refs, strict=True):
        frames = clients[seed].frames
        assert [i for i, _ in frames[:n]] == list(range(n))  # no gaps, no foreign frames
        assert_frames_close([f for _, f in frames[:n]], ref)
    for i, ref in enumerate(refs):  # the sessions really differ, so equality above means isolation
        for other in refs[i + 1 :]:
            assert mean_diff(ref, other) > 2


# -- 7. bench ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a few seconds of benchmark rounds
def test_bench_measures_the_image_family(model: Model) -> None:
    """`framecast bench`'s library call hooks `family.network` and replays its recorded UNet calls (no timed
    assertions: only that both schedules ran with the passes per frame this family takes)."""
    from framecast.bench import run_bench

    pipe, _ = model.pipe()
    r = run_bench("image-family", pipeline=pipe, seconds=0.2, progress=False, threads=1)
    assert r.frame_size == SIZE and r.frames_per_chunk == 1 and r.steps == 3
    assert (r.stream_batch.passes_per_chunk, r.sequential.passes_per_chunk) == (1, 3)
    for s in (r.stream_batch, r.sequential):
        assert s.chunks >= 2 and s.passes > 0 and s.fps > 0 and s.engine_vs_bare > 0
