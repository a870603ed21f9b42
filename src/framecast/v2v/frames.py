"""Input frames at the edge of video to video: checked, converted to RGB and fitted to the model's frame size.

Frames are numpy uint8 (H, W, 3) RGB in [0, 255]. Gray (H, W) and RGBA (H, W, 4) frames are converted; any
other layout is an `InputError` naming what arrived. A frame of another size is centre-cropped to the
model's aspect ratio and resized (bilinear, antialiased), so odd sizes such as 63 x 65 or 480 x 640 work.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from framecast.errors import InputError

MIN_SIDE = 8  # smaller frames carry too little to resize from


def as_rgb(frame: object, index: int | None = None) -> np.ndarray:
    """A frame as uint8 (H, W, 3): RGB as is, gray repeated, RGBA without alpha; `InputError` otherwise."""
    where = "" if index is None else f" {index}"
    if not isinstance(frame, np.ndarray):
        raise InputError(f"input frame{where} must be a numpy uint8 array (H, W, 3), got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise InputError(f"input frame{where} must be uint8 RGB in [0, 255], got dtype {frame.dtype}")
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise InputError(f"input frame{where} must have shape (H, W, 3), (H, W, 4) or (H, W), got {frame.shape}")
    if min(frame.shape[:2]) < MIN_SIDE:
        h, w = frame.shape[:2]
        raise InputError(f"input frame{where} is {h}x{w}; frames need at least {MIN_SIDE} px a side")
    return frame


def _crop_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centred crop of a height x width frame with the aspect ratio of `size`."""
    th, tw = size
    if height * tw > width * th:  # too tall: crop rows
        h = max(1, round(width * th / tw))
        return (height - h) // 2, 0, h, width
    w = max(1, round(height * tw / th))
    return 0, (width - w) // 2, height, w


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 frame (H, W, 3) at `size` = (h, w): unchanged when it has that size already, else
    centre-cropped to the aspect ratio and resized."""
    if frame.shape[:2] == size:
        return frame
    top, left, h, w = _crop_box(frame.shape[0], frame.shape[1], size)
    x = torch.from_numpy(np.array(frame[top : top + h, left : left + w]))  # a writable copy
    x = x.permute(2, 0, 1)[None].float()  # (1, 3, h, w)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def fit_chunk(frames: list[np.ndarray], size: tuple[int, int], count: int) -> np.ndarray:
    """Frames of one chunk -> uint8 (count, h, w, 3): each fitted to `size`; a short chunk (the end of a
    finite input) is padded by repeating its last frame."""
    if not frames:
        raise InputError("an input chunk needs at least one frame")
    fitted = [fit_frame(f, size) for f in frames]
    fitted += [fitted[-1]] * (count - len(fitted))
    return np.stack(fitted)
