"""Conversions between engine frames and user-facing frames.

Engine frames: float tensors (B, 3, T, H, W) in [-1, 1].
User-facing frames: numpy uint8 arrays (H, W, 3), stacked as (T, H, W, 3) for a clip, values in [0, 255].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from framecast.errors import InputError


def frames_to_uint8(frames: Tensor) -> np.ndarray:
    """Frames (1, 3, T, H, W) or (3, T, H, W) float in [-1, 1] -> uint8 array (T, H, W, 3) in [0, 255].

    Values outside [-1, 1] are clamped.
    """
    if not isinstance(frames, Tensor) or frames.dim() not in (4, 5):
        got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise InputError(f"frames must be a tensor (1, 3, T, H, W) or (3, T, H, W), got {got}")
    x = frames[0] if frames.dim() == 5 else frames  # (3, T, H, W)
    if frames.dim() == 5 and frames.shape[0] != 1:
        raise InputError(f"frames_to_uint8 takes one clip (1, 3, T, H, W), got batch {frames.shape[0]}")
    if x.shape[0] != 3:
        raise InputError(f"frames must have 3 channels before T (3, T, H, W), got {x.shape[0]}")
    x = x.detach().to("cpu", torch.float32).clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8)  # (3, T, H, W) in [0, 255]
    return x.permute(1, 2, 3, 0).contiguous().numpy()  # (T, H, W, 3)


def uint8_to_frames(
    frames: np.ndarray, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uint8 array (T, H, W, 3) or one frame (H, W, 3) in [0, 255] -> tensor (1, 3, T, H, W) in [-1, 1]."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        got = frames.dtype if isinstance(frames, np.ndarray) else type(frames).__name__
        raise InputError(f"frames must be a numpy uint8 array (T, H, W, 3), got {got}")
    arr = frames[None] if frames.ndim == 3 else frames  # (T, H, W, 3)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise InputError(f"frames must have shape (T, H, W, 3) or (H, W, 3), got {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device)  # (T, H, W, 3) uint8
    x = x.permute(3, 0, 1, 2).unsqueeze(0).to(dtype)  # (1, 3, T, H, W)
    return x / 127.5 - 1
