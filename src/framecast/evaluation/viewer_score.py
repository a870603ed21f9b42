"""Scoring one clip frame by frame against its prompt, as a viewer sees it (`read_clip`).

Every frame (uint8 (H, W, 3)) is read by `framecast.world.readback.read_frame`. A prompted object is
matched, per frame, to the largest detected object of its color (the world's objects have distinct colors).
Per frame:

* ghost: a fragment (4-15 px) within `GHOST_REACH` px of an object, or an unmatched object of a color no
  prompted object has within that reach of a matched one (a trailing piece in another color); such a piece
  is a ghost, not an object;
* extra: any other object (16 px or more) that no prompted object matched (a copy, a second blob of the
  prompted color, a far object of another color); missing: a prompted object unmatched;
* exact: every prompted object matched and nothing extra;
* fringe: an object with at least `FRINGE_PIXELS` off-color rim pixels (readback.off_color_pixels);
* speck: a fragment away from every object;
* clean: exact and no ghost, fringe or speck;
* background: read background (solid, or gradient ends) equals the prompted one;
* per prompted object: color (matched), shape (matched with the prompted shape).

Motion per prompted object: its track (nearest detection of its color to the last position) classified in
windows of `window` frames. Smoothness: centroid steps of moving objects and mean frame change, inside
chunks and across chunk seams (a step from frame i to i + 1 crosses a seam when (i + 1) is a multiple of
the chunk length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framecast.evaluation.scoring import seam_flicker
from framecast.world import Background, Detection, ObjectSpec
from framecast.world.motion import classify_motion, track_detections
from framecast.world.readback import GHOST_REACH, FrameReading, read_frame
from framecast.world.scene import frame_scale

FRINGE_PIXELS = 10.0  # off-color rim pixels of one object (at 64 px, scaled by scale^2) that make a fringe
FRAME_FLAGS = ("exact", "extra", "missing", "ghost", "fringe", "speck", "clean", "background")


@dataclass
class ClipReading:
    """One clip read against its prompt. `flags[name]`: bool (T,) per name of `FRAME_FLAGS`;
    color / shape: bool (N, T) per prompted object; motion: bool (N, windows); steps / change: (inside, seam)
    sums and counts of centroid steps (moving objects) and the mean frame change inside chunks and at seams."""

    flags: dict[str, np.ndarray]
    color: np.ndarray
    shape: np.ndarray
    motion: np.ndarray
    steps: tuple[float, int, float, int]
    change: tuple[float, float]


def _match(objects: tuple[Detection, ...], prompted: tuple[ObjectSpec, ...]) -> list[Detection | None]:
    """Per prompted object, the largest detection of its color (detections come largest first)."""
    return [next((d for d in objects if d.color == p.color), None) for p in prompted]


def _gap(a: Detection, b: Detection) -> float:
    """Gap in pixels between two detections' boxes (0 when they touch or overlap)."""
    return float(max(a.bbox[0] - b.bbox[2], b.bbox[0] - a.bbox[2], a.bbox[1] - b.bbox[3], b.bbox[1] - a.bbox[3], 0))


def _ghost_objects(unmatched: list[Detection], found: list[Detection], prompted: tuple[ObjectSpec, ...],
                   reach: float) -> list[Detection]:
    """Unmatched objects of a color no prompted object has, within `reach` px of a matched object: ghosts."""
    colors = {p.color for p in prompted}
    return [d for d in unmatched if d.color not in colors and any(_gap(d, m) <= reach for m in found)]


def _frame_flags(r: FrameReading, prompted: tuple[ObjectSpec, ...], bg: Background, scale: float) -> dict[str, bool]:
    matched = _match(r.objects, prompted)
    found = [m for m in matched if m is not None]
    unmatched = [d for d in r.objects if all(d is not m for m in found)]
    ghosts = _ghost_objects(unmatched, found, prompted, GHOST_REACH * scale)
    extras = [d for d in unmatched if all(d is not g for g in ghosts)]
    flags = {
        "exact": not extras and len(found) == len(prompted),
        "extra": bool(extras),
        "missing": len(found) < len(prompted),
        "ghost": r.ghosts > 0 or bool(ghosts),
        "fringe": r.fringe >= FRINGE_PIXELS * scale**2,
        "speck": r.specks > 0,
        "background": r.background == bg,
    }
    flags["clean"] = flags["exact"] and not (flags["ghost"] or flags["fringe"] or flags["speck"])
    return flags


def _windows(track: np.ndarray, motion: str, window: int, height: int, width: int) -> list[bool]:
    """Motion right in each whole window of `window` frames of a track (T, 2)."""
    starts = range(0, len(track) - window + 1, window)
    return [classify_motion(track[s : s + window], height, width) == motion for s in starts]


def _steps(tracks: list[np.ndarray], fpc: int, height: int, width: int) -> tuple[float, int, float, int]:
    """(sum, count) of centroid step lengths inside chunks, then across seams, over tracks (T, 2)."""
    sums = np.zeros(4)
    size = np.array([width, height], dtype=np.float64)
    for track in tracks:
        d = (np.diff(track, axis=0) + size / 2) % size - size / 2  # (T - 1, 2), the short way around
        ok = np.asarray(np.isfinite(d).all(axis=1) & (np.abs(d) <= size / 4).all(axis=1))  # found in both, no jump
        at_seam = (np.arange(1, len(track)) % fpc) == 0
        length = np.linalg.norm(np.where(ok[:, None], d, 0.0), axis=1)  # (T - 1,)
        sums += [length[~at_seam].sum(), (ok & ~at_seam).sum(), length[at_seam].sum(), (ok & at_seam).sum()]
    return float(sums[0]), int(sums[1]), float(sums[2]), int(sums[3])


def _attributes(
    matched: list[list[Detection | None]], prompted: tuple[ObjectSpec, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """color, shape: bool (N, T): per prompted object and frame, matched at all, and with the prompted shape."""
    color = np.zeros((len(prompted), len(matched)), dtype=bool)
    shape = np.zeros_like(color)
    for t, frame in enumerate(matched):
        for i, (m, p) in enumerate(zip(frame, prompted, strict=True)):
            color[i, t], shape[i, t] = m is not None, m is not None and m.shape == p.shape
    return color, shape


def _motion(readings: list[FrameReading], prompted: tuple[ObjectSpec, ...], fpc: int, window: int, height: int,
            width: int) -> tuple[np.ndarray, tuple[float, int, float, int]]:
    """Motion right per prompted object and window (N, windows), and the centroid steps of moving objects."""
    dets = [list(r.objects) for r in readings]
    tracks = [track_detections(dets, height, width, color=p.color) for p in prompted]
    motion = [_windows(t, p.motion, window, height, width) for t, p in zip(tracks, prompted, strict=True)]
    moving = [t for t, p in zip(tracks, prompted, strict=True) if p.motion != "still"]
    return np.array(motion, dtype=bool).reshape(len(prompted), -1), _steps(moving, fpc, height, width)


def read_clip(
    frames: np.ndarray, prompted: tuple[ObjectSpec, ...], bg: Background, fpc: int, window: int
) -> ClipReading:
    """Read a clip (T, H, W, 3) uint8 against its prompted objects and background (see the module docstring)."""
    _, height, width, _ = frames.shape
    scale = frame_scale(height, width)
    readings = [read_frame(f) for f in frames]
    per_frame = [_frame_flags(r, prompted, bg, scale) for r in readings]
    flags = {k: np.array([f[k] for f in per_frame], dtype=bool) for k in FRAME_FLAGS}
    color, shape = _attributes([_match(r.objects, prompted) for r in readings], prompted)
    motion, steps = _motion(readings, prompted, fpc, window, height, width)
    return ClipReading(flags, color, shape, motion, steps, seam_flicker(frames, fpc))
