"""CLIP prompt encoding of diffusers image models, computed as their pipelines compute it.

SD 1.5/2.1: one CLIP text model's last hidden state, the prompt padded to the tokenizer's length.
SDXL: two encoders' penultimate hidden states side by side (D = D1 + D2) and the second encoder's projected
pooled embedding (P), which with the size ids forms the UNet's added condition. An empty negative prompt of an
SDXL model that says `force_zeros_for_empty_prompt` is the zero embedding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

Encoded = tuple[Tensor, Tensor | None]  # hidden (T, D) float32, pooled (P,) float32 or None


class ClipPrompts:
    """Prompt text -> (hidden states (T, D), pooled (P,) or None) with a model's tokenizers and text encoders."""

    def __init__(self, encoders: list[tuple[Any, Any]], sdxl: bool = False, zero_empty: bool = False) -> None:
        self.encoders, self.sdxl, self.zero_empty = encoders, sdxl, zero_empty
        sizes = [int(m.config.hidden_size) for _, m in encoders]
        self.dim = sum(sizes) if sdxl else sizes[0]
        last = encoders[-1][1].config
        self.pooled_dim: int | None = int(last.projection_dim) if sdxl else None

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> ClipPrompts:
        for _, model in self.encoders:
            model.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.encoders[0][1].parameters()).device

    @torch.inference_mode()
    def encode(self, text: str) -> Encoded:
        """A prompt -> (T, D), (P,) | None, float32."""
        return self._encode(text)

    @torch.inference_mode()
    def negative(self, text: str) -> Encoded:
        """A negative prompt, which may be empty (SDXL with `zero_empty`: the empty one is all zeros)."""
        hidden, pooled = self._encode(text)
        if self.zero_empty and not text:
            return torch.zeros_like(hidden), None if pooled is None else torch.zeros_like(pooled)
        return hidden, pooled

    def _encode(self, text: str) -> Encoded:
        states, pooled = [], None
        for tokenizer, model in self.encoders:
            length = tokenizer.model_max_length
            tokens = tokenizer([text], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
            ids = tokens.input_ids.to(self.device)
            if not self.sdxl:
                states.append(model(ids)[0][0])  # last hidden state (T, D)
                continue
            out = model(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2][0])  # penultimate (T, Di)
            pooled = out[0][0]  # the last encoder's projected pooled embedding (P,)
        return torch.cat(states, dim=-1).float(), None if pooled is None else pooled.float()
