"""Reading a frame back as a viewer sees it: objects, fragments, off-color fringes, background.

Builds on the detector (detect.py) and uses its row background and foreground threshold. For one frame
(H, W, 3) uint8:

* objects: `detect_objects` (foreground components of at least `MIN_AREA` px, 16 at 64 px);
* fragments: foreground components of `FRAGMENT_AREA` (4 px at 64 px) up to `MIN_AREA`, each with whether
  it lies within `GHOST_REACH` px of an object (a ghost) or away from every object (a speck);
* fringe: per object, its rim pixels of another color (`off_color_pixels`): no mix of the background and
  the object's own color, e.g. a yellow crescent behind a black circle, a dark halo around a white triangle;
* background: the nearest palette colors of the row background at the top and the bottom (mean of 3 rows
  each); a solid background when both agree.

Areas and distances scale with `scale^2` and `scale` (`frame_scale`). The world's own renders have no
fragments or fringes (tests/test_eval_viewer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framecast.world.components import dilate3, label_components, seam
from framecast.world.detect import (
    FG_THRESHOLD,
    MIN_AREA,
    Detection,
    background_rows,
    check_frame,
    detect_objects,
    nearest_color,
)
from framecast.world.scene import Background, frame_scale
from framecast.world.vocab import MIN_CONTRAST

FRAGMENT_AREA = 4.0  # smallest fragment counted, px at 64 px (scaled by scale^2); smaller ones are noise
GHOST_REACH = 3  # px at 64 px: a fragment this close to an object is that object's ghost
OFF_COLOR = 0.75 * MIN_CONTRAST  # distance (RGB) from the background -> object color segment: another color
EDGE_ROWS = 3  # rows averaged at the top and the bottom to read the background's ends


@dataclass(frozen=True)
class FrameReading:
    """What a viewer sees in one frame.

    `ghosts` / `specks`: fragments near an object / away from every object; `fringe`: off-color rim pixels
    of the object with the most; `background`: read from the frame.
    """

    objects: tuple[Detection, ...]
    ghosts: int
    specks: int
    fringe: int
    background: Background


def read_background(rows: np.ndarray) -> Background:
    """Background from the row background (H, 3): nearest palette colors of its top and bottom `EDGE_ROWS` rows."""
    top, bottom = nearest_color(rows[:EDGE_ROWS].mean(axis=0)), nearest_color(rows[-EDGE_ROWS:].mean(axis=0))
    return Background.solid(top) if top == bottom else Background("gradient", top, bottom)


def _rolled_labels(mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Components of a mask (H, W) rolled so that no component crosses the frame edge; labels, dy, dx."""
    dy, dx = seam(mask.sum(axis=1) > 1), seam(mask.sum(axis=0) > 1)
    labels, _ = label_components(np.roll(mask, (-dy, -dx), axis=(0, 1)))
    return labels, dy, dx


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        mask = dilate3(mask)
    return mask


def off_color_pixels(pix: np.ndarray, back: np.ndarray, dist: np.ndarray) -> int:
    """Fringe pixels of one component: pixels (P, 3) over their background (P, 3) that are no mix of it and the
    object's color (farther than `OFF_COLOR` from that segment) and nearer the background than the object
    (projected coverage under 0.5): another color at the object's rim, not a shade inside it.

    The object's color is the median of the component's farther half from the background (`dist` (P,)).
    """
    core = pix[dist >= np.median(dist)]
    d = np.median(core, axis=0)[None, :] - back  # (P, 3): background -> object color
    e = pix - back
    a = np.clip((e * d).sum(axis=1) / np.maximum((d * d).sum(axis=1), 1.0), 0.0, 1.0)  # (P,)
    off = np.linalg.norm(e - a[:, None] * d, axis=1) > OFF_COLOR
    return int((off & (a < 0.5)).sum())


def _fringe(img: np.ndarray, bg: np.ndarray, dist: np.ndarray, labels: np.ndarray, big: np.ndarray) -> int:
    """The most off-color pixels of any big component (labels in `big`); arrays rolled alike."""
    back = np.broadcast_to(bg[:, None, :], img.shape)
    return max((off_color_pixels(img[labels == k], back[labels == k], dist[labels == k]) for k in big), default=0)


def _fragments(labels: np.ndarray, big: np.ndarray, scale: float) -> tuple[int, int]:
    """(ghosts, specks): fragments within `GHOST_REACH` of a big component, and the others."""
    counts = np.bincount(labels[labels >= 0], minlength=1)
    small = np.flatnonzero((counts >= FRAGMENT_AREA * scale**2) & (counts < MIN_AREA * scale**2))
    near = _grow(np.isin(labels, big), max(1, round(GHOST_REACH * scale)))
    ghost = np.array([near[labels == k].any() for k in small], dtype=bool)
    return int(ghost.sum()), int((~ghost).sum())


def read_frame(frame: np.ndarray) -> FrameReading:
    """Read one frame (H, W, 3) uint8 as a viewer would (see the module docstring)."""
    img = check_frame(frame)
    bg = background_rows(img)  # (H, 3)
    background = read_background(bg)
    dist = np.linalg.norm(img - bg[:, None, :], axis=2)  # (H, W) distance from the row background
    labels, dy, dx = _rolled_labels(dist > FG_THRESHOLD)  # labels of the rolled frame
    img, dist, bg = np.roll(img, (-dy, -dx), axis=(0, 1)), np.roll(dist, (-dy, -dx), axis=(0, 1)), np.roll(bg, -dy, 0)
    scale = frame_scale(*labels.shape)
    counts = np.bincount(labels[labels >= 0], minlength=1)
    big = np.flatnonzero(counts >= MIN_AREA * scale**2)
    ghosts, specks = _fragments(labels, big, scale)
    return FrameReading(
        objects=tuple(detect_objects(frame)),
        ghosts=ghosts,
        specks=specks,
        fringe=_fringe(img, bg, dist, labels, big),
        background=background,
    )
