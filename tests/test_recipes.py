"""Recipes: explicit timesteps in the sampler, recipes by name and from file names, Pipeline.load and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from framecast.cli import main
from framecast.errors import InputError
from framecast.pipeline import Pipeline
from framecast.recipes import RECIPES, apply_recipe, choose_recipe, from_checkpoint, recipe
from framecast.sampling.flow import listed_sigmas, sdedit_sigmas, sigmas
from framecast.stream.config import StreamConfig
from tests.conftest import RandomTextEncoder


def test_warped_even_list_is_the_default_grid_exactly() -> None:
    """Self-Forcing's 1000/750/500/250 warped at shift 5 is framecast's default schedule, to the bit."""
    assert torch.equal(listed_sigmas((1000, 750, 500, 250), 5.0), sigmas(4, 5.0))
    assert torch.equal(listed_sigmas((1000, 500), 5.0), sigmas(2, 5.0))  # Causal Forcing++ 2-step
    for s in (0.3, 0.8):  # a video-to-video chunk: the same restriction as the even grid's
        torch.testing.assert_close(listed_sigmas((1000, 750, 500, 250), 5.0, s), sdedit_sigmas(4, 5.0, s))


def test_listed_timesteps_are_used_as_listed_at_shift_1() -> None:
    lv = StreamConfig(steps=3, shift=1.0, timesteps=(1000, 757, 522)).noise_levels()
    torch.testing.assert_close(lv, torch.tensor([1.0, 0.757, 0.522, 0.0]))
    first2 = StreamConfig(steps=2, shift=1.0, timesteps=[700, 500, 400, 200]).noise_levels()  # a JSON list
    torch.testing.assert_close(first2, torch.tensor([0.7, 0.5, 0.0]))
    v2v = StreamConfig(steps=2, shift=1.0, timesteps=(700, 500, 400, 200)).noise_levels(0.35)
    torch.testing.assert_close(v2v, torch.tensor([0.35, 0.25, 0.0]))  # scaled so the first level is the strength


@pytest.mark.parametrize(
    "fields",
    [
        dict(timesteps=(500, 750)),
        dict(timesteps=(1000, 1000)),
        dict(timesteps=(1200, 500)),
        dict(timesteps=(0,)),
        dict(timesteps="1000"),
        dict(steps=4, timesteps=(1000, 500)),
        dict(shift=0.0),
    ],
)
def test_bad_timesteps_are_one_line_errors(fields: dict) -> None:
    with pytest.raises(InputError) as e:
        StreamConfig(**fields)
    assert "\n" not in str(e.value)


def test_default_config_keeps_the_even_grid() -> None:
    cfg = StreamConfig()
    assert cfg.timesteps == () and torch.equal(cfg.noise_levels(), sigmas(4, 5.0))
    assert torch.equal(cfg.noise_levels(0.6), sdedit_sigmas(4, 5.0, 0.6))


def test_every_recipe_is_a_valid_stream_config_with_a_source() -> None:
    for r in RECIPES.values():
        cfg = r.stream_config()
        assert cfg.guidance == 1.0 and r.source and r.files and r.chunk_frames in (1, 3)
        assert "@" in r.source.split(":")[0]  # repository@commit: files


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match="known recipes: self-forcing, causvid"):
        recipe("self_forcing")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("checkpoints/self_forcing_dmd.pt", "self-forcing"),
        ("ckpts/autoregressive_checkpoint/model.pt", "causvid"),
        ("ckpts/wan_causal_dmd_v2v/model.pt", "streamdiffusionv2"),
        ("ckpts/wan_causal_dmd_v2v_14b/model.pt", "streamdiffusionv2"),
        ("longlive_models/models/longlive_base.pt", "longlive"),
        ("checkpoints/Reward-Forcing-T2V-1.3B/rewardforcing.pt", "reward-forcing"),
        ("checkpoints/chunkwise/causal_forcing.pt", "causal-forcing"),
        ("checkpoints/framewise/causal_forcing.pt", "causal-forcing-framewise"),
        ("checkpoints/causal-forcing++/framewise-2step.pt", "causal-forcing-framewise"),
        ("checkpoints/krea-realtime-video-14b.safetensors", "krea-14b"),
        ("runs/model.pt", None),
    ],
)
def test_checkpoint_names_identify_recipes(path: str, name: str | None) -> None:
    found = from_checkpoint(path)
    assert (found.name if found else None) == name


def test_folder_hint_and_explicit_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_framecast_recipe": "longlive", "dim": 8}))
    assert choose_recipe(tmp_path, "ckpt/self_forcing_dmd.pt", None) == RECIPES["longlive"]  # the folder says
    assert choose_recipe(tmp_path, None, "causvid") == RECIPES["causvid"]  # a name wins
    assert choose_recipe("tiny", "ckpt/self_forcing_dmd.pt", None) == RECIPES["self-forcing"]
    assert choose_recipe("tiny", None, None) is None


def test_recipe_chunk_must_match_the_dit() -> None:
    with pytest.raises(InputError, match="3 latent frame"):
        apply_recipe(RECIPES["self-forcing"], StreamConfig(), 1)


def test_pipeline_load_applies_a_recipe_and_streams() -> None:
    enc = RandomTextEncoder(384, 1)
    pipe = Pipeline.load("tiny", random_weights=True, text_encoder=enc, recipe="streamdiffusionv2")  # 1 frame/chunk
    assert pipe.recipe is RECIPES["streamdiffusionv2"]
    assert pipe.config.stream.timesteps == (700.0, 500.0, 400.0, 200.0) and pipe.config.stream.steps == 2
    frames = pipe.generate("a red circle", num_frames=8)
    assert frames.shape[0] == 8
    with pytest.raises(InputError, match="3 latent frame"):
        Pipeline.load("tiny", random_weights=True, text_encoder=enc, recipe="self-forcing")


def test_cli_models_and_unknown_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES) and "on disk:" in out
    assert main(["plan", "--model", "tiny", "--recipe", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("framecast: error: unknown recipe 'nope'") and "\n" not in err
