"""Deterministic sampling of scenes: `sample_scene(seed, ...)`.

Layout: a one-object scene uses the whole frame. A two-object scene splits the frame into two halves with
a gap, one object per half, so the objects never overlap: top/bottom halves when both motions are in
{left, right, still, bounce} (horizontal wrap stays inside a band of rows), left/right halves when both are
in {up, down, still, bounce}. A horizontal and a vertical mover cannot be separated; the second object's
motion is drawn only among the compatible ones. Along non-wrapping axes the bounds keep a margin of
max(1, 2 * scale) pixels from the frame edge and from the other half.
"""

from __future__ import annotations

import itertools
import math
from typing import TypeVar

import numpy as np

from framecast.errors import InputError
from framecast.world.scene import (
    WRAP_X,
    WRAP_Y,
    Background,
    ObjectSpec,
    Scene,
    as_background,
    check_frame_size,
    frame_scale,
)
from framecast.world.vocab import COLORS, MOTIONS, SHAPES, allowed_on, check_choice, is_heldout

T = TypeVar("T")
Triple = tuple[str, str, str]  # (color, shape, motion)
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels

SPLITS = ("train", "heldout")
SIZE_RANGE = (12.0, 18.0)  # bounding-box side at 64 px
SPEED_RANGE = (0.6, 1.2)  # pixels per frame at 64 px
BOUNCE_ANGLE = (35.0, 55.0)  # degrees from the x axis: both velocity components are significant
HORIZONTAL_OK = frozenset({"left", "right", "still", "bounce"})
VERTICAL_OK = frozenset({"up", "down", "still", "bounce"})


def _all_triples() -> list[Triple]:
    return [(c, s, m) for c, s, m in itertools.product(COLORS, SHAPES, MOTIONS)]


def _all_backgrounds() -> list[Background]:
    solid = [Background.solid(c) for c in COLORS]
    return solid + [Background("gradient", a, b) for a, b in itertools.permutations(COLORS, 2)]


def _pick(rng: np.random.Generator, items: list[T], what: str) -> T:
    if not items:
        raise InputError(f"no {what} satisfies the given constraints")
    return items[int(rng.integers(len(items)))]


def _first_triple(rng: np.random.Generator, split: str, want: dict[str, str | None], bg: Background | None) -> Triple:
    heldout = split == "heldout"
    ok = [
        t
        for t in _all_triples()
        if is_heldout(*t) == heldout
        and all(v is None or v == t[i] for i, v in enumerate((want["color"], want["shape"], want["motion"])))
        and (bg is None or allowed_on(t[0], bg.top, bg.bottom))
    ]
    return _pick(rng, ok, f"{split} (color, shape, motion) combination")


def _background(rng: np.random.Generator, color: str) -> Background:
    kind = "solid" if rng.random() < 0.5 else "gradient"
    ok = [b for b in _all_backgrounds() if b.kind == kind and allowed_on(color, b.top, b.bottom)]
    return _pick(rng, ok, "background")


def _separable(m1: str, m2: str) -> bool:
    return {m1, m2} <= HORIZONTAL_OK or {m1, m2} <= VERTICAL_OK


def _second_triple(rng: np.random.Generator, first: Triple, bg: Background) -> Triple:
    ok = [
        t
        for t in _all_triples()
        if not is_heldout(*t)
        and t[0] != first[0]
        and allowed_on(t[0], bg.top, bg.bottom)
        and _separable(first[2], t[2])
    ]
    return _pick(rng, ok, "second object")


def _regions(rng: np.random.Generator, motions: list[str], height: int, width: int) -> list[Box]:
    """One region per object: the whole frame, or the two halves (top/bottom or left/right) in random order."""
    if len(motions) == 1:
        return [(0.0, 0.0, float(width), float(height))]
    horizontal = set(motions) <= HORIZONTAL_OK
    if horizontal and set(motions) <= VERTICAL_OK:
        horizontal = bool(rng.random() < 0.5)
    if horizontal:
        halves = [(0.0, 0.0, float(width), height / 2), (0.0, height / 2, float(width), float(height))]
    else:
        halves = [(0.0, 0.0, width / 2, float(height)), (width / 2, 0.0, float(width), float(height))]
    order = rng.permutation(2)
    return [halves[int(i)] for i in order]


def _bounds(region: Box, motion: str, margin: float, height: int, width: int) -> Box:
    """Shrink `region` by `margin` along the axes the motion does not wrap on; wrap axes span the frame."""
    x0, y0, x1, y1 = region
    xs = (0.0, float(width)) if motion in WRAP_X else (x0 + margin, x1 - margin)
    ys = (0.0, float(height)) if motion in WRAP_Y else (y0 + margin, y1 - margin)
    return (xs[0], ys[0], xs[1], ys[1])


def _velocity(rng: np.random.Generator, motion: str, scale: float) -> tuple[float, float]:
    speed = float(rng.uniform(*SPEED_RANGE)) * scale
    if motion == "bounce":
        angle = math.radians(float(rng.uniform(*BOUNCE_ANGLE)))
        sx, sy = (1 if rng.random() < 0.5 else -1), (1 if rng.random() < 0.5 else -1)
        return sx * speed * math.cos(angle), sy * speed * math.sin(angle)
    unit = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
    ux, uy = unit.get(motion, (0.0, 0.0))
    return ux * speed, uy * speed


def _object(rng: np.random.Generator, triple: Triple, bounds: Box, scale: float) -> ObjectSpec:
    color, shape, motion = triple
    x0, y0, x1, y1 = bounds
    size = round(float(rng.uniform(*SIZE_RANGE)) * scale * 2) / 2  # half-pixel steps
    size = min(size, x1 - x0, y1 - y0)
    x = float(rng.uniform(x0, x1)) if motion in WRAP_X else float(rng.uniform(x0 + size / 2, x1 - size / 2))
    y = float(rng.uniform(y0, y1)) if motion in WRAP_Y else float(rng.uniform(y0 + size / 2, y1 - size / 2))
    vx, vy = _velocity(rng, motion, scale)
    return ObjectSpec(shape, color, motion, x, y, size, vx, vy, bounds)


def _check_args(seed: int, split: str, num_objects: int | None, want: dict[str, str | None]) -> None:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    check_choice("split", split, SPLITS)
    if num_objects not in (None, 1, 2):
        raise InputError(f"num_objects must be 1, 2 or None, got {num_objects!r}")
    allowed = {"color": tuple(COLORS), "shape": SHAPES, "motion": MOTIONS}
    for key, value in want.items():
        if value is not None:
            check_choice(key, value, allowed[key])


def sample_scene(
    seed: int,
    split: str = "train",
    num_objects: int | None = None,
    height: int = 64,
    width: int = 64,
    *,
    shape: str | None = None,
    color: str | None = None,
    motion: str | None = None,
    background: Background | str | None = None,
) -> Scene:
    """A random scene, fully determined by its arguments.

    `split="train"`: no object has a held-out (color, shape, motion) triple. `split="heldout"`: the first
    object's triple is held out (the second one, if any, is a training triple). `shape`, `color`, `motion`
    constrain the first object; `background` (a `Background` or a palette color name for a solid one)
    fixes the background. `num_objects=None` draws 1 or 2. Raises InputError for unknown values or
    constraints that no scene satisfies (e.g. a held-out triple with split="train").
    """
    want = {"color": color, "shape": shape, "motion": motion}
    _check_args(seed, split, num_objects, want)
    check_frame_size(height, width)
    bg = as_background(background)
    rng = np.random.default_rng(seed)
    n = num_objects if num_objects is not None else int(rng.integers(1, 3))
    triples = [_first_triple(rng, split, want, bg)]
    bg = bg if bg is not None else _background(rng, triples[0][0])
    if n == 2:
        triples.append(_second_triple(rng, triples[0], bg))
    scale = frame_scale(height, width)
    margin = max(1.0, 2.0 * scale)
    regions = _regions(rng, [t[2] for t in triples], height, width)
    objects = tuple(
        _object(rng, t, _bounds(r, t[2], margin, height, width), scale) for t, r in zip(triples, regions, strict=True)
    )
    return Scene(objects, bg, height, width)
