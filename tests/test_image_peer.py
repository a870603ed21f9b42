"""The image family against a peer: diffusers' own StableDiffusion(XL) pipelines on the same folder, the same
initial noise, scheduler and timesteps give the same latents and frames (fp32, rounding level)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from framecast.family.image import ImageFamily
from framecast.family.image_settings import ImageSettings
from framecast.models.diffusers_image import load_image_folder
from framecast.pipeline import Pipeline, PipelineConfig
from framecast.sampling import ddpm
from framecast.stream.config import StreamConfig
from tests.image_models import save, sd_pipeline, sdxl_pipeline

PROMPT = "a red circle"
SEED = 3


def family_latent(
    folder: Path, steps: int, guidance: float = 1.0, **settings: object
) -> tuple[torch.Tensor, np.ndarray]:
    """One txt2img frame by framecast (sequential, fresh noise as diffusers draws it): latent (C, h, w), frame."""
    fam = ImageFamily(load_image_folder(folder), ImageSettings(noise="fresh", **settings))  # type: ignore[arg-type]
    kept: list[torch.Tensor] = []
    decode = fam.decode
    fam.decode = lambda states, lats: (kept.extend(lats), decode(states, lats))[1]  # type: ignore[method-assign]
    pipe = Pipeline.from_family(
        fam, PipelineConfig(stream=StreamConfig(steps=steps, batch_steps=False, guidance=guidance))
    )
    frame = pipe.generate(PROMPT, 1, seed=SEED)[0]
    return kept[0][:, 0], frame


def peer(
    pipe: StableDiffusionPipeline, steps: int, guidance: float = 1.0, **kw: object
) -> tuple[torch.Tensor, np.ndarray]:
    out = dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32, **kw)
    lat = pipe(**out, generator=torch.Generator().manual_seed(SEED), output_type="latent").images[0]
    img = pipe(**out, generator=torch.Generator().manual_seed(SEED), output_type="np").images[0]
    return lat, (img * 255).round().astype(np.uint8)


def check(ours: tuple[torch.Tensor, np.ndarray], theirs: tuple[torch.Tensor, np.ndarray]) -> None:
    lat, frame = ours
    scale = theirs[0].abs().max().item()
    assert (lat - theirs[0]).abs().max().item() < 2e-4 * max(1.0, scale), (lat - theirs[0]).abs().max()
    assert np.abs(frame.astype(int) - theirs[1].astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("scheduler", "steps", "prediction"),
    [
        ("lcm", 1, "epsilon"),
        ("lcm", 3, "epsilon"),
        ("ddim", 2, "epsilon"),
        ("ddim", 2, "v_prediction"),
        ("euler", 2, "epsilon"),
    ],
)
def test_txt2img_equals_stable_diffusion_pipeline(tmp_path: Path, scheduler: str, steps: int, prediction: str) -> None:
    folder = save(sd_pipeline(scheduler, prediction=prediction), tmp_path / "sd")
    check(family_latent(folder, steps), peer(StableDiffusionPipeline.from_pretrained(folder), steps))


def test_full_guidance_with_negative_prompt_equals_the_pipeline(tmp_path: Path) -> None:
    folder = save(sd_pipeline("ddim"), tmp_path / "sd")
    ours = family_latent(folder, 2, guidance=3.0, cfg_type="full", negative_prompt="blurry")
    check(ours, peer(StableDiffusionPipeline.from_pretrained(folder), 2, 3.0, negative_prompt="blurry"))


def test_img2img_equals_the_img2img_pipeline(tmp_path: Path) -> None:
    """An input latent at strength 0.5: framecast's timesteps (each scaled by the strength) handed to diffusers'
    img2img pipeline as its own schedule, which then noises the input at the first of them."""
    folder = save(sd_pipeline("lcm"), tmp_path / "sd")
    fam = ImageFamily(load_image_folder(folder), ImageSettings(noise="fresh"))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    ts = ddpm.strength_timesteps(fam.timesteps(2), 0.5)
    cond = fam.conditioner(PROMPT)
    state = fam.new_state(StreamConfig(steps=2, batch_steps=False), SEED)
    from framecast.stream.state import ChunkInput

    fam.admit(state, cond, ChunkInput(z[:, :, None], 0.5))
    done = fam.denoise([state]) + fam.denoise([state])
    ours = done[1][0][:, 0]
    theirs = StableDiffusionImg2ImgPipeline.from_pretrained(folder)(
        prompt=PROMPT,
        image=z,
        strength=1.0,
        timesteps=ts,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(SEED),
        output_type="latent",
    ).images[0]
    assert (ours - theirs).abs().max().item() < 2e-4


def test_sdxl_txt2img_equals_the_sdxl_pipeline(tmp_path: Path) -> None:
    folder = save(sdxl_pipeline("euler"), tmp_path / "sdxl")
    ours = family_latent(folder, 2)
    theirs = peer(StableDiffusionXLPipeline.from_pretrained(folder), 2)  # type: ignore[arg-type]
    check(ours, theirs)


def test_sdxl_img2img_equals_the_sdxl_img2img_pipeline(tmp_path: Path) -> None:
    """SDXL img2img (no aesthetic score: the same size condition as txt2img) from an input latent at strength 0.6,
    Euler: diffusers' pipeline given framecast's timesteps as its schedule."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from framecast.stream.state import ChunkInput

    folder = save(sdxl_pipeline("euler"), tmp_path / "sdxl")
    fam = ImageFamily(load_image_folder(folder), ImageSettings(noise="fresh"))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    ts = ddpm.strength_timesteps(fam.timesteps(2), 0.6)
    state = fam.new_state(StreamConfig(steps=2, batch_steps=False), SEED)
    fam.admit(state, fam.conditioner(PROMPT), ChunkInput(z[:, :, None], 0.6))
    ours = (fam.denoise([state]) + fam.denoise([state]))[1][0][:, 0]
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, requires_aesthetics_score=False)
    theirs = pipe(
        prompt=PROMPT, image=z, strength=1.0, timesteps=ts, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(SEED), output_type="latent",
    ).images[0]  # fmt: skip
    assert (ours - theirs).abs().max().item() < 2e-4 * max(1.0, theirs.abs().max().item())
