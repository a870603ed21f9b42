"""Measuring the detector on rendered (optionally degraded) clips of random scenes.

`measure_detector` is what the tests assert on and what docs/world.md reports:

    python -c "from framecast.world.accuracy import measure_detector as m; print(m(2000, noise_sigma=8, blur=True))"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framecast.world.detect import Detection, detect_objects
from framecast.world.motion import classify_motion, detect_clip, track_detections
from framecast.world.render import render
from framecast.world.sample import sample_scene
from framecast.world.scene import ObjectSpec, Scene, object_state


def box_blur3(frames: np.ndarray) -> np.ndarray:
    """3 x 3 box blur of float frames (..., H, W, C) with edge replication."""
    pad = [(0, 0)] * (frames.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    p = np.pad(frames, pad, mode="edge")
    h, w = frames.shape[-3], frames.shape[-2]
    out = np.zeros(frames.shape, dtype=np.float32)
    for i in range(3):
        for j in range(3):
            out += p[..., i : i + h, j : j + w, :]
    return out / 9.0


def degrade(frames: np.ndarray, rng: np.random.Generator, noise_sigma: float = 0.0, blur: bool = False) -> np.ndarray:
    """Blur (3 x 3 box, optional) then add Gaussian noise (sigma in levels of 255) to uint8 frames (..., H, W, 3)."""
    x = frames.astype(np.float32)
    if blur:
        x = box_blur3(x)
    if noise_sigma > 0:
        x = x + rng.normal(0.0, noise_sigma, x.shape).astype(np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass
class Tally:
    """Counts of correct answers over objects (color, shape) and object clips (motion)."""

    objects: int = 0
    color: int = 0
    shape: int = 0
    both: int = 0
    tracks: int = 0
    motion: int = 0

    def rates(self) -> dict[str, float]:
        """Fractions correct, plus the counts they are over."""
        o, t = max(self.objects, 1), max(self.tracks, 1)
        return {
            "color": self.color / o,
            "shape": self.shape / o,
            "color_and_shape": self.both / o,
            "motion": self.motion / t,
            "objects": float(self.objects),
            "tracks": float(self.tracks),
        }


def fully_visible(obj: ObjectSpec, scene: Scene, frame_index: int) -> bool:
    """True when the object's box lies inside the frame at `frame_index` (not cut by or wrapping over an edge)."""
    x, y = object_state(obj, frame_index)
    half = obj.size / 2
    return half <= x <= scene.width - half and half <= y <= scene.height - half


def _match(obj: ObjectSpec, scene: Scene, frame_index: int, dets: list[Detection]) -> Detection | None:
    """The detection whose centroid lies within a third of the object's size of the object's centroid."""
    x, y = object_state(obj, frame_index)
    for d in dets:
        dx, dy = abs(d.x - x) % scene.width, abs(d.y - y) % scene.height
        if np.hypot(min(dx, scene.width - dx), min(dy, scene.height - dy)) < obj.size / 3:
            return d
    return None


def _score_frame(tally: Tally, scene: Scene, frame_index: int, frame: np.ndarray) -> None:
    dets = detect_objects(frame)
    for obj in scene.objects:
        if not fully_visible(obj, scene, frame_index):
            continue
        d = _match(obj, scene, frame_index, dets)
        tally.objects += 1
        tally.color += d is not None and d.color == obj.color
        tally.shape += d is not None and d.shape == obj.shape
        tally.both += d is not None and d.color == obj.color and d.shape == obj.shape


def _score_clip(tally: Tally, scene: Scene, clip: np.ndarray) -> None:
    dets = detect_clip(clip, shapes=False)
    for obj in scene.objects:
        positions = track_detections(dets, scene.height, scene.width, color=obj.color)
        tally.tracks += 1
        tally.motion += classify_motion(positions, scene.height, scene.width) == obj.motion


def measure_detector(
    num_scenes: int = 300,
    seed: int = 0,
    noise_sigma: float = 0.0,
    blur: bool = False,
    clip_frames: int = 24,
    motion_every: int = 1,
    size: int = 64,
) -> dict[str, float]:
    """Detector accuracy on `num_scenes` random scenes (every 4th from the held-out split, 1 or 2 objects).

    Color and shape are scored on the first frame of each clip for every fully visible object; motion
    (tracking by the object's color) on `clip_frames`-frame clips of every `motion_every`-th scene. Clips
    start at a random frame in [0, 1000), are degraded by `degrade(noise_sigma, blur)` and are `size` px.
    """
    rng = np.random.default_rng(seed)
    tally = Tally()
    for i in range(num_scenes):
        scene = sample_scene(int(rng.integers(2**31)), "heldout" if i % 4 == 3 else "train", height=size, width=size)
        start = int(rng.integers(1000))
        with_motion = clip_frames >= 2 and i % motion_every == 0
        clip = degrade(render(scene, start, clip_frames if with_motion else 1), rng, noise_sigma, blur)
        _score_frame(tally, scene, start, clip[0])
        if with_motion:
            _score_clip(tally, scene, clip)
    return tally.rates()
