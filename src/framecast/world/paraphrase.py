"""Held-out paraphrases: prompts in words and sentence forms that training captions never use.

Evaluation asks a model for the same scenes in two wordings: `canonical_caption(scene)` ("a red circle
moving left on a blue background") and `paraphrase(scene, seed_or_rng)` ("show me a ruby orb gliding to
the left in front of a sapphire wall"). Every content word of a paraphrase (colors, shapes, motion verbs,
background nouns, sentence openings) is absent from the training captions of `captions.py`; only the
function words and the four direction words in `SHARED_WORDS` are common to both
(`training_words()` and tests/test_world_paraphrase.py check it). A paraphrase always names the background.
"""

from __future__ import annotations

import re
from types import MappingProxyType

import numpy as np

from framecast.world import captions
from framecast.world.captions import _article, _as_rng, _choose
from framecast.world.scene import Background, ObjectSpec, Scene

PARAPHRASE_COLORS = MappingProxyType(
    {
        "red": ("ruby", "cherry-colored"),
        "orange": ("pumpkin-colored", "carrot-colored"),
        "yellow": ("golden", "canary"),
        "green": ("jade", "leaf-colored"),
        "blue": ("sapphire", "azure"),
        "purple": ("plum", "amethyst"),
        "white": ("ivory", "chalky"),
        "black": ("ebony", "inky"),
    }
)
PARAPHRASE_SHAPES = MappingProxyType(
    {
        "circle": ("orb", "sphere"),
        "square": ("tile", "cube"),
        "triangle": ("pyramid", "three-cornered figure"),
        "star": ("pentagram", "sparkle"),
    }
)
PARAPHRASE_MOTIONS = MappingProxyType(
    {
        "left": ("gliding to the left", "scooting left"),
        "right": ("gliding to the right", "scooting right"),
        "up": ("climbing", "ascending"),
        "down": ("descending", "dropping"),
        "still": ("stationary", "holding its position"),
        "bounce": ("rebounding off the edges", "caroming from side to side"),
    }
)
# {c}: a color word ({ac}: with its article); {t}, {b}: the gradient's top and bottom colors; {it}: "it" or "them".
PARAPHRASE_SOLID = ("in front of {ac} wall", "with {c} behind {it}")
PARAPHRASE_GRADIENT = (
    "in front of a wall shading from {t} at the top to {b} at the bottom",
    "with {t} blending into {b} behind {it}",
)
# One object: {np} noun phrase with article, {motion}; two: {a}, {b} ("noun phrase + motion"); {bg} background.
PARAPHRASE_SINGLE = ("show me {np} {motion} {bg}", "I see {np} {motion} {bg}", "here we have {np} {motion} {bg}")
PARAPHRASE_PAIR = ("show me {a} alongside {b} {bg}", "I see {a} next to {b} {bg}")
# Words a paraphrase may share with training captions: function words and the four directions.
SHARED_WORDS = frozenset(
    ("a", "an", "the", "to", "of", "on", "in", "is", "it", "its", "them", "and", "with", "from", "at", "off")
    + ("side", "i", "we", "me", "here", "left", "right", "up", "down")
)


def words(text: str) -> set[str]:
    """Lower-case words of a text, split at spaces, hyphens and punctuation; template fields left out."""
    return set(re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", text.lower())))


def training_words() -> set[str]:
    """Every word the training captions (`captions.caption`, `canonical_caption`) can contain."""
    texts = [w for table in (captions.COLOR_WORDS, captions.SHAPE_WORDS, captions.MOTION_WORDS) for v in
             table.values() for w in v]
    texts += [*captions.SOLID_WORDS, *captions.GRADIENT_WORDS, *captions.SINGLE_TEMPLATES, *captions.PAIR_TEMPLATES]
    texts += [*captions.CANONICAL_MOTION.values(), "a an small large background gradient"]
    return set().union(*(words(t) for t in texts))


def paraphrase_words() -> set[str]:
    """Every word a paraphrase can contain."""
    texts = [w for table in (PARAPHRASE_COLORS, PARAPHRASE_SHAPES, PARAPHRASE_MOTIONS) for v in table.values()
             for w in v]
    texts += [*PARAPHRASE_SOLID, *PARAPHRASE_GRADIENT, *PARAPHRASE_SINGLE, *PARAPHRASE_PAIR, "a an it them"]
    return set().union(*(words(t) for t in texts))


def _object_phrase(rng: np.random.Generator, obj: ObjectSpec) -> tuple[str, str]:
    """(noun phrase with article, motion phrase) of one object."""
    color, shape = _choose(rng, PARAPHRASE_COLORS[obj.color]), _choose(rng, PARAPHRASE_SHAPES[obj.shape])
    return _article(f"{color} {shape}"), _choose(rng, PARAPHRASE_MOTIONS[obj.motion])


def _background_phrase(rng: np.random.Generator, bg: Background, it: str) -> str:
    if bg.kind == "solid":
        c = _choose(rng, PARAPHRASE_COLORS[bg.top])
        return _choose(rng, PARAPHRASE_SOLID).format(c=c, ac=_article(c), it=it)
    t, b = _choose(rng, PARAPHRASE_COLORS[bg.top]), _choose(rng, PARAPHRASE_COLORS[bg.bottom])
    return _choose(rng, PARAPHRASE_GRADIENT).format(t=t, b=b, it=it)


def paraphrase(scene: Scene, seed_or_rng: int | np.random.Generator) -> str:
    """A held-out paraphrase of `scene` (objects and background), drawn from the seed or rng."""
    rng = _as_rng(seed_or_rng)
    parts = [_object_phrase(rng, o) for o in scene.objects]
    bg = _background_phrase(rng, scene.background, "it" if len(parts) == 1 else "them")
    if len(parts) == 1:
        return _choose(rng, PARAPHRASE_SINGLE).format(np=parts[0][0], motion=parts[0][1], bg=bg)
    a, b = (f"{np_} {motion}" for np_, motion in parts)
    return _choose(rng, PARAPHRASE_PAIR).format(a=a, b=b, bg=bg)
