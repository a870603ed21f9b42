"""The procedural world: determinism, held-out split, geometry, captions, and the detector's measured accuracy."""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest

from framecast.errors import InputError
from framecast.world import (
    COLORS,
    HELDOUT,
    MOTIONS,
    SHAPES,
    Background,
    ObjectSpec,
    Scene,
    allowed_on,
    canonical_caption,
    caption,
    describe,
    detect_background,
    detect_motion,
    detect_objects,
    is_heldout,
    measure_detector,
    object_state,
    prompt_for,
    render,
    sample_scene,
    track,
)
from framecast.world.captions import COLOR_WORDS, SHAPE_WORDS
from framecast.world.components import label_components


def _scenes(n: int, split: str = "train", **kw: object) -> list[Scene]:
    return [sample_scene(seed, split, **kw) for seed in range(n)]  # type: ignore[arg-type]


# --- determinism and rendering ---------------------------------------------------------------------------------


def test_same_seed_same_scene_caption_frames() -> None:
    a, b = sample_scene(11), sample_scene(11)
    assert a == b
    assert caption(a, 5) == caption(b, 5)
    np.testing.assert_array_equal(render(a, 3, 8), render(b, 3, 8))
    assert sample_scene(12) != a
    assert len({caption(a, s) for s in range(40)}) > 10
    assert not np.array_equal(render(sample_scene(12), 0, 1), render(a, 0, 1))


def test_render_window_equals_slice_of_long_render() -> None:
    for seed in range(6):
        scene = sample_scene(seed, num_objects=2 if seed % 2 else 1)
        long = render(scene, 0, 60)
        assert long.shape == (60, 64, 64, 3) and long.dtype == np.uint8
        np.testing.assert_array_equal(render(scene, 17, 12), long[17:29])
        np.testing.assert_array_equal(render(scene, 59, 1), long[59:])


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (128, 128), (48, 80)])
def test_other_frame_sizes_scale(size: tuple[int, int]) -> None:
    h, w = size
    scale = min(h, w) / 64
    for seed in range(10):
        scene = sample_scene(seed, height=h, width=w)
        assert render(scene, 0, 2).shape == (2, h, w, 3)
        for obj in scene.objects:
            assert 12 * scale - 0.5 <= obj.size <= 18 * scale + 0.5
            speed = np.hypot(obj.vx, obj.vy)
            assert obj.motion == "still" or 0.6 * scale - 1e-9 <= speed <= 1.2 * scale + 1e-9


def test_render_is_fast() -> None:
    scene = sample_scene(3, num_objects=2)
    render(scene, 0, 4)  # warm the sprite cache
    t = time.perf_counter()
    render(scene, 0, 200)
    assert time.perf_counter() - t < 2.0  # ~0.05 ms a frame; generous for a loaded machine


# --- sampling rules ----------------------------------------------------------------------------------------------


def test_heldout_set_keeps_every_value_in_training() -> None:
    combos = set(itertools.product(COLORS, SHAPES, MOTIONS))
    assert combos >= HELDOUT and 15 <= len(HELDOUT) <= 25
    train = combos - HELDOUT
    assert {c for c, _, _ in train} == set(COLORS)
    assert {s for _, s, _ in train} == set(SHAPES)
    assert {m for _, _, m in train} == set(MOTIONS)
    assert {(c, s) for c, s, _ in train} == set(itertools.product(COLORS, SHAPES))
    assert is_heldout(*sorted(HELDOUT)[0]) and not is_heldout(*sorted(train)[0])


def test_train_scenes_avoid_heldout_and_heldout_split_uses_it() -> None:
    seen = set()
    for scene in _scenes(300):
        for obj in scene.objects:
            assert not is_heldout(obj.color, obj.shape, obj.motion)
            seen.add((obj.color, obj.shape, obj.motion))
    assert {c for c, _, _ in seen} == set(COLORS) and {m for _, _, m in seen} == set(MOTIONS)
    for scene in _scenes(60, "heldout"):
        first = scene.objects[0]
        assert is_heldout(first.color, first.shape, first.motion)
        assert all(not is_heldout(o.color, o.shape, o.motion) for o in scene.objects[1:])


def test_colors_contrast_and_differ() -> None:
    for scene in _scenes(300) + _scenes(60, "heldout"):
        bg = scene.background
        assert all(allowed_on(o.color, bg.top, bg.bottom) for o in scene.objects)
        assert len({o.color for o in scene.objects}) == len(scene.objects)
        assert bg.kind == "solid" or bg.top != bg.bottom


def test_object_attributes_in_range() -> None:
    for scene in _scenes(200):
        assert 1 <= len(scene.objects) <= 2
        for o in scene.objects:
            assert 12 <= o.size <= 18
            assert o.motion == "still" or 0.6 - 1e-9 <= np.hypot(o.vx, o.vy) <= 1.2 + 1e-9
            if o.motion == "bounce":
                assert min(abs(o.vx), abs(o.vy)) > 0.5 * max(abs(o.vx), abs(o.vy))
            elif o.motion == "still":
                assert o.vx == o.vy == 0


def test_object_state_stays_in_bounds_and_moves_at_speed() -> None:
    for scene in _scenes(80):
        for o in scene.objects:
            x0, y0, x1, y1 = o.bounds
            pos = np.array([object_state(o, t) for t in range(300)])  # (T, 2)
            assert (pos[:, 0] >= x0 - 1e-9).all() and (pos[:, 0] <= x1).all()
            assert (pos[:, 1] >= y0 - 1e-9).all() and (pos[:, 1] <= y1).all()
            step = np.abs(np.diff(pos, axis=0))
            step = np.minimum(step, [scene.width, scene.height] - step)  # wrap-around
            assert (step <= [abs(o.vx) + 1e-6, abs(o.vy) + 1e-6]).all()


def _object_masks(scene: Scene, count: int) -> list[np.ndarray]:
    """Per object, bool (count, H, W): the pixels it changes when drawn alone."""
    masks = []
    for obj in scene.objects:
        alone = dataclasses.replace(scene, objects=(obj,))
        empty = dataclasses.replace(scene, objects=())
        masks.append((render(alone, 0, count) != render(empty, 0, 1)).any(axis=3))
    return masks


def test_two_objects_never_overlap() -> None:
    for seed in range(20):
        a, b = _object_masks(sample_scene(seed, num_objects=2), 200)
        assert not (a & b).any(), f"seed {seed}: objects overlap"
        assert a.any(axis=(1, 2)).all() and b.any(axis=(1, 2)).all()


def test_constraints_and_bad_input() -> None:
    scene = sample_scene(4, shape="star", color="red", motion="up", background="blue")
    first = scene.objects[0]
    assert (first.shape, first.color, first.motion) == ("star", "red", "up")
    assert scene.background == Background.solid("blue")
    held = sorted(HELDOUT)[0]
    scene = sample_scene(1, "heldout", color=held[0], shape=held[1], motion=held[2])
    assert (scene.objects[0].color, scene.objects[0].shape, scene.objects[0].motion) == held
    bad: list[dict[str, object]] = [
        {"color": "pink"},
        {"shape": "hexagon"},
        {"motion": "spin"},
        {"split": "test"},
        {"num_objects": 3},
        {"color": held[0], "shape": held[1], "motion": held[2]},  # held out, split="train"
        {"color": "white", "background": "white"},
        {"height": 4},
    ]
    for kw in bad:
        with pytest.raises(InputError):
            sample_scene(0, **kw)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        Background("gradient", "red", "red")


# --- captions -----------------------------------------------------------------------------------------------------


def test_captions_name_the_objects() -> None:
    for seed, scene in enumerate(_scenes(100)):
        text = caption(scene, seed)
        for obj in scene.objects:
            assert any(w in text for w in COLOR_WORDS[obj.color]), text
            assert any(w in text for w in SHAPE_WORDS[obj.shape]), text
        if len(scene.objects) == 2:
            assert " and " in text or " with " in text or ", while " in text
    rng = np.random.default_rng(0)
    texts = {caption(sample_scene(5, num_objects=1), rng) for _ in range(200)}
    assert any("background" in t or "backdrop" in t or "gradient" in t for t in texts)
    assert any(not ("background" in t or "backdrop" in t or "gradient" in t) for t in texts)
    with pytest.raises(InputError):
        caption(sample_scene(0), "seed")  # type: ignore[arg-type]


def test_canonical_caption_and_prompt() -> None:
    assert prompt_for("red", "circle", "left") == "a red circle moving left"
    assert prompt_for("orange", "star", "bounce", "blue") == "an orange star bouncing around on a blue background"
    grad = Background("gradient", "black", "white")
    assert prompt_for("red", "square", "still", grad) == "a red square staying still on a gradient from black to white"
    scene = sample_scene(3, num_objects=2)
    a, b = scene.objects
    assert canonical_caption(scene).startswith(f"{prompt_for(a.color, a.shape, a.motion)} and ")
    with pytest.raises(InputError):
        prompt_for("red", "circle", "sideways")


# --- detector -----------------------------------------------------------------------------------------------------


def test_label_components_matches_flood_fill() -> None:
    mask = np.zeros((8, 10), dtype=bool)
    mask[1:3, 1:4] = True
    mask[5:7, 6:9] = True
    mask[2, 8] = True
    labels, n = label_components(mask)
    assert n == 3
    assert len({labels[1, 1], labels[2, 3]}) == 1 and labels[0, 0] == -1
    assert labels[2, 8] != labels[5, 6]


def test_detector_accuracy_clean() -> None:
    rates = measure_detector(300, seed=0, clip_frames=24, motion_every=5)
    assert rates["objects"] >= 250 and rates["tracks"] >= 80
    assert rates["color_and_shape"] >= 0.99, rates
    assert rates["motion"] >= 0.99, rates


def test_detector_accuracy_noise_and_blur() -> None:
    rates = measure_detector(200, seed=1, noise_sigma=8.0, blur=True, clip_frames=24, motion_every=8)
    assert rates["color"] >= 0.95, rates
    assert rates["shape"] >= 0.90, rates
    assert rates["motion"] >= 0.90, rates


def test_detector_other_sizes() -> None:
    for size in (32, 128):
        rates = measure_detector(20, seed=2, size=size, clip_frames=12, motion_every=4)
        assert rates["color"] >= 0.95 and rates["shape"] >= 0.9 and rates["motion"] >= 0.9, (size, rates)


def test_wrapped_object_is_whole_and_flagged() -> None:
    star = ObjectSpec("star", "red", "left", 1.0, 30.0, 16.0, -1.0, 0.0, (0.0, 0.0, 64.0, 64.0))
    scene = Scene((star,), Background("gradient", "blue", "black"), 64, 64)
    (det,) = detect_objects(render(scene)[0])
    assert (det.color, det.shape, det.touches_edge) == ("red", "star", True)
    assert abs(det.x - 1.0) < 0.5 or abs(det.x - 65.0) < 0.5
    assert det.bbox[2] > 64 and 15 <= det.bbox[2] - det.bbox[0] <= 18  # the box runs past the right edge


def test_rows_mostly_covered_by_objects() -> None:
    """Two large squares side by side cover more than half of their rows; the row-median background fails there."""
    a = ObjectSpec("square", "red", "still", 16.0, 32.0, 18.0, 0.0, 0.0, (2.0, 2.0, 30.0, 62.0))
    b = ObjectSpec("square", "orange", "still", 48.0, 32.0, 18.0, 0.0, 0.0, (34.0, 2.0, 62.0, 62.0))
    for bg in (Background.solid("blue"), Background("gradient", "white", "green")):
        frame = render(Scene((a, b), bg, 64, 64))[0]
        dets = detect_objects(frame)
        assert sorted((d.color, d.shape) for d in dets) == [("orange", "square"), ("red", "square")]
        assert detect_background(frame) == bg


def test_background_tracking_and_describe() -> None:
    scene = sample_scene(3, num_objects=2)
    clip = render(scene, 0, 24)
    assert detect_background(clip[0]) == scene.background
    want = sorted((o.color, o.shape, o.motion) for o in scene.objects)
    assert sorted((d["color"], d["shape"], d["motion"]) for d in describe(clip)) == want
    first = scene.objects[0]
    assert detect_motion(clip, color=first.color) == first.motion
    pos = track(clip, color=first.color)
    assert pos.shape == (24, 2) and np.isfinite(pos).all()
    truth = np.array([object_state(first, t) for t in range(24)])
    assert np.abs(pos - truth).max() < 3.0  # centroid vs box center (a triangle's centroid sits lower)
    absent = next(c for c in COLORS if c not in {o.color for o in scene.objects})
    assert np.isnan(track(clip, color=absent)).all()
    assert detect_motion(clip, color=absent) == "unknown"


def test_detect_is_fast() -> None:
    frames = render(sample_scene(3, num_objects=2), 0, 20)
    detect_objects(frames[0])
    t = time.perf_counter()
    for frame in frames:
        detect_objects(frame)
    assert time.perf_counter() - t < 1.0  # ~1.2 ms a frame; generous for a loaded machine


def test_detector_bad_input() -> None:
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        detect_objects(np.zeros((64, 64), dtype=np.uint8))
    with pytest.raises(InputError, match="uint8"):
        detect_objects(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(InputError):
        detect_motion(np.zeros((1, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(InputError):
        track(np.zeros((64, 64, 3), dtype=np.uint8))
    assert detect_objects(np.full((64, 64, 3), 40, dtype=np.uint8)) == []
