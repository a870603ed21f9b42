"""Captions of scenes: varied training captions, a canonical form, and prompts for evaluation.

`caption(scene, seed_or_rng)` picks a template and synonyms at random (deterministic per seed); every color
synonym names its palette color unambiguously (crimson is red, violet is purple). The background is
mentioned in some templates and left out in others. `canonical_caption` and `prompt_for` use one fixed
template: "a red circle moving left on a blue background".
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from framecast.errors import InputError
from framecast.world.scene import Background, ObjectSpec, Scene, as_background
from framecast.world.vocab import COLORS, MOTIONS, SHAPES, check_choice

COLOR_WORDS = MappingProxyType(
    {
        "red": ("red", "crimson", "scarlet"),
        "orange": ("orange", "tangerine"),
        "yellow": ("yellow", "lemon-yellow"),
        "green": ("green", "emerald"),
        "blue": ("blue", "cobalt"),
        "purple": ("purple", "violet"),
        "white": ("white", "snow-white"),
        "black": ("black", "jet-black"),
    }
)
SHAPE_WORDS = MappingProxyType(
    {
        "circle": ("circle", "disc", "ball", "round dot"),
        "square": ("square", "box", "block"),
        "triangle": ("triangle", "triangular shape"),
        "star": ("star", "five-pointed star"),
    }
)
MOTION_WORDS = MappingProxyType(
    {
        "left": ("moving left", "drifting to the left", "sliding leftward", "heading left"),
        "right": ("moving right", "drifting to the right", "sliding rightward", "heading right"),
        "up": ("moving up", "rising", "drifting upward", "floating up"),
        "down": ("moving down", "falling", "sinking", "drifting downward"),
        "still": ("staying still", "not moving", "sitting motionless", "resting in place"),
        "bounce": ("bouncing off the walls", "bouncing around", "ricocheting around", "bouncing diagonally"),
    }
)
SOLID_WORDS = ("on a {c} background", "against a {c} backdrop", "over a plain {c} background")
GRADIENT_WORDS = (
    "on a gradient from {t} to {b}",
    "over a background fading from {t} to {b}",
    "against a {t}-to-{b} gradient",
)
# One object: {np} a noun phrase with article, {bare} without, {motion} a participle phrase, {bg} background.
SINGLE_TEMPLATES = (
    "{np} {motion}",
    "{np} {motion} {bg}",
    "{bare} {motion} {bg}",
    "{Bg}, {np} is {motion}",
    "a video of {np} {motion}",
    "there is {np} {motion} {bg}",
    "{np}, {motion}",
)
# Two objects: {a}, {b} are "noun phrase + motion"; {np_b} / {motion_b} the second one's parts.
PAIR_TEMPLATES = (
    "two shapes: {a} and {b}",
    "{a} and {b}",
    "{a} and {b} {bg}",
    "{a} with {b}",
    "{a}, while {np_b} is {motion_b}",
    "{Bg}, {a} and {b}",
)
CANONICAL_MOTION = MappingProxyType(
    {
        "left": "moving left",
        "right": "moving right",
        "up": "moving up",
        "down": "moving down",
        "still": "staying still",
        "bounce": "bouncing around",
    }
)


def _choose(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_word(obj: ObjectSpec, scale: float) -> str:
    """ "small " / "large " for the smallest and largest thirds of the size range, else ""."""
    if obj.size < 14.0 * scale:
        return "small "
    return "large " if obj.size > 16.0 * scale else ""


def _bare_phrase(rng: np.random.Generator, obj: ObjectSpec, scale: float) -> str:
    size = _size_word(obj, scale) if rng.random() < 0.3 else ""
    return f"{size}{_choose(rng, COLOR_WORDS[obj.color])} {_choose(rng, SHAPE_WORDS[obj.shape])}"


def _background_phrase(rng: np.random.Generator, bg: Background) -> str:
    if bg.kind == "solid":
        return _choose(rng, SOLID_WORDS).format(c=_choose(rng, COLOR_WORDS[bg.top]))
    t, b = _choose(rng, COLOR_WORDS[bg.top]), _choose(rng, COLOR_WORDS[bg.bottom])
    return _choose(rng, GRADIENT_WORDS).format(t=t, b=b)


def _fields(rng: np.random.Generator, obj: ObjectSpec, scale: float) -> dict[str, str]:
    bare = _bare_phrase(rng, obj, scale)
    return {"bare": bare, "np": _article(bare), "motion": _choose(rng, MOTION_WORDS[obj.motion])}


def _as_rng(seed_or_rng: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, int | np.integer) and not isinstance(seed_or_rng, bool):
        return np.random.default_rng(int(seed_or_rng))
    raise InputError(f"caption needs an int seed or a numpy Generator, got {type(seed_or_rng).__name__}")


def caption(scene: Scene, seed_or_rng: int | np.random.Generator) -> str:
    """A varied caption of `scene`: template, synonyms and background mention drawn from the seed or rng."""
    rng = _as_rng(seed_or_rng)
    bg = _background_phrase(rng, scene.background)
    first = _fields(rng, scene.objects[0], scene.scale)
    if len(scene.objects) == 1:
        template = _choose(rng, SINGLE_TEMPLATES)
        return template.format(bg=bg, Bg=bg[0].upper() + bg[1:], **first)
    second = _fields(rng, scene.objects[1], scene.scale)
    template = _choose(rng, PAIR_TEMPLATES)
    a, b = f"{first['np']} {first['motion']}", f"{second['np']} {second['motion']}"
    return template.format(a=a, b=b, np_b=second["np"], motion_b=second["motion"], bg=bg, Bg=bg[0].upper() + bg[1:])


def _canonical_object(color: str, shape: str, motion: str) -> str:
    return f"{_article(color)} {shape} {CANONICAL_MOTION[motion]}"


def _canonical_background(bg: Background) -> str:
    if bg.kind == "solid":
        return f"on {_article(bg.top)} background"
    return f"on a gradient from {bg.top} to {bg.bottom}"


def canonical_caption(scene: Scene) -> str:
    """The one fixed-template caption: "a red circle moving left and a blue square staying still on a ..." ."""
    objects = " and ".join(_canonical_object(o.color, o.shape, o.motion) for o in scene.objects)
    return f"{objects} {_canonical_background(scene.background)}"


def prompt_for(color: str, shape: str, motion: str, background: Background | str | None = None) -> str:
    """Canonical prompt for one object, e.g. "a red circle moving left" (+ " on a blue background").

    `background` is a `Background`, a palette color name (solid) or None (not mentioned).
    """
    check_choice("color", color, tuple(COLORS))
    check_choice("shape", shape, SHAPES)
    check_choice("motion", motion, MOTIONS)
    text = _canonical_object(color, shape, motion)
    bg = as_background(background)
    return text if bg is None else f"{text} {_canonical_background(bg)}"
