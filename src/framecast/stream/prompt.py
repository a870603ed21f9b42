"""Live prompt switching: the condition each new chunk takes, with an optional blend between prompts.

A change takes effect at the next chunk admitted; chunks already in flight keep their condition and
the KV cache is kept, so the stream never restarts. With `blend_chunks` = b, the next b chunks use
lerp(old, new, i / (b + 1)), i = 1..b, of the text embeddings before the new prompt takes over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import Tensor

from framecast.errors import InputError
from framecast.stream.memo import BoundedCache

C = TypeVar("C")  # a model family's condition (the causal DiT's: `stream.state.Condition`)


def check_prompt(text: object) -> str:
    """A prompt must be a non-empty string (every front end and every family checks it here)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("prompt must be a non-empty string")
    return text


class Conditioner(Generic[C]):
    """Text -> condition of one model: embeddings and their conditions cached per prompt (least recently used
    first out), so a prompt a viewer comes back to costs nothing."""

    def __init__(self, embed: Callable[[str], Tensor], cross: Callable[[Tensor], C], size: int = 64) -> None:
        self.embed, self.cross = embed, cross
        self._cache: BoundedCache[str, C] = BoundedCache(size)

    def __call__(self, text: str) -> C:
        return self._cache.touch(text, lambda: self.cross(self.embed(text)))


@dataclass
class PromptState:
    """A stream's prompt: the current text embedding (T, D) and the blend in progress, if any."""

    text: str
    embedding: Tensor
    blend_from: Tensor | None = None
    blend_total: int = 0
    blend_done: int = 0

    def switch(self, text: str, embedding: Tensor, blend_chunks: int) -> None:
        self.blend_from = self.current_embedding() if blend_chunks else None
        self.text, self.embedding = text, embedding
        self.blend_total, self.blend_done = blend_chunks, 0

    def current_embedding(self) -> Tensor:
        if self.blend_from is None or self.blend_done >= self.blend_total:
            return self.embedding
        w = (self.blend_done + 1) / (self.blend_total + 1)
        return self.blend_from.lerp(self.embedding, w)

    def next_condition(self, cached: Callable[[str], Any], compute: Callable[[Tensor], Any]) -> Any:
        """Condition of the next chunk: the prompt's cached one, or a blend computed on the fly."""
        if self.blend_from is None or self.blend_done >= self.blend_total:
            self.blend_from = None
            return cached(self.text)
        cond = compute(self.current_embedding())
        self.blend_done += 1
        return cond
