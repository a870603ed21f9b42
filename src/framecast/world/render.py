"""Rendering scenes to frames: `render(scene, start, count) -> (count, H, W, 3) uint8`.

Frame i depends only on the scene and i (object positions are closed form), so any window of frames can be
rendered on its own and equals the same slice of a longer render. Objects are alpha-blended with their
anti-aliased coverage (4 x 4 supersampling, centers quantized to 1/4 pixel); wrapping objects are drawn
across the frame edge.
"""

from __future__ import annotations

import numpy as np

from framecast.errors import InputError
from framecast.world.scene import Background, ObjectSpec, Scene, object_state
from framecast.world.shapes import placed_sprite
from framecast.world.vocab import color_rgb


def background_image(background: Background, height: int, width: int) -> np.ndarray:
    """Background as float32 (H, W, 3) in [0, 255]: row r is top + (bottom - top) * r / (H - 1)."""
    top, bottom = color_rgb(background.top), color_rgb(background.bottom)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]  # (H, 1)
    rows = top[None, :] + (bottom - top)[None, :] * t  # (H, 3)
    return np.broadcast_to(rows[:, None, :], (height, width, 3)).copy()


def draw_object(frame: np.ndarray, obj: ObjectSpec, frame_index: int) -> None:
    """Blend `obj` at `frame_index` into `frame` (H, W, 3) float32 in place, wrapping around the edges."""
    height, width = frame.shape[:2]
    x, y = object_state(obj, frame_index)
    cover, row, col = placed_sprite(obj.shape, obj.size, x, y)  # cover (h, w)
    rows = (row + np.arange(cover.shape[0])) % height  # (h,)
    cols = (col + np.arange(cover.shape[1])) % width  # (w,)
    idx = np.ix_(rows, cols)
    patch = frame[idx]  # (h, w, 3)
    frame[idx] = patch + cover[:, :, None] * (color_rgb(obj.color) - patch)


def render(scene: Scene, start: int = 0, count: int = 1) -> np.ndarray:
    """Frames start .. start + count - 1 of `scene` as uint8 (count, H, W, 3) RGB in [0, 255]."""
    if not isinstance(scene, Scene):
        raise InputError(f"render expects a Scene, got {type(scene).__name__}")
    if start < 0 or count < 0:
        raise InputError(f"start and count must be >= 0, got start={start} count={count}")
    bg = background_image(scene.background, scene.height, scene.width)  # (H, W, 3)
    out = np.empty((count, scene.height, scene.width, 3), dtype=np.uint8)
    for i in range(count):
        frame = bg.copy()
        for obj in scene.objects:
            draw_object(frame, obj, start + i)
        np.rint(frame, out=frame)
        out[i] = frame
    return out
