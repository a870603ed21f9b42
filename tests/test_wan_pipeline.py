"""Wan2.1 folders through `Pipeline.load` (family/wan.py: the causal DiT, the Wan VAE, UMT5), on tiny random
parts built offline (tests/wan_parts.py).

- One set of weights saved by diffusers' `WanPipeline.save_pretrained`, in the original Wan2.1 layout, and as a
  Self-Forcing-style `generator_ema` file over a base with other DiT weights: identical frames.
- A peer as the reference: on one chunk with full attention, framecast's sampler, DiT and streaming VAE decode
  equal diffusers' `WanPipeline` with `FlowMatchEulerDiscreteScheduler` from the same initial latents (float32).
- Bad folders: each missing part is a one-line error naming what was expected where.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.errors import ModelLoadError
from framecast.family.wan import WanOptions
from framecast.models.umt5 import WAN_TEXT_LENGTH
from framecast.models.wan_vae import WanVAE
from framecast.pipeline import Pipeline
from framecast.sampling.flow import sigmas
from framecast.stream.state import NoiseDraws
from tests.wan_parts import (
    DIT,
    HEIGHT,
    WIDTH,
    WanParts,
    parts,
    save_checkpoint,
    save_diffusers,
    save_original,
    tiny_dit,
)

pytest.importorskip("diffusers")

OPTIONS = WanOptions(height=HEIGHT, width=WIDTH, chunk_frames=DIT.chunk_frames)
PROMPT = "a red fox moving left"


@pytest.fixture(scope="module")
def wan(tmp_path_factory: pytest.TempPathFactory) -> tuple[WanParts, dict[str, Path]]:
    root = tmp_path_factory.mktemp("wan")
    p = parts(dit_seed=1)
    folders = {
        "diffusers": save_diffusers(p, root / "diffusers"),
        "original": save_original(p, root / "original"),
        "base": save_original(p, root / "base", dit=tiny_dit(seed=2)),  # other DiT weights under the checkpoint
    }
    # a file name no recipe claims, so all three load under the default sampling
    folders["checkpoint"] = save_checkpoint(p.dit, root / "generator_ema.pt")
    return p, folders


def load(folder: Path, **kw: object) -> Pipeline:
    return Pipeline.load(str(folder), wan=OPTIONS, **kw)  # type: ignore[arg-type]


def test_three_layouts_give_identical_frames(wan: tuple[WanParts, dict[str, Path]]) -> None:
    _, f = wan
    pipes = [load(f["diffusers"]), load(f["original"]), load(f["base"], checkpoint=f["checkpoint"])]
    assert all(isinstance(p.autoencoder, WanVAE) for p in pipes)
    assert pipes[0].frame_size == (HEIGHT, WIDTH) and pipes[0].frames_per_chunk == 12
    assert pipes[0].text_encoder.seq_len == WAN_TEXT_LENGTH
    frames = [p.generate(PROMPT, 21, seed=3, steps=2) for p in pipes]  # two chunks: 9 frames, then 12
    assert frames[0].shape == (21, HEIGHT, WIDTH, 3) and frames[0].std() > 5
    for other in frames[1:]:
        np.testing.assert_array_equal(frames[0], other)
    plain = load(f["base"]).generate(PROMPT, 21, seed=3, steps=2)  # the base's own weights draw something else
    assert np.abs(plain.astype(int) - frames[0]).mean() > 1


def test_umt5_from_both_layouts_equals_wan_pipelines_prompt_embeds(wan: tuple[WanParts, dict[str, Path]]) -> None:
    """512 token states, zeros past the prompt's mask, as WanPipeline.encode_prompt gives them."""
    p, f = wan
    with torch.no_grad():
        ref, _ = p.pipeline().encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=512)
    assert ref.shape == (1, WAN_TEXT_LENGTH, p.t5.config.d_model) and ref[0, 6:].abs().max() == 0  # 5 words + </s>
    for folder in (f["diffusers"], f["original"]):
        got = load(folder).text_encoder.encode([PROMPT])
        assert torch.equal(got, ref), (got - ref).abs().max()


def _first_chunk(pipe: Pipeline, steps: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """framecast's first finished latent chunk and its frames, through the driver (the stream batch)."""
    stream = pipe.stream(PROMPT, seed, steps=steps, shift=5.0)
    while True:
        out, done = pipe.driver.advance([stream])
        if done:
            (frames,) = pipe.family.decode([stream.state], [done[0][1]])
            return done[0][1], frames


@pytest.mark.parametrize("steps", [1, 4])
def test_equals_diffusers_wan_pipeline_on_one_chunk(wan: tuple[WanParts, dict[str, Path]], steps: int) -> None:
    """The same prompt and initial latents through diffusers' WanPipeline (no guidance) and framecast. With 4
    steps diffusers' scheduler takes framecast's (Self-Forcing's) levels [1, .75, .5, .25] before its shift of 5
    through its documented `sigmas` argument; with 1 step its own default is the same."""
    p, f = wan
    pipe = load(f["diffusers"])
    seed = 7
    shape = (DIT.in_channels, DIT.chunk_frames, DIT.latent_height, DIT.latent_width)
    noise = NoiseDraws(seed, shape, torch.device("cpu")).next()  # (1, C, F, h, w): framecast's first chunk's
    latent, frames = _first_chunk(pipe, steps, seed)
    peer = p.pipeline(shift=5.0)
    if steps > 1:
        unshifted = torch.linspace(1, 0, steps + 1)[:-1].tolist()
        peer.scheduler.set_timesteps = functools.partial(peer.scheduler.set_timesteps, sigmas=unshifted)
    call = dict(
        prompt=PROMPT, height=HEIGHT, width=WIDTH, num_frames=9, num_inference_steps=steps, guidance_scale=1.0,
        latents=noise.clone(), max_sequence_length=WAN_TEXT_LENGTH,
    )  # fmt: skip
    with torch.no_grad():
        ref_latent = peer(**call, output_type="latent").frames  # (1, C, F, h, w), normalised
        if steps > 1:
            shifted = peer.scheduler.sigmas[:-1]
            assert torch.allclose(shifted, sigmas(steps, 5.0)[:-1], atol=1e-6), shifted
        ref_video = peer(**call, output_type="np").frames[0]  # (9, H, W, 3) in [0, 1]
    err = (latent[None] - ref_latent).abs().max().item()
    assert err < 1e-4 * ref_latent.abs().max().item(), err
    levels = np.abs(frames.astype(int) - np.round(ref_video * 255).astype(int))
    assert frames.shape == ref_video.shape and levels.max() <= 1, levels.max()


def test_video_to_video_runs(wan: tuple[WanParts, dict[str, Path]]) -> None:
    """Input chunks of 12 frames encode on their own (the first frame alone, then groups of four) and steer the
    output: one output frame per input frame."""
    _, f = wan
    pipe = load(f["diffusers"])
    clip = np.random.default_rng(0).integers(0, 256, (24, HEIGHT, WIDTH, 3), dtype=np.uint8)
    out = np.stack(list(pipe.video_to_video(PROMPT, clip, strength=0.5, steps=2)))
    assert out.shape[1:] == (HEIGHT, WIDTH, 3) and 0 < len(out) <= len(clip)
    latent = pipe.family.encode(clip[:12])
    assert latent.shape == (1, DIT.in_channels, DIT.chunk_frames, DIT.latent_height, DIT.latent_width)


def _without(src: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst)
    for name in names:
        target = dst / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return dst


def _fails(folder: Path, match: str) -> str:
    with pytest.raises(ModelLoadError, match=match) as info:
        load(folder)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_missing_parts_are_named(
    wan: tuple[WanParts, dict[str, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, f = wan
    o = f["original"]
    _fails(
        _without(o, tmp_path / "a", "Wan2.1_VAE.pth"),
        r"no Wan VAE in the Wan folder .*a: expected .*a/vae/ or .*a/Wan2.1_VAE.pth",
    )
    _fails(
        _without(o, tmp_path / "b", "models_t5_umt5-xxl-enc-bf16.pth"),
        r"no UMT5 text encoder in the Wan folder .*b: expected .*b/text_encoder/ or .*b/models_t5_umt5-xxl-enc-bf16",
    )
    _fails(
        _without(o, tmp_path / "c", "google"),
        r"no UMT5 tokenizer in the Wan folder .*c: expected .*c/tokenizer/ or .*c/google/umt5-xxl/",
    )
    d = f["diffusers"]
    _fails(_without(d, tmp_path / "d", "vae"), "no Wan VAE in the Wan folder .*d: expected .*d/vae/")
    _fails(_without(d, tmp_path / "e", "tokenizer"), "no UMT5 tokenizer in the Wan folder")
    _fails(_without(d, tmp_path / "g", "text_encoder"), "no UMT5 text encoder in the Wan folder")
    _fails(
        _without(d, tmp_path / "h", "vae/diffusion_pytorch_model.safetensors"), "Wan VAE weights not found: .*h/vae/"
    )
    t5 = tmp_path / "i" / "models_t5_umt5-xxl-enc-bf16.pth"
    _without(o, tmp_path / "i")
    t5.write_bytes(t5.read_bytes()[:2000])
    _fails(tmp_path / "i", "UMT5 encoder weights .*models_t5_umt5-xxl-enc-bf16.pth is truncated or not a torch file")
    from framecast.cli import main  # the CLI says it on one line, without a traceback

    assert main(["generate", "x", "-o", str(tmp_path / "o.mp4"), "--model", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "no Wan VAE in the Wan folder" in err, err
    (tmp_path / "empty").mkdir()
    _fails(tmp_path / "empty", "framecast.json not found: .*a Wan2.1 folder holds config.json")
