"""Motion-aware noise (docs/v2v.md; techniques.md section 2): the SDEdit strength of each input chunk.

    m      = RMS of the difference of consecutive input frames, pixels in [-1, 1]
    n      = clip(m / scale, 0, 1)
    target = high - (high - low) * n                 more motion, less noise: the structure is kept
    s_t    = s_{t-1} + ema * (target - s_{t-1})       the first chunk takes its target

Off (`enabled=False`), every chunk gets `fixed`. `step` is a pure function of the config, the state and
the measured motion; `MotionController` only keeps the state between chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framecast.errors import InputError


@dataclass(frozen=True)
class MotionConfig:
    """enabled: the controller on; off, every chunk is noised to `fixed`.
    low, high:  strengths at full motion and at no motion (0 < low <= high <= 1).
    scale:      RMS frame difference (pixels in [-1, 1]) that counts as full motion.
    ema:        weight of the newest target in the exponential moving average (1: no smoothing).
    """

    enabled: bool = True
    low: float = 0.5
    high: float = 0.65
    scale: float = 0.2
    ema: float = 0.5
    fixed: float = 0.6

    def __post_init__(self) -> None:
        if not 0.0 < self.low <= self.high <= 1.0:
            raise InputError(f"strength bounds must satisfy 0 < low <= high <= 1, got {self.low}, {self.high}")
        if not 0.0 < self.fixed <= 1.0:
            raise InputError(f"strength must be in (0, 1], got {self.fixed}")
        if not self.scale > 0.0 or not 0.0 < self.ema <= 1.0:
            raise InputError(f"scale must be positive and ema in (0, 1], got {self.scale}, {self.ema}")


@dataclass(frozen=True)
class MotionState:
    strength: float | None = None  # the smoothed strength of the last chunk; None before the first
    motion: float = 0.0  # the last measured RMS difference


def frame_motion(frames: np.ndarray, previous: np.ndarray | None = None) -> float:
    """RMS difference of consecutive frames of a chunk (T, H, W, 3) uint8, in units of pixels in [-1, 1];
    `previous` (H, W, 3), the frame before the chunk, joins the first pair. 0 with a single frame."""
    clip = frames if previous is None else np.concatenate([previous[None], frames])
    if len(clip) < 2:
        return 0.0
    d = np.diff(clip.astype(np.float32), axis=0) / 127.5  # (T - 1, H, W, 3) in [-2, 2]
    return float(np.sqrt(np.mean(d * d)))


def target_strength(cfg: MotionConfig, motion: float) -> float:
    """The strength a chunk with this motion asks for, before smoothing: in [low, high], non-increasing."""
    n = min(max(motion / cfg.scale, 0.0), 1.0)
    return cfg.high - (cfg.high - cfg.low) * n


def step(cfg: MotionConfig, state: MotionState, motion: float) -> MotionState:
    """The state after a chunk with this motion; its `strength` is the chunk's."""
    if not cfg.enabled:
        return MotionState(cfg.fixed, motion)
    target = target_strength(cfg, motion)
    prev = state.strength
    return MotionState(target if prev is None else prev + cfg.ema * (target - prev), motion)


class MotionController:
    """The controller of one stream: its config and state; `update(chunk)` gives the chunk's strength."""

    def __init__(self, cfg: MotionConfig | None = None) -> None:
        self.cfg = cfg or MotionConfig()
        self.state = MotionState()
        self._last: np.ndarray | None = None  # the last frame seen, the start of the next difference

    def update(self, chunk: np.ndarray) -> float:
        """Strength of an input chunk (T, H, W, 3) uint8, measured against the frames before it."""
        self.state = step(self.cfg, self.state, frame_motion(chunk, self._last))
        self._last = chunk[-1]
        assert self.state.strength is not None
        return self.state.strength

    def reset(self) -> None:
        self.state, self._last = MotionState(), None
