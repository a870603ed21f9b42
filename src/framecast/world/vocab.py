"""The vocabulary of the procedural world: shapes, colors, motions, the held-out split and the contrast rule.

Colors are RGB uint8 triples. A background is either one palette color or a vertical gradient between two;
an object color is allowed on a background only when its RGB distance to every color of that background
(the whole segment between the gradient's end colors) is at least `MIN_CONTRAST`.
"""

from __future__ import annotations

from functools import lru_cache
from types import MappingProxyType

import numpy as np

from framecast.errors import InputError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still", "bounce")
COLORS: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 40, 40),
        "orange": (245, 140, 20),
        "yellow": (240, 220, 40),
        "green": (40, 180, 60),
        "blue": (40, 80, 220),
        "purple": (140, 50, 190),
        "white": (240, 240, 240),
        "black": (20, 20, 20),
    }
)
MIN_CONTRAST = 80.0  # smallest allowed RGB distance between an object color and any background color

# 20 of the 8 * 4 * 6 = 192 (color, shape, motion) triples (about 10%), never seen in training.
# Each color, shape and motion value (and each (color, shape) pair) still appears in training.
HELDOUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "circle", "left"),
        ("red", "square", "up"),
        ("red", "triangle", "still"),
        ("orange", "square", "right"),
        ("orange", "triangle", "down"),
        ("orange", "star", "bounce"),
        ("yellow", "circle", "left"),
        ("yellow", "triangle", "up"),
        ("yellow", "star", "still"),
        ("green", "circle", "bounce"),
        ("green", "square", "right"),
        ("green", "star", "down"),
        ("blue", "circle", "still"),
        ("blue", "square", "left"),
        ("purple", "square", "bounce"),
        ("purple", "triangle", "right"),
        ("white", "triangle", "left"),
        ("white", "star", "up"),
        ("black", "circle", "down"),
        ("black", "star", "right"),
    }
)


def is_heldout(color: str, shape: str, motion: str) -> bool:
    """True when the (color, shape, motion) triple belongs to the held-out evaluation split."""
    return (color, shape, motion) in HELDOUT


def check_choice(kind: str, value: str, allowed: tuple[str, ...]) -> str:
    """Return `value` if it is one of `allowed`, else raise InputError naming the valid choices."""
    if value not in allowed:
        raise InputError(f"unknown {kind} {value!r}; choose one of {', '.join(allowed)}")
    return value


def color_rgb(name: str) -> np.ndarray:
    """RGB of a palette color as a float32 array (3,) in [0, 255]."""
    check_choice("color", name, tuple(COLORS))
    return np.asarray(COLORS[name], dtype=np.float32)


def palette_array() -> np.ndarray:
    """All palette colors, float32 (len(COLORS), 3) in [0, 255], in `COLORS` order."""
    return np.asarray(list(COLORS.values()), dtype=np.float32)


def contrast(color: str, top: str, bottom: str) -> float:
    """RGB distance from `color` to the nearest color of the segment top -> bottom (a gradient, or a solid)."""
    p, a, b = color_rgb(color), color_rgb(top), color_rgb(bottom)
    d = b - a
    t = float(np.clip(np.dot(p - a, d) / max(float(np.dot(d, d)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * d)))


@lru_cache(maxsize=1024)
def allowed_on(color: str, top: str, bottom: str) -> bool:
    """True when an object of `color` may be drawn on the background top -> bottom (solid when top == bottom)."""
    return color not in (top, bottom) and contrast(color, top, bottom) >= MIN_CONTRAST
