"""Held-out paraphrases: words and sentence forms that training captions never use, naming the whole scene."""

from __future__ import annotations

import re

import numpy as np

from framecast.world import COLORS, HELDOUT, caption, sample_scene
from framecast.world.paraphrase import (
    PARAPHRASE_COLORS,
    PARAPHRASE_GRADIENT,
    PARAPHRASE_MOTIONS,
    PARAPHRASE_PAIR,
    PARAPHRASE_SHAPES,
    PARAPHRASE_SINGLE,
    PARAPHRASE_SOLID,
    SHARED_WORDS,
    paraphrase,
    paraphrase_words,
    training_words,
    words,
)


def _phrases() -> list[str]:
    """Every synonym, and every template's fixed text between its fields."""
    out = [w for table in (PARAPHRASE_COLORS, PARAPHRASE_SHAPES, PARAPHRASE_MOTIONS) for v in table.values() for w in v]
    templates = (*PARAPHRASE_SOLID, *PARAPHRASE_GRADIENT, *PARAPHRASE_SINGLE, *PARAPHRASE_PAIR)
    out += [part.strip() for t in templates for part in re.split(r"\{[^}]*\}", t) if len(words(part)) > 1]
    return out


def test_paraphrase_content_words_never_appear_in_training_vocabulary() -> None:
    shared = paraphrase_words() & training_words()
    assert shared <= SHARED_WORDS, sorted(shared - SHARED_WORDS)
    named = {w for table in (PARAPHRASE_COLORS, PARAPHRASE_SHAPES) for v in table.values() for p in v for w in words(p)}
    assert not named & training_words()  # every color and shape word is new
    assert not SHARED_WORDS & set(COLORS)


def test_sampled_training_captions_contain_no_paraphrase_phrase() -> None:
    patterns = [re.compile(rf"\b{re.escape(p)}\b") for p in _phrases()]
    rng = np.random.default_rng(0)
    for i in range(1500):
        scene = sample_scene(i, "heldout" if i % 4 == 3 else "train")
        text = caption(scene, rng)
        assert not any(p.search(text) for p in patterns), text
        assert words(text) <= training_words(), text  # the vocabulary the test above checks is complete


def test_paraphrases_name_every_object_and_the_background() -> None:
    for i, (color, shape, motion) in enumerate(sorted(HELDOUT)):
        scene = sample_scene(i, "heldout", 1 + i % 2, color=color, shape=shape, motion=motion)
        text = paraphrase(scene, i)
        assert text == paraphrase(scene, i) and words(text) <= paraphrase_words()
        for obj in scene.objects:
            assert any(c in text for c in PARAPHRASE_COLORS[obj.color]), text
            assert any(s in text for s in PARAPHRASE_SHAPES[obj.shape]), text
            assert any(m in text for m in PARAPHRASE_MOTIONS[obj.motion]), text
        for end in (scene.background.top, scene.background.bottom):
            assert any(c in text for c in PARAPHRASE_COLORS[end]), text
        assert ("behind them" in text or "wall" in text) if len(scene.objects) == 2 else "them" not in text
    assert len({paraphrase(sample_scene(0, num_objects=1), s) for s in range(40)}) > 10
