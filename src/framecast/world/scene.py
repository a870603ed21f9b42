"""Scene descriptions of the procedural world and their closed-form motion.

Coordinates are pixels in the frame: x to the right, y down, pixel (row r, column c) covers
[c, c + 1) x [r, r + 1), so its center is (c + 0.5, r + 0.5). A frame is (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

from framecast.errors import InputError
from framecast.world.vocab import COLORS, MOTIONS, SHAPES, check_choice

WRAP_X = ("left", "right")  # motions that wrap around the frame horizontally
WRAP_Y = ("up", "down")  # motions that wrap around the frame vertically


@dataclass(frozen=True)
class Background:
    """A solid color (`top == bottom`) or a vertical gradient from `top` (row 0) to `bottom` (row H - 1)."""

    kind: str
    top: str
    bottom: str

    def __post_init__(self) -> None:
        check_choice("background kind", self.kind, ("solid", "gradient"))
        check_choice("color", self.top, tuple(COLORS))
        check_choice("color", self.bottom, tuple(COLORS))
        if (self.kind == "solid") != (self.top == self.bottom):
            raise InputError(f"a solid background has top == bottom, a gradient two colors; got {self}")

    @staticmethod
    def solid(color: str) -> Background:
        """A solid background of one palette color."""
        return Background("solid", color, color)


def as_background(value: Background | str | None) -> Background | None:
    """A `Background` from a Background, a palette color name (a solid background) or None."""
    if value is None or isinstance(value, Background):
        return value
    if not isinstance(value, str):
        raise InputError(f"background must be a Background or a color name, got {type(value).__name__}")
    return Background.solid(check_choice("color", value, tuple(COLORS)))


@dataclass(frozen=True)
class ObjectSpec:
    """One moving shape.

    `x, y`: center at frame 0 in pixels; `size`: side of the bounding box in pixels; `vx, vy`: velocity in
    pixels per frame; `bounds`: (x0, y0, x1, y1), the box the object's bounding box stays in. Along an axis
    the object wraps on (x for left/right, y for up/down) the bounds span the whole frame and the center
    wraps around them; along the other axes a bouncing object reflects off them.
    """

    shape: str
    color: str
    motion: str
    x: float
    y: float
    size: float
    vx: float
    vy: float
    bounds: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        check_choice("shape", self.shape, SHAPES)
        check_choice("color", self.color, tuple(COLORS))
        check_choice("motion", self.motion, MOTIONS)


@dataclass(frozen=True)
class Scene:
    """One or two objects on a background, for frames of `height` x `width` pixels."""

    objects: tuple[ObjectSpec, ...]
    background: Background
    height: int
    width: int

    @property
    def scale(self) -> float:
        """Frame scale relative to the 64 x 64 reference (sizes and speeds are proportional to it)."""
        return frame_scale(self.height, self.width)


def frame_scale(height: int, width: int) -> float:
    """Scale of a height x width frame relative to 64 x 64: min(height, width) / 64."""
    return min(height, width) / 64.0


def _wrap(p: float, lo: float, hi: float) -> float:
    """Position p wrapped into [lo, hi)."""
    return lo + (p - lo) % (hi - lo)


def _reflect(p: float, lo: float, hi: float) -> float:
    """Unbounded position p folded into [lo, hi] by reflections off both ends (a bounce)."""
    span = hi - lo
    if span <= 0:
        return lo
    m = (p - lo) % (2 * span)
    return lo + span - abs(m - span)


def object_state(obj: ObjectSpec, frame_index: int) -> tuple[float, float]:
    """Center (x, y) in pixels of `obj` at `frame_index`, in closed form (no need to simulate earlier frames)."""
    t = float(frame_index)
    x, y = obj.x + obj.vx * t, obj.y + obj.vy * t
    x0, y0, x1, y1 = obj.bounds
    half = obj.size / 2
    if obj.motion in WRAP_X:
        return _wrap(x, x0, x1), y
    if obj.motion in WRAP_Y:
        return x, _wrap(y, y0, y1)
    if obj.motion == "bounce":
        return _reflect(x, x0 + half, x1 - half), _reflect(y, y0 + half, y1 - half)
    return x, y


def check_frame_size(height: int, width: int) -> None:
    """Raise InputError unless both sides are integers of at least 16 pixels."""
    if not (isinstance(height, int) and isinstance(width, int)) or min(height, width) < 16:
        raise InputError(f"frame size must be integers >= 16, got height={height!r} width={width!r}")
    if max(height, width) > 8 * min(height, width):
        raise InputError(f"frame aspect ratio is too extreme: {height} x {width}")
