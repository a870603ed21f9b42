"""Tracking objects through a clip (T, H, W, 3) uint8 and classifying their motion.

Per-frame displacements are taken modulo the frame size (an object wrapping from the left edge to the
right one moved a little to the left, not across the frame); displacements still larger than a quarter
of the frame are misdetections and ignored. With a = median |dx|, b = median |dy| over the clip:
"still" if max(a, b) < `STILL_SPEED` * scale, "bounce" if min(a, b) / max(a, b) > `BOUNCE_RATIO`
(a diagonal), else the dominant axis and the sign of its mean displacement: left/right/up/down.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from framecast.errors import InputError
from framecast.world.detect import UNKNOWN, Detection, detect_objects
from framecast.world.scene import frame_scale

STILL_SPEED = 0.25  # px/frame at 64 px; world speeds are >= 0.6, bounce components >= 0.34
BOUNCE_RATIO = 0.4  # minor / major median speed; bounce angles are 35-55 degrees (ratio >= 0.7)


def check_clip(frames: np.ndarray) -> np.ndarray:
    """Validate a clip: uint8 (T, H, W, 3) with T >= 1. Returns it unchanged."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise InputError(f"frames must be a numpy uint8 array (T, H, W, 3), got {got}")
    if frames.shape[0] < 1:
        raise InputError("frames must hold at least one frame")
    return frames


def detect_clip(frames: np.ndarray, shapes: bool = True) -> list[list[Detection]]:
    """Detections of every frame of a clip (T, H, W, 3) uint8; see `detect_objects`."""
    return [detect_objects(f, shapes=shapes) for f in check_clip(frames)]


def _main_color(detections: list[list[Detection]]) -> str | None:
    """Most frequent color of the largest detection across frames (None when nothing was found)."""
    votes = Counter(dets[0].color for dets in detections if dets)
    return votes.most_common(1)[0][0] if votes else None


def _circular_gap(a: Detection, p: tuple[float, float], height: int, width: int) -> float:
    """Distance from a detection to point p = (x, y), the shortest way around the frame edges."""
    dx, dy = abs(a.x - p[0]) % width, abs(a.y - p[1]) % height
    return float(np.hypot(min(dx, width - dx), min(dy, height - dy)))


def _nearest(cands: list[Detection], p: tuple[float, float], height: int, width: int) -> Detection:
    return min(cands, key=lambda d: _circular_gap(d, p, height, width))


def track_detections(
    detections: list[list[Detection]], height: int, width: int, color: str | None = None, shape: str | None = None
) -> np.ndarray:
    """Positions (T, 2) as (x, y) of one object through per-frame detections; NaN where it is not found.

    The object is the one with the given color and/or shape; with neither, the color of the largest
    detection (majority over frames). With several candidates in a frame, the one nearest to the last
    position is taken (the largest at the start).
    """
    if color is None and shape is None:
        color = _main_color(detections)
    out = np.full((len(detections), 2), np.nan)
    last: tuple[float, float] | None = None
    for t, dets in enumerate(detections):
        cands = [d for d in dets if (color is None or d.color == color) and (shape is None or d.shape == shape)]
        if not cands:
            continue
        pick = cands[0] if last is None else _nearest(cands, last, height, width)
        last = (pick.x, pick.y)
        out[t] = last
    return out


def track(frames: np.ndarray, color: str | None = None, shape: str | None = None) -> np.ndarray:
    """Positions (T, 2) as (x, y) in pixels of one object through a clip (T, H, W, 3) uint8; NaN where not found.

    See `track_detections` for which object is followed.
    """
    dets = detect_clip(frames, shapes=shape is not None)
    return track_detections(dets, frames.shape[1], frames.shape[2], color, shape)


def displacements(positions: np.ndarray, height: int, width: int) -> np.ndarray:
    """Valid per-frame displacements (N, 2) as (dx, dy) of positions (T, 2), wrapped and with jumps removed."""
    d = np.diff(positions, axis=0)  # (T-1, 2)
    size = np.array([width, height], dtype=np.float64)
    d = (d + size / 2) % size - size / 2  # shortest way around the frame
    ok = np.isfinite(d).all(axis=1) & (np.abs(d) <= size / 4).all(axis=1)
    return d[ok]


def classify_motion(positions: np.ndarray, height: int, width: int) -> str:
    """Motion name of a track (T, 2) in a height x width frame; "unknown" with fewer than 2 valid steps."""
    d = displacements(positions, height, width)
    if len(d) < 2:
        return UNKNOWN
    a, b = np.median(np.abs(d), axis=0)  # typical |dx|, |dy|
    major, minor = max(a, b), min(a, b)
    if major < STILL_SPEED * frame_scale(height, width):
        return "still"
    if minor / major > BOUNCE_RATIO:
        return "bounce"
    if a >= b:
        return "right" if d[:, 0].mean() > 0 else "left"
    return "down" if d[:, 1].mean() > 0 else "up"


def detect_motion(frames: np.ndarray, color: str | None = None, shape: str | None = None) -> str:
    """Motion ("left", ..., "bounce", or "unknown") of one object in a clip (T, H, W, 3) uint8, T >= 2.

    The object is chosen as in `track_detections`.
    """
    if check_clip(frames).shape[0] < 2:
        raise InputError(f"detect_motion needs at least 2 frames, got {frames.shape[0]}")
    return classify_motion(track(frames, color, shape), frames.shape[1], frames.shape[2])


def describe(frames: np.ndarray) -> list[dict[str, str]]:
    """Objects of a clip (T, H, W, 3) uint8, T >= 2: [{"color", "shape", "motion"}], largest first.

    An object is a color seen in at least half of the frames; its shape is the majority vote over frames.
    """
    dets = detect_clip(frames)
    height, width = frames.shape[1], frames.shape[2]
    seen: Counter[str] = Counter()
    area: Counter[str] = Counter()
    for frame_dets in dets:
        seen.update({d.color for d in frame_dets})
        area.update({d.color: d.area for d in frame_dets})
    colors = sorted((c for c, n in seen.items() if 2 * n >= len(dets)), key=lambda c: -area[c])
    out = []
    for color in colors:
        shape = Counter(d.shape for f in dets for d in f if d.color == color).most_common(1)[0][0]
        motion = classify_motion(track_detections(dets, height, width, color), height, width)
        out.append({"color": color, "shape": shape, "motion": motion})
    return out
