"""Scores of generated frames against a prompt's attributes, read by the world's detector.

Frames are uint8 (T, H, W, 3). For each frame the detector's objects are searched for the prompted
color; when none has it, the largest object stands in (so a wrong color counts as a miss).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from framecast.world import Detection, detect_motion, detect_objects


@dataclass(frozen=True)
class ClipScore:
    """Per clip: does the majority color / shape and the detected motion match the prompt."""

    color: bool
    shape: bool
    motion: bool
    found: float  # share of frames with any object


def pick(dets: list[Detection], color: str) -> Detection | None:
    """The detection of the prompted color, else the largest one, else None."""
    for d in dets:
        if d.color == color:
            return d
    return dets[0] if dets else None


def _majority(values: list[str]) -> str | None:
    return Counter(values).most_common(1)[0][0] if values else None


def score_clip(frames: np.ndarray, color: str, shape: str, motion: str) -> ClipScore:
    """Majority color and shape over the frames, and the motion of the prompted object."""
    picked = [pick(detect_objects(f), color) for f in frames]
    seen = [d for d in picked if d is not None]
    whole = [d for d in seen if not d.touches_edge] or seen
    return ClipScore(
        color=_majority([d.color for d in seen]) == color,
        shape=_majority([d.shape for d in whole if d.color == color]) == shape,
        motion=detect_motion(frames, color=color) == motion,
        found=len(seen) / max(len(frames), 1),
    )


def frame_hits(frames: np.ndarray, color: str, shape: str) -> np.ndarray:
    """(T, 2) bool: per frame, whether an object of the prompted color is seen, and with the prompted shape."""
    out = np.zeros((len(frames), 2), dtype=bool)
    for i, f in enumerate(frames):
        dets = [d for d in detect_objects(f) if d.color == color]
        out[i, 0] = bool(dets)
        out[i, 1] = any(d.shape == shape for d in dets if not d.touches_edge) or any(d.shape == shape for d in dets)
    return out


def seam_flicker(frames: np.ndarray, frames_per_chunk: int) -> tuple[float, float]:
    """Mean absolute change (0..255) between consecutive frames inside chunks and across chunk seams."""
    diffs = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # (T - 1,)
    seam = (np.arange(1, len(frames)) % frames_per_chunk) == 0
    inside = float(diffs[~seam].mean()) if (~seam).any() else 0.0
    across = float(diffs[seam].mean()) if seam.any() else 0.0
    return inside, across
