"""The trained built-in model ships inside the package, loads by name, and draws what the prompt asks for."""

from __future__ import annotations

import numpy as np
import pytest

from framecast.pipeline import WEIGHTS_DIR, Pipeline
from framecast.world import detect_objects

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / "tiny" / "framecast.json").is_file(), reason="built-in weights are not in this checkout"
)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.load("tiny")


def test_builtin_weights_are_small_safetensors() -> None:
    files = list(WEIGHTS_DIR.rglob("*"))  # every built-in model together
    total = sum(f.stat().st_size for f in files if f.is_file())
    assert total <= 40 * 2**20
    assert all(f.suffix in {".json", ".safetensors"} for f in files if f.is_file())


@pytest.mark.parametrize("color", ["red", "blue", "yellow"])
def test_builtin_model_draws_the_prompted_color(pipe: Pipeline, color: str) -> None:
    frames = pipe.generate(f"a {color} square staying still", num_frames=24, seed=1)
    assert frames.shape == (24, *pipe.frame_size, 3) and frames.dtype == np.uint8
    hits = [any(d.color == color for d in detect_objects(f)) for f in frames[pipe.frames_per_chunk :]]
    assert np.mean(hits) >= 0.8


@pytest.mark.parametrize("index", [0, 3])  # a white star asked to be a red circle; a white square, a blue triangle
def test_builtin_model_restyles_a_world_clip_where_the_input_is(pipe: Pipeline, index: int) -> None:
    """The built-in model (its DiT has a structure input and a refiner) under its default motion-aware strength:
    the output object takes the prompt's color and shape and moves as the input object does."""
    from framecast.evaluation.v2v import cases, position_correlation, unwrap
    from framecast.world import render, track

    case = cases(index + 1, 0, 64, 64)[index]
    clip = render(case.scene, 0, 48)
    out = np.stack(list(pipe.video_to_video(case.prompt, clip, seed=0)))
    assert out.shape == clip.shape
    found = [detect_objects(f) for f in out[pipe.frames_per_chunk :]]
    assert np.mean([any(d.color == case.color for d in objs) for objs in found]) >= 0.8
    assert np.mean([any(d.shape == case.shape for d in objs) for objs in found]) >= 0.7
    a, b = unwrap(track(clip, color=case.source[0]), 64, 64), unwrap(track(out), 64, 64)
    assert position_correlation(a, b) >= 0.8
