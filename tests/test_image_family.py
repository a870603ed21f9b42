"""The image family's own behaviour on tiny diffusers folders: stream batch = sequential over t-index lists and
strengths, residual CFG's formula and UNet rows, noise reuse, the similarity filter, bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.errors import FramecastError, ModelLoadError
from framecast.family.image import ImageFamily
from framecast.family.image_settings import ImageSettings
from framecast.models.diffusers_image import load_image_folder
from framecast.pipeline import Pipeline, PipelineConfig
from framecast.sampling import ddpm
from framecast.stream.config import StreamConfig
from framecast.v2v import V2VConfig
from tests.image_models import save, sd_pipeline

SIZE = (32, 32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image")
    return {kind: save(sd_pipeline(kind), root / kind) for kind in ("lcm", "ddim")}


def pipe_of(folder: Path, steps: int = 2, **settings: object) -> Pipeline:
    fam = ImageFamily(load_image_folder(folder), ImageSettings(**settings))  # type: ignore[arg-type]
    return Pipeline.from_family(fam, PipelineConfig(fps=24.0, stream=StreamConfig(steps=steps)))


def family(pipe: Pipeline) -> ImageFamily:
    assert isinstance(pipe.family, ImageFamily)
    return pipe.family


def rows_per_pass(pipe: Pipeline) -> list[int]:
    """Records the UNet's batch rows of every call from now on."""
    rows: list[int] = []
    family(pipe).unet.register_forward_pre_hook(lambda m, a: rows.append(int(a[0].shape[0])))
    return rows


def moving_clip(n: int, step: int = 2) -> np.ndarray:
    clip = np.zeros((n, *SIZE, 3), dtype=np.uint8)
    clip[..., 2] = np.linspace(40, 200, SIZE[1], dtype=np.uint8)
    for i in range(n):
        clip[i, 10:20, 4 + step * i : 12 + step * i] = (230, 60, 40)
    return clip


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# -- the stream batch ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lcm", "ddim"])
@pytest.mark.parametrize("t_index", [(0,), (0, 32), (0, 16, 32, 45), (20, 40)])
def test_stream_batch_equals_sequential_txt2img(folders: dict[str, Path], kind: str, t_index: tuple[int, ...]) -> None:
    pipe = pipe_of(folders[kind], steps=len(t_index), t_index=t_index)
    batch = pipe.generate("a red circle", 6, seed=1)
    seq = pipe.generate("a red circle", 6, seed=1, batch_steps=False)
    assert levels(batch, seq) <= 1
    assert batch.std() > 10


@pytest.mark.parametrize("strength", [0.3, 0.6, 1.0])
def test_stream_batch_equals_sequential_img2img(folders: dict[str, Path], strength: float) -> None:
    pipe, clip = pipe_of(folders["lcm"], steps=2), moving_clip(5)
    v2v = V2VConfig.fixed(strength, skip_similar=False)
    batch = np.stack(list(pipe.video_stream("a blue square", clip, seed=2, v2v=v2v)))
    seq = np.stack(list(pipe.video_stream("a blue square", clip, seed=2, v2v=v2v, batch_steps=False)))
    assert batch.shape == clip.shape and levels(batch, seq) <= 1


def test_strength_timesteps_keep_the_steps_over_a_shorter_range() -> None:
    assert ddpm.strength_timesteps([999, 679, 359, 99], 0.5) == [499, 339, 179, 49]
    assert ddpm.strength_timesteps([999, 499], 1.0) == [999, 499]
    with pytest.raises(FramecastError, match="strength"):
        ddpm.strength_timesteps([999], 0.0)


# -- residual CFG -------------------------------------------------------------------------------------------------
def test_residual_cfg_self_adds_no_unet_rows_and_full_doubles_them(folders: dict[str, Path]) -> None:
    counts = {}
    for cfg_type in ("self", "initialize", "full"):
        pipe = pipe_of(folders["lcm"], steps=3, cfg_type=cfg_type)
        rows = rows_per_pass(pipe)
        pipe.generate("a red circle", 6, seed=0, guidance=2.0)
        counts[cfg_type] = rows
    plain = pipe_of(folders["lcm"], steps=3)
    rows = rows_per_pass(plain)
    plain.generate("a red circle", 6, seed=0)
    assert counts["self"] == rows  # no extra UNet call, not even an extra row
    assert counts["full"] == [2 * r for r in rows]
    assert counts["initialize"] == [r + 1 for r in rows]  # one negative row: the frame that enters


def test_residual_cfg_initialize_equals_its_formula(folders: dict[str, Path]) -> None:
    """Two ODE steps of one frame by hand: eps_g = d eps_r + w (eps_c - d eps_r) where the residual eps_r is the
    negative prompt's prediction at the first step and the guided noise the latent carries after it."""
    w, d = 2.5, 0.8
    pipe = pipe_of(folders["ddim"], steps=2, cfg_type="initialize", delta=d, noise="fresh", negative_prompt="dark")
    fam = family(pipe)
    kept: list[torch.Tensor] = []
    decode = fam.decode
    fam.decode = lambda states, lats: (kept.extend(lats), decode(states, lats))[1]  # type: ignore[method-assign]
    pipe.generate("a red circle", 1, seed=5, guidance=w, batch_steps=False)

    alphas, ts = fam.sched.alphas, fam.timesteps(2)
    cond, neg = fam.prompts.encode("a red circle")[0][None], fam.prompts.negative("dark")[0][None]
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5)) * fam.sched.start_scale(2)

    def unet(x: torch.Tensor, t: int, c: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fam.unet(x, torch.tensor([t]), encoder_hidden_states=c).sample.double()

    residual = d * unet(x, ts[0], neg)
    for i, t in enumerate(ts):
        a = alphas[t]
        eps = residual + w * (unet(x, t, cond) - residual)
        x0 = (x.double() - (1 - a).sqrt() * eps) / a.sqrt()
        a_next = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x = (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).float()
        residual = d * eps
    torch.testing.assert_close(kept[0][:, 0], x[0], rtol=0, atol=1e-5 * float(x.abs().max()))


# -- noise reuse and temporal stability -----------------------------------------------------------------------------
def test_fixed_noise_gives_the_same_output_for_the_same_input(folders: dict[str, Path]) -> None:
    still = np.repeat(moving_clip(1), 4, axis=0)
    v2v = V2VConfig.fixed(0.5, skip_similar=False)
    fixed = np.stack(list(pipe_of(folders["lcm"]).video_stream("a blue square", still, seed=3, v2v=v2v)))
    fresh = np.stack(list(pipe_of(folders["lcm"], noise="fresh").video_stream("a blue square", still, v2v=v2v)))
    assert all(levels(f, fixed[0]) == 0 for f in fixed[1:])  # no flicker on a still input
    assert max(levels(f, fresh[0]) for f in fresh[1:]) > 5  # new noise every frame flickers


# -- the similarity filter ---------------------------------------------------------------------------------------------
def test_similarity_filter_skips_a_still_input_and_never_a_moving_one(folders: dict[str, Path]) -> None:
    pipe, v2v = pipe_of(folders["lcm"], steps=1), V2VConfig.fixed(0.5)
    still = np.repeat(moving_clip(1), 6, axis=0)
    rows = rows_per_pass(pipe)
    stream = pipe.video_stream("a blue square", still, seed=0, v2v=v2v)
    out = list(stream)
    stats = stream.input_stats
    assert stats is not None and stats.skipped > 0 and stats.model_chunks + stats.skipped == len(still)
    assert len(rows) == stats.model_chunks  # a skipped frame costs no UNet call
    assert all(levels(f, out[0]) == 0 for f in out)  # a skipped frame re-emits the last output
    moving = pipe.video_stream("a blue square", moving_clip(6), seed=0, v2v=v2v)
    assert len(list(moving)) == 6
    assert moving.input_stats is not None and moving.input_stats.skipped == 0


# -- bad folders ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("part", "message"),
    [("unet", "no unet/"), ("vae", "no vae/"), ("tokenizer", "no tokenizer/"), ("text_encoder", "no text_encoder/")],
)
def test_a_missing_component_is_named(folders: dict[str, Path], tmp_path: Path, part: str, message: str) -> None:
    broken = shutil.copytree(folders["lcm"], tmp_path / "broken")
    shutil.rmtree(broken / part)
    with pytest.raises(ModelLoadError, match=message):
        Pipeline.load(str(broken))


def test_pickled_weights_a_truncated_file_and_an_unknown_pipeline_are_refused(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    broken = shutil.copytree(folders["lcm"], tmp_path / "bin")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").rename(broken / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickled .bin weights"):
        Pipeline.load(str(broken))
    cut = shutil.copytree(folders["lcm"], tmp_path / "cut")
    weights = cut / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not load .*vae"):
        Pipeline.load(str(cut))
    other = shutil.copytree(folders["lcm"], tmp_path / "other")
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(ModelLoadError, match="not a framecast model folder|model_index|framecast.json"):
        Pipeline.load(str(other))


def test_the_cli_runs_an_image_folder_and_says_what_is_wrong(folders: dict[str, Path], tmp_path: Path) -> None:
    from framecast.cli import main

    out = tmp_path / "out.mp4"
    args = ["generate", "a red circle", "--model", str(folders["lcm"]), "--seconds", "0.25", "-o", str(out)]
    assert main([*args, "--t-index", "0,32", "--size", "48x40", "--guidance", "1.5"]) == 0
    assert out.stat().st_size > 0
    assert main([*args, "--size", "41x40"]) == 2
    assert main(["generate", "x", "--cfg-type", "full", "--seconds", "0.1", "-o", str(out)]) == 2


# -- reduced precision ---------------------------------------------------------------------------------------------
def test_bfloat16_streams_close_to_float32(folders: dict[str, Path]) -> None:
    """The UNet, VAE and text encoder in bfloat16 (as fp16/bf16 run on a GPU): same frames within a few levels
    on average; latents stay float32 between steps."""
    full = pipe_of(folders["lcm"]).generate("a red circle", 4, seed=1)
    fam = ImageFamily(load_image_folder(folders["lcm"]), ImageSettings(), dtype=torch.bfloat16)
    half = Pipeline.from_family(fam, PipelineConfig(stream=StreamConfig(steps=2))).generate("a red circle", 4, seed=1)
    diff = np.abs(full.astype(np.int16) - half.astype(np.int16))
    assert diff.mean() < 1.5 and diff.max() <= 12 and half.std() > 10, (diff.mean(), diff.max())
