"""Anti-aliased shape coverage masks ("sprites"), supersampled 4 x 4 and cached.

Shapes live in a local box u, v in [-1, 1] (v down): circle (inscribed), square (the box), triangle
(apex at the top middle, base along the bottom), 5-point star (a point up, inner radius 0.45 of the
outer one, as wide as the box and 0.95 of its height, centered).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SUPERSAMPLE = 4  # samples per pixel along each axis; positions are quantized to 1 / SUPERSAMPLE pixel
STAR_INNER = 0.45  # inner radius / outer radius of the star


def star_polygon() -> np.ndarray:
    """Vertices (10, 2) as (u, v) of the star, outer points first at the top, clockwise on screen."""
    outer = 1.0 / math.sin(math.radians(72))  # outer radius so the star is exactly 2 wide
    shift = outer * (1 - math.cos(math.radians(36))) / 2  # centers the box vertically
    angles = np.radians(np.arange(10) * 36.0)
    radius = np.where(np.arange(10) % 2 == 0, outer, outer * STAR_INNER)
    return np.stack([radius * np.sin(angles), -radius * np.cos(angles) + shift], axis=1)


def polygon(shape: str) -> np.ndarray:
    """Vertices (N, 2) as (u, v) of a polygonal shape (square, triangle, star)."""
    if shape == "square":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if shape == "triangle":
        return np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    return star_polygon()


@lru_cache(maxsize=8)
def area_and_centroid(shape: str) -> tuple[float, float]:
    """Exact area / size^2 of a shape and its centroid's offset below the box center, in units of size."""
    if shape == "circle":
        return math.pi / 4, 0.0
    u, v = polygon(shape).T
    un, vn = np.roll(u, -1), np.roll(v, -1)
    cross = u * vn - un * v
    area = cross.sum() / 2  # in (u, v) units, where the box has area 4
    cv = ((v + vn) * cross).sum() / (6 * area)
    return float(abs(area)) / 4, float(cv) / 2


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test; u, v broadcastable, poly (N, 2); returns bool of the broadcast shape."""
    u, v = np.broadcast_arrays(u, v)
    inside = np.zeros(u.shape, dtype=bool)
    for (ua, va), (ub, vb) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        if va == vb:
            continue
        crosses = (va > v) != (vb > v)
        u_at = ua + (v - va) * (ub - ua) / (vb - va)
        inside ^= crosses & (u < u_at)
    return inside


def inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bool mask: which local points (u, v) (any shape, v down, box [-1, 1]^2) lie inside `shape`."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    return _inside_polygon(u, v, polygon(shape))


@lru_cache(maxsize=4096)
def sprite(shape: str, size_q: int, off_x_q: int, off_y_q: int) -> np.ndarray:
    """Coverage (h, w) float32 in [0, 1], read-only, of a shape placed in a small window.

    All arguments are in 1 / SUPERSAMPLE pixel units: `size_q` is the box side, `off_*_q` the shape
    center measured from the window's top-left corner. The window is just large enough for the shape.
    """
    q = SUPERSAMPLE
    half = size_q / 2
    w, h = math.ceil((off_x_q + half) / q - 1e-9), math.ceil((off_y_q + half) / q - 1e-9)
    xs = (np.arange(w * q) + 0.5 - off_x_q) / half  # (w * q,) local u of each sample
    ys = (np.arange(h * q) + 0.5 - off_y_q) / half  # (h * q,) local v
    inside = inside_shape(shape, xs[None, :], ys[:, None])  # (h * q, w * q)
    cover = inside.reshape(h, q, w, q).mean(axis=(1, 3), dtype=np.float32)  # (h, w)
    cover.setflags(write=False)
    return cover


def placed_sprite(shape: str, size: float, x: float, y: float) -> tuple[np.ndarray, int, int]:
    """Coverage (h, w) of `shape` of side `size` centered at pixel position (x, y), and the window's (row, col).

    The window's top-left pixel is (row, col), possibly outside the frame (callers wrap or clip).
    """
    q = SUPERSAMPLE
    size_q = max(1, round(size * q))
    xq, yq = round(x * q), round(y * q)  # center in sample units
    col, row = math.floor((xq - size_q / 2) / q), math.floor((yq - size_q / 2) / q)
    return sprite(shape, size_q, xq - col * q, yq - row * q), row, col
