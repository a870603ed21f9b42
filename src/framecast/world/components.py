"""Numpy-only binary image helpers: connected components, 3 x 3 dilation and erosion, a wrap-free seam.

Masks are bool (H, W). Labelling uses 4-connectivity and union-find with pointer jumping, vectorized over
all foreground edges, so it takes a handful of numpy passes whatever the shapes look like.
"""

from __future__ import annotations

import numpy as np


def _edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat index pairs (a, b) of 4-adjacent foreground pixels (right and down neighbours)."""
    width = mask.shape[1]
    flat = np.arange(mask.size).reshape(mask.shape)
    right = mask[:, :-1] & mask[:, 1:]
    down = mask[:-1, :] & mask[1:, :]
    a = np.concatenate([flat[:, :-1][right], flat[:-1, :][down]])
    return a, np.concatenate([a[: int(right.sum())] + 1, a[int(right.sum()) :] + width])


def _compress(parent: np.ndarray) -> np.ndarray:
    """Pointer jumping until every entry points at its root."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 4-connected components of a bool mask (H, W).

    Returns labels int64 (H, W), -1 on background and 0 .. n - 1 on the n components (numbered in raster
    order of their first pixel), and n.
    """
    parent = np.arange(mask.size)
    a, b = _edges(mask)
    while a.size:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            break
        lo, hi = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        np.minimum.at(parent, hi, lo)  # hook each higher root under a lower one
        parent = _compress(parent)
    flat_mask = mask.ravel()
    is_root = flat_mask & (parent == np.arange(mask.size))  # a root is its component's first pixel
    ids = np.cumsum(is_root) - 1  # (N,) component number of each root, in raster order
    labels = np.where(flat_mask, ids[parent], -1)
    return labels.reshape(mask.shape), int(is_root.sum())


def dilate3(mask: np.ndarray) -> np.ndarray:
    """3 x 3 binary dilation of a bool mask (H, W) (no wrap at the edges)."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    rows = out.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def erode3(mask: np.ndarray) -> np.ndarray:
    """3 x 3 binary erosion of a bool mask (H, W); pixels outside the array count as background."""
    return ~dilate3(np.pad(~mask, 1, constant_values=True))[1:-1, 1:-1]


def seam(occupied: np.ndarray) -> int:
    """Index of the free line farthest (circularly) from any occupied one; 0 if all are occupied or all free.

    `occupied` is bool (N,) over the rows or the columns of a frame. Rolling the frame so that this line
    comes first puts no object across the frame edge (objects that wrap around become whole again).
    """
    busy = np.flatnonzero(occupied)
    if busy.size in (0, occupied.size):
        return 0
    n = occupied.size
    d = np.abs(np.arange(n)[:, None] - busy[None, :])  # (N, B)
    return int(np.argmax(np.minimum(d, n - d).min(axis=1)))
