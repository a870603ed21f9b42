"""Contact sheets: frames of a few clips in a grid, written as a PNG with numpy and zlib only.

A sheet has one row per clip and one column per sampled frame; each frame is enlarged by an integer
factor (nearest neighbour, so single pixels stay visible) and framed by a gray gap.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from framecast.errors import InputError

GAP = 2  # pixels of gray between tiles
GAP_COLOR = 128


def contact_sheet(clips: list[np.ndarray], every: int, columns: int, zoom: int = 2) -> np.ndarray:
    """A grid uint8 (rows * (h * zoom + GAP) + GAP, ..., 3): row i shows frames 0, every, 2 * every, ... of clip i.

    `clips` are uint8 (T, H, W, 3) of one frame size; a clip shorter than the grid leaves its tiles gray.
    """
    if not clips or every < 1 or columns < 1 or zoom < 1:
        raise InputError("contact_sheet needs clips, and every, columns and zoom of at least 1")
    h, w = clips[0].shape[1] * zoom, clips[0].shape[2] * zoom
    sheet = np.full((len(clips) * (h + GAP) + GAP, columns * (w + GAP) + GAP, 3), GAP_COLOR, np.uint8)
    for i, clip in enumerate(clips):
        for j, t in enumerate(range(0, min(len(clip), columns * every), every)):
            tile = clip[t].repeat(zoom, axis=0).repeat(zoom, axis=1)  # (h, w, 3)
            r, c = GAP + i * (h + GAP), GAP + j * (w + GAP)
            sheet[r : r + h, c : c + w] = tile
    return sheet


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 RGB image (H, W, 3) as an 8-bit PNG (no filtering, zlib level 6)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"write_png needs a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, width * 3)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
    Path(path).write_bytes(data + _chunk(b"IEND", b""))


def spread(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total) (all of them when total <= count)."""
    if total <= count:
        return list(range(total))
    return sorted({round(k * (total - 1) / (count - 1)) for k in range(count)}) if count > 1 else [0]


@dataclass
class ClipKeeper:
    """An `on_clip(index, case, frames)` hook that keeps the clips of the chosen indices."""

    picks: set[int]
    clips: dict[int, np.ndarray] = field(default_factory=dict)
    prompts: dict[int, str] = field(default_factory=dict)

    def __call__(self, index: int, case: object, frames: np.ndarray) -> None:
        if index in self.picks:
            self.clips[index] = frames
            self.prompts[index] = str(getattr(case, "prompt", ""))
