"""Training data from the procedural world: frame groups for the autoencoder, clips with captions for the DiT.

Pixel layout: float tensors (B, 3, T, H, W) in [-1, 1], as the autoencoder takes them.

DiT clips start with their objects at fixed places (`centered`), with one size and one speed (`steady`),
and captions that leave the background out get the default background (`default_background`): black, or
the first palette color every object stands out on. A caption then fixes everything in a clip, so the
model can learn the text; what a caption leaves open, a few-step sampler draws as an average: a random
background under a caption that never names it became one average background whatever the prompt, random
speeds a moving object smeared or split along its path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from framecast.world.captions import caption
from framecast.world.render import render
from framecast.world.sample import sample_scene
from framecast.world.scene import Background, ObjectSpec, Scene, object_state
from framecast.world.vocab import COLORS, allowed_on, is_heldout

DEFAULT_BACKGROUNDS = ("black", "white", *COLORS)  # tried in this order
BACKGROUND_WORDS = ("background", "backdrop", "gradient")  # every background phrase of the captions has one

STEADY_SIZE = 15.0  # bounding-box side at 64 px of every object of the DiT's clips (the world: 12-18)
STEADY_SPEED = 0.9  # pixels per frame at 64 px (the world: 0.6-1.2); a bounce goes down-right at 45 degrees
MAX_START = 4000  # frames: clips start anywhere in the first ~3 minutes of a scene
SCENE_POOL = 1024  # autoencoder batches draw from this many scenes (each at random times), sampled once


@functools.lru_cache(maxsize=SCENE_POOL)
def pooled_scene(index: int, height: int, width: int) -> Scene:
    """Training scene number `index` of the autoencoder's pool; cached, since sampling one takes milliseconds."""
    return sample_scene(index, "train", height=height, width=width)


def to_pixels(frames: np.ndarray) -> Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, 3, T, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.permute(0, 4, 1, 2, 3)


def frame_groups(rng: np.random.Generator, batch: int, frames: int, height: int, width: int) -> Tensor:
    """`batch` random groups of `frames` consecutive frames of training scenes: (B, 3, frames, H, W)."""
    return _render_groups(rng, batch, frames, lambda: pooled_scene(int(rng.integers(SCENE_POOL)), height, width))


def _render_groups(rng: np.random.Generator, batch: int, frames: int, pick: Callable[[], Scene]) -> Tensor:
    """`batch` groups of `frames` frames, each of a scene from `pick` at a random time: (B, 3, frames, H, W)."""
    return to_pixels(np.stack([render(pick(), int(rng.integers(MAX_START)), frames) for _ in range(batch)]))


def steady_groups(rng: np.random.Generator, batch: int, frames: int, height: int, width: int) -> Tensor:
    """`batch` random groups of `frames` frames of steady training scenes (what the DiT learns to draw)."""
    return _render_groups(
        rng, batch, frames, lambda: steady(sample_scene(int(rng.integers(2**31)), "train", height=height, width=width))
    )


@dataclass
class Sample:
    """One DiT training sample: a sink group then a window of groups further on, with a caption per group.

    frames: (G * tf, H, W, 3) uint8; starts: first frame of each group (the temporal positions are
    starts // tf); captions: one per group (a prompt switch changes the caption part way).
    """

    frames: np.ndarray
    group_start: list[int]
    captions: list[str]


def clip_sample(
    rng: np.random.Generator, window: int, tf: int, max_gap: int, height: int, width: int, switch_prob: float
) -> Sample:
    """A sink group at frame 0 and `window` consecutive groups starting `gap` groups later (gap >= 1)."""
    scene = steady(centered(sample_scene(int(rng.integers(2**31)), "train", height=height, width=width)))
    gap = 1 if rng.random() < 0.4 else int(rng.integers(2, max_gap + 1))
    starts = [0] + [(gap + i) * tf for i in range(window)]
    scene, text = captioned(scene, rng)
    frames = [render(scene, s, tf) for s in starts]
    captions = [text] * (window + 1)
    if rng.random() < switch_prob:
        at = int(rng.integers(2, window + 1))  # switch before group `at` of the window (index into starts)
        new, text = captioned(switched_scene(scene, rng, starts[at]), rng)
        frames[at:] = [render(new, s - starts[at], tf) for s in starts[at:]]
        captions[at:] = [text] * (window + 1 - at)
    return Sample(np.concatenate(frames), starts, captions)


def centered(scene: Scene) -> Scene:
    """The scene with every object starting at the middle of its bounds (a lone object: the frame's centre).

    A stream starts from nothing, and a first chunk whose objects may be anywhere is learnt as their
    average: a background with no object. Fixed starting places make the first chunk a function of the
    caption; motion then moves the objects, so later groups still show them everywhere.
    """
    objects = tuple(
        dataclasses.replace(o, x=(o.bounds[0] + o.bounds[2]) / 2, y=(o.bounds[1] + o.bounds[3]) / 2)
        for o in scene.objects
    )
    return dataclasses.replace(scene, objects=objects)


def steady(scene: Scene) -> Scene:
    """The scene with every object at one size and one speed (a bounce: down-right at 45 degrees).

    The caption names neither; from a caption and a few noisy chunks of context, a random speed leaves the
    next chunk's place open by several pixels, and the sampler's average of those places is a smear.
    """
    s = scene.scale
    speed = STEADY_SPEED * s

    def fix(o: ObjectSpec) -> ObjectSpec:
        norm = (o.vx**2 + o.vy**2) ** 0.5
        if o.motion == "bounce":
            vx, vy = speed / 2**0.5, speed / 2**0.5
        else:
            vx, vy = (0.0, 0.0) if norm == 0 else (o.vx / norm * speed, o.vy / norm * speed)
        return dataclasses.replace(o, size=STEADY_SIZE * s, vx=vx, vy=vy)

    return dataclasses.replace(scene, objects=tuple(fix(o) for o in scene.objects))


def default_background(colors: list[str]) -> Background:
    """The background of a caption that names none: the first of DEFAULT_BACKGROUNDS all `colors` stand out on."""
    for c in DEFAULT_BACKGROUNDS:
        if all(allowed_on(o, c, c) for o in colors):
            return Background("solid", c, c)
    raise ValueError(f"no palette background suits {colors}")  # two objects cover at most two colors


def captioned(scene: Scene, rng: np.random.Generator) -> tuple[Scene, str]:
    """A caption of `scene`, and the scene itself with the default background if the caption names none."""
    text = caption(scene, rng)
    if any(w in text.lower() for w in BACKGROUND_WORDS):
        return scene, text
    background = default_background([o.color for o in scene.objects])
    return dataclasses.replace(scene, background=background), text


def switched_scene(scene: Scene, rng: np.random.Generator, frame: int) -> Scene:
    """The scene after a prompt switch at `frame`: objects keep their place, some attributes change.

    The new scene's frame 0 is `frame` of the old one. Colors and shapes change; a single object may also
    change its motion (two objects keep theirs, so they stay in their own halves).
    """
    for _ in range(100):
        seed = int(rng.integers(2**31))
        n = len(scene.objects)
        fresh = steady(sample_scene(seed, "train", num_objects=n, height=scene.height, width=scene.width))
        single = len(scene.objects) == 1
        objects = tuple(_continue(a, b, frame, single) for a, b in zip(scene.objects, fresh.objects, strict=True))
        background = fresh.background if rng.random() < 0.3 else scene.background
        candidate = dataclasses.replace(scene, objects=objects, background=background)
        if _valid(candidate):
            return candidate
    return scene


def _continue(old: ObjectSpec, new: ObjectSpec, frame: int, may_change_motion: bool) -> ObjectSpec:
    """`new`'s look (and motion, if allowed) at `old`'s place at `frame`, kept inside the new bounds."""
    x, y = object_state(old, frame)
    obj = dataclasses.replace(new, x=x, y=y) if may_change_motion else dataclasses.replace(
        old, x=x, y=y, color=new.color, shape=new.shape, size=new.size
    )
    x0, y0, x1, y1 = obj.bounds
    half = obj.size / 2
    if obj.motion not in ("left", "right"):
        x = min(max(x, x0 + half), x1 - half)
    if obj.motion not in ("up", "down"):
        y = min(max(y, y0 + half), y1 - half)
    return dataclasses.replace(obj, x=x, y=y)


def _valid(scene: Scene) -> bool:
    """Training scenes only: no held-out triple, distinct colors, each object visible on the background."""
    bg = scene.background
    colors = [o.color for o in scene.objects]
    return (
        len(set(colors)) == len(colors)
        and not any(is_heldout(o.color, o.shape, o.motion) for o in scene.objects)
        and all(allowed_on(o.color, bg.top, bg.bottom) for o in scene.objects)
    )
