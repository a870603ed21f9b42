"""`framecast eval-v2v`: the figures read a perfect video-to-video output correctly, and the suite runs end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.evaluation.scoring import score_clip
from framecast.evaluation.v2v import (
    V2VEvalSettings,
    best_shift,
    cases,
    format_table,
    position_correlation,
    reference_scores,
    run_v2v_eval,
    unwrap,
)
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder, load_autoencoder
from framecast.models.dit import CausalWanDiT
from framecast.pipeline import WEIGHTS_DIR, Pipeline
from framecast.world import render, track
from tests.conftest import RandomTextEncoder, tiny_config
from tests.test_pipeline import _fails


def _perfect_output(case_index: int, frames: int = 48) -> tuple[np.ndarray, np.ndarray, str, str, str]:
    """An input clip and what an ideal model would draw: the same motion path, the prompt's color and shape."""
    case = cases(case_index + 1, 0, 64, 64)[case_index]
    motion = case.scene.objects[0].motion
    return render(case.scene, 0, frames), render(case.target, 0, frames), case.color, case.shape, motion


@pytest.mark.parametrize("index", range(5))  # left, right, up, down, bounce: wrapping tracks included
def test_a_perfect_output_scores_full_marks(index: int) -> None:
    clip, ideal, color, shape, motion = _perfect_output(index)
    a = unwrap(track(clip), 64, 64)
    b = unwrap(track(ideal), 64, 64)
    assert position_correlation(a, b) > 0.99
    assert best_shift(a, b, 8) == (0, pytest.approx(position_correlation(a, b)))
    s = score_clip(ideal, color, shape, motion)
    assert s.color and s.shape and s.motion
    late = np.concatenate([ideal[:3], ideal[:-3]])  # an output three frames behind
    assert best_shift(a, unwrap(track(late), 64, 64), 8)[0] == 3


def test_correlation_edge_cases() -> None:
    t = np.arange(20, dtype=float)
    a = np.stack([t, np.full(20, 5.0)], axis=1)  # moves along x only: the flat axis adds nothing
    assert position_correlation(a, a * 2 + 1) == pytest.approx(1.0)
    assert position_correlation(a, a[::-1].copy()) == pytest.approx(-1.0)
    assert position_correlation(a, np.ones_like(a)) == 0.0 and position_correlation(None, a) == 0.0
    gappy = a.copy()
    gappy[3:6] = np.nan
    filled = unwrap(gappy, 64, 64)
    assert filled is not None and np.allclose(filled, a)
    gappy[:15] = np.nan
    assert unwrap(gappy, 64, 64) is None  # found in too few frames
    wrapped = np.stack([(40 - t * 3) % 64, np.full(20, 5.0)], axis=1)
    unwrapped = unwrap(wrapped, 64, 64)
    assert unwrapped is not None and np.allclose(np.diff(unwrapped[:, 0]), -3)


def test_cases_change_color_and_shape_and_cover_the_motions() -> None:
    cs = cases(10, 3, 64, 64)
    assert {c.scene.objects[0].motion for c in cs} == {"left", "right", "up", "down", "bounce"}
    for c in cs:
        obj = c.scene.objects[0]
        assert c.color != obj.color and c.shape != obj.shape and c.color in c.prompt and c.shape in c.prompt


def test_the_target_keeps_everything_but_color_and_shape() -> None:
    case = cases(3, 1, 64, 64)[2]
    src, tgt = case.scene.objects[0], case.target.objects[0]
    assert (tgt.color, tgt.shape) == (case.color, case.shape)
    assert dataclasses.replace(tgt, color=src.color, shape=src.shape) == src
    assert case.target.background == case.scene.background


def test_the_reference_is_the_ideal_output_through_the_shipped_autoencoder() -> None:
    cfg = tiny_config(in_channels=16, out_channels=16, latent_height=8, latent_width=8, chunk_frames=1)
    ae = load_autoencoder(WEIGHTS_DIR / "tiny" / "autoencoder")
    pipe = Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(cfg.text_dim))
    scores = [reference_scores(pipe, case, 24) for case in cases(5, 0, 64, 64)]  # circles to stars, all motions
    assert all(s["color"] == 1.0 and s["motion"] == 1.0 for s in scores)
    assert sum(s["shape"] for s in scores) >= 4  # the autoencoder keeps most shapes (stars are the hard ones)


def _tiny() -> Pipeline:
    torch.manual_seed(0)
    cfg = tiny_config(latent_height=4, latent_width=4, chunk_frames=1)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=cfg.in_channels, width=8))
    return Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(cfg.text_dim))


def test_v2v_eval_runs_end_to_end_on_a_tiny_random_model() -> None:
    pipe = _tiny()
    result = run_v2v_eval(pipe, V2VEvalSettings(clips=2, seconds=1.0, live_seconds=1.0, steps=2))
    assert len(result.clips) == 2 and -1.0 <= result.follow["position_corr"] <= 1.0
    assert result.lag["latency_frames_max"] <= result.lag["latency_bound"] == 7
    assert result.live["frames_pushed"] == 16 == result.live["frames_out"] + result.live["dropped"]
    asked = {c["prompt_shape"] for c in result.clips}
    assert set(result.by_shape) == asked and all(0.0 <= v <= 1.0 for v in result.by_shape.values())
    assert set(result.reference) == {"color", "shape", "motion"}
    assert all(0.0 <= v <= 1.0 for v in result.reference.values())
    json.dumps(result.to_json(), allow_nan=False)
    assert "position_corr" in format_table(result) and "reference" in format_table(result)


def test_cli_eval_v2v_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["eval-v2v", "--random-weights", "--clips", "0"], capsys, "--clips")
    _fails(["eval-v2v", "--random-weights", "--strength", "2"], capsys, "strength")
    _fails(["eval-v2v", "--random-weights", "--json", str(tmp_path / "no" / "x.json")], capsys, "does not exist")
    _fails(["eval-v2v", "--model", str(tmp_path)], capsys, "framecast.json")


def test_settings_pass_sampling_overrides_only_when_set() -> None:
    assert V2VEvalSettings().overrides() == {}
    assert V2VEvalSettings(steps=2, stream={"guidance": 3.0, "context_noise": 0.1}).overrides() == {
        "steps": 2, "guidance": 3.0, "context_noise": 0.1,
    }  # fmt: skip
