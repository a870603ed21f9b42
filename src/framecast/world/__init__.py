"""A deterministic procedural video world with captions, and a classical detector to evaluate generated frames.

Frames are numpy uint8 (H, W, 3) RGB in [0, 255]; clips are (T, H, W, 3). See docs/world.md.

    scene = sample_scene(7)                    # 1-2 shapes, colors, motions, background; 64 x 64
    frames = render(scene, start=0, count=24)  # (24, 64, 64, 3) uint8
    text = caption(scene, 7)                   # "a crimson disc drifting to the left on a blue background"
    describe(frames)                           # [{"color": "red", "shape": "circle", "motion": "left"}]
"""

from framecast.world.accuracy import degrade, measure_detector
from framecast.world.captions import canonical_caption, caption, prompt_for
from framecast.world.detect import Detection, detect_background, detect_objects
from framecast.world.motion import classify_motion, describe, detect_motion, track
from framecast.world.render import render
from framecast.world.sample import sample_scene
from framecast.world.scene import Background, ObjectSpec, Scene, object_state
from framecast.world.vocab import COLORS, HELDOUT, MIN_CONTRAST, MOTIONS, SHAPES, allowed_on, is_heldout

__all__ = [
    "COLORS",
    "HELDOUT",
    "MIN_CONTRAST",
    "MOTIONS",
    "SHAPES",
    "Background",
    "Detection",
    "ObjectSpec",
    "Scene",
    "allowed_on",
    "canonical_caption",
    "caption",
    "classify_motion",
    "degrade",
    "describe",
    "detect_background",
    "detect_motion",
    "detect_objects",
    "is_heldout",
    "measure_detector",
    "object_state",
    "prompt_for",
    "render",
    "sample_scene",
    "track",
]
