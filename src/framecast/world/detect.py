"""A classical detector for frames of the procedural world (numpy only), robust to noise and blur.

Pipeline for one frame (H, W, 3) uint8:
1. Background per row: the row median color, replaced by a robust (repeated-median) linear fit in the row
   index where the median is off the fit (rows mostly covered by objects). Solid and vertical-gradient
   backgrounds are both linear in the row.
2. Foreground: RGB distance to the row background above `FG_THRESHOLD`.
3. The frame is rolled so that an empty row and an empty column become the edges: objects that wrap
   around the frame edge are whole again. Positions are reported back in frame coordinates.
4. 4-connected components; those smaller than `MIN_AREA` (scaled) are dropped.
5. Per component: color = the palette color whose mixes with the background best explain its pixels;
   coverage in [0, 1] = projection of each pixel on the background -> object color line (area and
   centroid come from it); shape = the template (each shape drawn with the measured area and centroid,
   sharp or blurred once or twice) with the best soft IoU against the coverage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from framecast.errors import InputError
from framecast.world.components import dilate3, label_components, seam
from framecast.world.scene import Background, frame_scale
from framecast.world.shapes import area_and_centroid, placed_sprite
from framecast.world.vocab import COLORS, MIN_CONTRAST, SHAPES, palette_array

FG_THRESHOLD = 0.45 * MIN_CONTRAST  # RGB distance from the row background that marks a foreground pixel
MIN_AREA = 16.0  # smallest component in pixels at 64 px (scaled by scale^2)
ROW_FIT_TOLERANCE = 10.0  # a row median farther than this from the robust fit is replaced by the fit
BLUR_LEVELS = 3  # shape templates are tried sharp and blurred 3 x 3 up to BLUR_LEVELS - 1 times
UNKNOWN = "unknown"  # shape or motion that was not (or could not be) determined


@dataclass(frozen=True)
class Detection:
    """One detected object.

    `x, y`: centroid in pixels (frame coordinates, in [0, W) x [0, H)); `area`: coverage in pixels;
    `bbox`: (x0, y0, x1, y1) half-open integer box, where x1 > W or y1 > H for an object wrapping around
    the frame edge; `touches_edge`: the box touches or crosses the frame edge (wrapped or cut objects).
    """

    color: str
    shape: str
    x: float
    y: float
    area: int
    bbox: tuple[int, int, int, int]
    touches_edge: bool


class _Rolled(NamedTuple):
    """A frame rolled by (dy, dx) so no object crosses its edge: img (H, W, 3), bg (H, 3), labels (H, W)."""

    img: np.ndarray
    bg: np.ndarray
    labels: np.ndarray
    dy: int
    dx: int


def check_frame(frame: np.ndarray) -> np.ndarray:
    """Validate a uint8 (H, W, 3) frame with H, W >= 8 and return it as float32 (H, W, 3)."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        got = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InputError(f"frame must be a numpy uint8 array (H, W, 3), got {got}")
    if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 8:
        raise InputError(f"frame must have shape (H, W, 3) with H, W >= 8, got {frame.shape}")
    return frame.astype(np.float32)


def _least_squares_line(values: np.ndarray) -> np.ndarray:
    """Least-squares line fit values (N, C) ~ a + b * i per column; returns the fit (N, C)."""
    i = np.arange(values.shape[0], dtype=np.float64)[:, None] - (values.shape[0] - 1) / 2  # (N, 1), centered
    slope = (i * values).sum(axis=0) / max(float((i * i).sum()), 1e-9)  # (C,)
    return values.mean(axis=0)[None, :] + slope[None, :] * i


def _repeated_median_line(values: np.ndarray) -> np.ndarray:
    """Robust line fit values (N, C) ~ a + b * i per column (Siegel's repeated median); returns the fit (N, C)."""
    n = values.shape[0]
    i = np.arange(n)
    j = np.arange(n - 1)[None, :] + (np.arange(n - 1)[None, :] >= i[:, None])  # (N, N-1): all j != i
    slopes = (values[j] - values[:, None, :]) / (j - i[:, None])[:, :, None]  # (N, N-1, C)
    slope = np.median(np.median(slopes, axis=1), axis=0)  # (C,)
    intercept = np.median(values - slope[None, :] * i[:, None], axis=0)  # (C,)
    return intercept[None, :] + slope[None, :] * i[:, None]


def background_rows(img: np.ndarray) -> np.ndarray:
    """Background color per row, float32 (H, 3), of a float frame (H, W, 3)."""
    med = np.median(img, axis=1)  # (H, 3)
    if np.linalg.norm(med - _least_squares_line(med), axis=1).max() <= ROW_FIT_TOLERANCE:
        return med.astype(np.float32)  # every row agrees with a line: no row is dominated by objects
    fit = _repeated_median_line(med)
    off = np.linalg.norm(med - fit, axis=1) > ROW_FIT_TOLERANCE  # (H,)
    return np.where(off[:, None], fit, med).astype(np.float32)


def _roll(img: np.ndarray, bg: np.ndarray, mask: np.ndarray) -> _Rolled:
    dy, dx = seam(mask.sum(axis=1) > 1), seam(mask.sum(axis=0) > 1)  # tolerate one stray pixel per line
    rolled = np.roll(mask, (-dy, -dx), axis=(0, 1))
    labels, _ = label_components(rolled)
    return _Rolled(np.roll(img, (-dy, -dx), axis=(0, 1)), np.roll(bg, -dy, axis=0), labels, dy, dx)


def nearest_color(rgb: np.ndarray) -> str:
    """Name of the palette color nearest (RGB distance) to `rgb` (3,)."""
    return list(COLORS)[int(np.argmin(np.linalg.norm(palette_array() - rgb[None, :], axis=1)))]


def _unmix(pix: np.ndarray, back: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit each pixel as back + a * (color - back), a in [0, 1], for every candidate color.

    pix, back: (P, 3); colors: (K, 3). Returns a (P, K) and the squared residuals (P, K).
    """
    d = colors[None, :, :] - back[:, None, :]  # (P, K, 3)
    e = (pix - back)[:, None, :]  # (P, 1, 3)
    a = np.clip((e * d).sum(axis=2) / np.maximum((d * d).sum(axis=2), 1.0), 0.0, 1.0)  # (P, K)
    return a, ((e - a[:, :, None] * d) ** 2).sum(axis=2)


def _object_color(img: np.ndarray, bg: np.ndarray, comp: np.ndarray) -> tuple[str, np.ndarray]:
    """Palette name and measured RGB (3,) of a component of a window img (h, w, 3) over background rows bg (h, 3).

    Every pixel is a mix of the background and the object color (anti-aliasing, blur), so the palette color
    whose mixes explain the pixels best wins; the measured color is the median of its well-covered pixels.
    """
    pix, back = img[comp], np.broadcast_to(bg[:, None, :], img.shape)[comp]  # (P, 3) each
    a, residual = _unmix(pix, back, palette_array())
    k = int(np.argmin(residual.sum(axis=0)))
    solid = a[:, k] >= 0.8
    rgb = np.median(pix[solid], axis=0) if solid.any() else palette_array()[k]
    return list(COLORS)[k], rgb


def coverage(img: np.ndarray, bg: np.ndarray, rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Coverage (h, w) in [0, 1] of an object of color `rgb` (3,) over background rows `bg` (h, 3).

    Each pixel of `img` (h, w, 3) is projected on the segment background -> object color (0 at the
    background, 1 at the object color); pixels outside the bool `region` (h, w) get 0. Area and centroid
    of this map match the rendered shape's (it is linear in the anti-aliased coverage).
    """
    direction = rgb[None, :] - bg  # (h, 3)
    norm2 = np.maximum((direction * direction).sum(axis=1), 1.0)  # (h,)
    f = ((img - bg[:, None, :]) * direction[:, None, :]).sum(axis=2) / norm2[:, None]  # (h, w)
    return np.clip(f, 0.0, 1.0) * region


def _paste(cover: np.ndarray, row: int, col: int, shape: tuple[int, int]) -> np.ndarray:
    """A zero array of `shape` (h, w) with `cover` (hc, wc) pasted at (row, col), clipped to the array."""
    out = np.zeros(shape, dtype=np.float32)
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + cover.shape[0], shape[0]), min(col + cover.shape[1], shape[1])
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = cover[r0 - row : r1 - row, c0 - col : c1 - col]
    return out


def box3(a: np.ndarray) -> np.ndarray:
    """3 x 3 box blur of a 2-D array (zero padding)."""
    rows = a.copy()
    rows[1:] += a[:-1]
    rows[:-1] += a[1:]
    out = rows.copy()
    out[:, 1:] += rows[:, :-1]
    out[:, :-1] += rows[:, 1:]
    return out / 9.0


def _half(v: float) -> float:
    """v rounded to half a pixel (fewer distinct cached templates)."""
    return round(v * 2) / 2


def shape_scores(cover: np.ndarray) -> dict[str, float]:
    """Soft IoU of a coverage window (h, w) with each shape, drawn sharp or blurred (the best of the levels).

    Each shape hypothesis is drawn with the size that gives the measured area and placed so that its own
    centroid falls on the measured centroid, so blur (which keeps area and centroid) does not bias it.
    """
    area = float(cover.sum())
    if area <= 0:
        return {s: 0.0 for s in SHAPES}
    cy = float(cover.sum(axis=1) @ (np.arange(cover.shape[0]) + 0.5)) / area
    cx = float(cover.sum(axis=0) @ (np.arange(cover.shape[1]) + 0.5)) / area
    scores = {}
    for name in SHAPES:
        fraction, dy = area_and_centroid(name)
        size = (area / fraction) ** 0.5
        sprite, row, col = placed_sprite(name, _half(size), _half(cx), _half(cy - dy * size))
        template = _paste(sprite, row, col, cover.shape)
        best = 0.0
        for _ in range(BLUR_LEVELS):  # sharp, blurred once, twice, ...
            best = max(best, _soft_iou(cover, template))
            template = box3(template)
        scores[name] = best
    return scores


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(float(np.maximum(a, b).sum()), 1e-6))


def classify_shape(cover: np.ndarray) -> str:
    """The shape whose template best matches the coverage window (h, w)."""
    scores = shape_scores(cover)
    return max(scores, key=lambda k: scores[k])


def _window(labels: np.ndarray, k: int) -> tuple[slice, slice]:
    rows, cols = np.nonzero(labels == k)
    h, w = labels.shape
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    return slice(max(r0 - 1, 0), min(r1 + 2, h)), slice(max(c0 - 1, 0), min(c1 + 2, w))


def _measure(rf: _Rolled, k: int, shapes: bool) -> Detection:
    """Detection for component k of a rolled frame, reported in the original frame's coordinates."""
    ys, xs = _window(rf.labels, k)
    lab, img, bg = rf.labels[ys, xs], rf.img[ys, xs], rf.bg[ys]
    comp = lab == k  # (h, w)
    name, rgb = _object_color(img, bg, comp)
    cover = coverage(img, bg, rgb, dilate3(comp) & (comp | (lab < 0)))  # (h, w)
    area = float(cover.sum())
    r, c = np.arange(cover.shape[0]) + 0.5, np.arange(cover.shape[1]) + 0.5
    height, width = rf.labels.shape
    cy = (float(cover.sum(axis=1) @ r) / max(area, 1e-6) + ys.start + rf.dy) % height
    cx = (float(cover.sum(axis=0) @ c) / max(area, 1e-6) + xs.start + rf.dx) % width
    bbox = _bbox(comp, ys.start + rf.dy, xs.start + rf.dx, height, width)
    touches = bbox[0] == 0 or bbox[1] == 0 or bbox[2] >= width or bbox[3] >= height
    shape = classify_shape(cover) if shapes else UNKNOWN
    return Detection(name, shape, cx, cy, round(area), bbox, touches)


def _bbox(comp: np.ndarray, row0: int, col0: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Half-open box (x0, y0, x1, y1) of a window mask whose top-left is at (row0, col0) in frame coordinates."""
    rows, cols = np.nonzero(comp)
    x0, y0 = (int(cols.min()) + col0) % width, (int(rows.min()) + row0) % height
    return x0, y0, x0 + int(cols.max() - cols.min()) + 1, y0 + int(rows.max() - rows.min()) + 1


def detect_objects(frame: np.ndarray, shapes: bool = True) -> list[Detection]:
    """Objects in one frame (H, W, 3) uint8 RGB, largest first. Raises InputError for a malformed frame.

    `shapes=False` skips shape classification (every shape is reported as "unknown"), about twice as fast;
    tracking uses it.
    """
    img = check_frame(frame)
    bg = background_rows(img)  # (H, 3)
    diff = img - bg[:, None, :]  # (H, W, 3)
    diff *= diff
    mask = diff[..., 0] + diff[..., 1] + diff[..., 2] > FG_THRESHOLD**2  # (H, W) squared RGB distance
    rf = _roll(img, bg, mask)
    counts = np.bincount(rf.labels[rf.labels >= 0], minlength=1)
    min_area = MIN_AREA * frame_scale(*mask.shape) ** 2
    found = [_measure(rf, int(k), shapes) for k in np.flatnonzero(counts >= min_area)]
    return sorted(found, key=lambda d: -d.area)


def detect_background(frame: np.ndarray) -> Background:
    """Best guess of the background: nearest palette colors of the top and bottom rows' background."""
    bg = background_rows(check_frame(frame))
    top, bottom = nearest_color(bg[0]), nearest_color(bg[-1])
    return Background.solid(top) if top == bottom else Background("gradient", top, bottom)
