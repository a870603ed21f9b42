"""The similarity filter: an input chunk nearly identical to the last one the model saw skips the model.

The difference is the mean absolute difference of the two chunks (T, H, W, 3), pixels in [-1, 1]. A chunk
under `threshold` is skipped (its output is the stream's last output, re-emitted) unless `max_skips` chunks
in a row were skipped already; then it goes through the model and becomes the new reference. Comparing
with the last chunk that went through the model (not the last skipped one) means slow changes add up and
are never skipped for long. On the CPU side (numpy): no device sync.

`stochastic` (StreamDiffusion's way): a chunk under the threshold is skipped with probability 1 - d / threshold
(d its difference), so a nearly still input mostly skips and one near the threshold mostly runs; the draws come
from the filter's own generator (`seed`), so a stream repeats itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framecast.errors import InputError


@dataclass(frozen=True)
class SimilarityConfig:
    enabled: bool = True
    threshold: float = 0.01  # mean |difference|, pixels in [-1, 1] (about 1.3 levels of 255)
    max_skips: int = 2  # most chunks in a row that skip the model
    stochastic: bool = False  # skip with probability 1 - difference / threshold instead of always under it
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.threshold >= 0.0 or self.max_skips < 0:
            raise InputError(f"threshold and max_skips must be >= 0, got {self.threshold}, {self.max_skips}")


def chunk_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two chunks (T, H, W, 3) uint8 in units of pixels in [-1, 1]."""
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)))) / 127.5


class SimilarityFilter:
    """Per stream: the reference chunk (the last one the model saw) and the current run of skips."""

    def __init__(self, cfg: SimilarityConfig | None = None) -> None:
        self.cfg = cfg or SimilarityConfig()
        self.reference: np.ndarray | None = None
        self.skips = 0
        self.rng = np.random.default_rng(self.cfg.seed)

    def skip(self, chunk: np.ndarray, allowed: bool = True) -> bool:
        """True if this chunk skips the model; False means it goes through (and is the new reference).
        `allowed=False` (nothing to re-emit yet) sends it through whatever it looks like."""
        cfg, ref = self.cfg, self.reference
        if not (allowed and cfg.enabled and self.skips < cfg.max_skips and ref is not None):
            similar = False
        else:
            similar = ref.shape == chunk.shape and self._similar(chunk_difference(chunk, ref))
        if similar:
            self.skips += 1
            return True
        self.reference, self.skips = chunk, 0
        return False

    def _similar(self, d: float) -> bool:
        if not self.cfg.stochastic:
            return d < self.cfg.threshold
        return d < self.cfg.threshold and bool(self.rng.random() >= d / self.cfg.threshold)
