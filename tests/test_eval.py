"""`framecast eval`: the scores read the world's own frames correctly, and the suite runs end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from framecast.evaluation.scoring import score_clip, seam_flicker
from framecast.evaluation.suite import EvalSettings, format_table, run_eval, switch_latency
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.models.dit import CausalWanDiT
from framecast.pipeline import Pipeline
from framecast.world import HELDOUT, render, sample_scene
from tests.conftest import RandomTextEncoder, tiny_config


def test_rendered_world_clips_score_perfectly() -> None:
    for seed in range(6):
        scene = sample_scene(seed, "heldout", num_objects=1)
        obj = scene.objects[0]
        s = score_clip(render(scene, 0, 24), obj.color, obj.shape, obj.motion)
        assert s.color and s.shape and s.motion and s.found == 1.0


def test_switch_latency_counts_frames_until_the_new_object_shows() -> None:
    a = sample_scene(0, num_objects=1, color="red", shape="circle", motion="still", background="white")
    b = sample_scene(0, num_objects=1, color="blue", shape="square", motion="still", background="white")
    frames = np.concatenate([render(a, 0, 30), render(b, 0, 30)])  # the switch shows 6 frames after `at`
    assert switch_latency(frames, 24, "blue", "square", fps=24.0) == 0.25
    assert switch_latency(render(a, 0, 30), 10, "blue", "square", fps=24.0) == float("inf")


def test_seam_flicker_separates_chunk_seams() -> None:
    frames = np.zeros((8, 4, 4, 3), np.uint8)
    frames[4:] = 40  # one jump, at the seam between chunks of 4 frames
    inside, across = seam_flicker(frames, 4)
    assert inside == 0.0 and across == 40.0


def test_suite_runs_end_to_end_on_a_tiny_random_model() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(latent_height=4, latent_width=4, chunk_frames=1)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=cfg.in_channels, width=8, spatial_factor=8))
    pipe = Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(cfg.text_dim))
    guided = {"guidance": 2.0, "context_noise": 0.1}
    s = EvalSettings(0.5, 1, 2.0, 0.5, 0.5, 0.5, stream=guided, triples=3)
    result = run_eval(pipe, s)
    assert {k: result.settings["stream_config"][k] for k in guided} == guided  # the streams ran guided
    assert result.adherence["clips"] == 3 and 0.0 <= result.adherence["color"] <= 1.0
    assert set(result.by_shape) == {shape for _, shape, _ in sorted(HELDOUT)[:3]}  # the shapes the prompts asked
    assert min(result.by_shape.values()) <= result.adherence["shape"] <= max(result.by_shape.values())
    assert set(result.drift) >= {"first_color", "last_color", "drop_points"}
    assert result.switch["switches"] == 4
    json.dumps(result.to_json(), allow_nan=False)  # strict JSON, no Infinity
    assert "held-out adherence" in format_table(result)


def test_switch_seeds_repeat_every_pair_with_its_own_seed() -> None:
    from framecast.evaluation.suite import SWITCHES, switches

    torch.manual_seed(0)
    cfg = tiny_config(latent_height=4, latent_width=4, chunk_frames=1)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=cfg.in_channels, width=8, spatial_factor=8))
    pipe = Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(cfg.text_dim))
    seeds: list[int] = []
    generate = pipe.generate

    def recording(*args, seed: int = 0, **kwargs):  # type: ignore[no-untyped-def]
        seeds.append(seed)
        return generate(*args, seed=seed, **kwargs)

    pipe.generate = recording  # type: ignore[method-assign]
    said: list[str] = []
    result = switches(pipe, EvalSettings(switch_before=0.5, switch_after=0.5, switch_seeds=2), said.append)
    assert len(SWITCHES) == 4 and result["switches"] == 8 and said[-1] == "prompt switch 8/8"
    assert seeds == [0, 1, 2, 3, 10, 11, 12, 13]  # the first pass keeps the seeds of the default suite


def test_eval_cli_rejects_bad_counts_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_pipeline import _fails

    _fails(["eval", "--random-weights", "--switch-seeds", "0"], capsys, "--switch-seeds")
    _fails(["eval", "--random-weights", "--seeds", "0"], capsys, "--seeds")
