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
    files = list((WEIGHTS_DIR / "tiny").rglob("*"))
    total = sum(f.stat().st_size for f in files if f.is_file())
    assert total <= 40 * 2**20
    assert all(f.suffix in {".json", ".safetensors"} for f in files if f.is_file())


@pytest.mark.parametrize("color", ["red", "blue", "yellow"])
def test_builtin_model_draws_the_prompted_color(pipe: Pipeline, color: str) -> None:
    frames = pipe.generate(f"a {color} square staying still", num_frames=24, seed=1)
    assert frames.shape == (24, *pipe.frame_size, 3) and frames.dtype == np.uint8
    hits = [any(d.color == color for d in detect_objects(f)) for f in frames[pipe.frames_per_chunk :]]
    assert np.mean(hits) >= 0.8
