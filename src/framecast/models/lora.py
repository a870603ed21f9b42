"""LoRA files merged into a model's weights at load (an LCM LoRA over SD 1.5, a style LoRA): W += s * up @ down.

Accepted key layouts (safetensors only):

* kohya / A1111: `lora_unet_<module path with _>.lora_down.weight`, `.lora_up.weight`, `.alpha`; text encoders
  under `lora_te_` (SDXL: `lora_te1_`, `lora_te2_`);
* diffusers / PEFT: `unet.<module>.lora_A.weight`, `.lora_B.weight` (and `text_encoder.`, `text_encoder_2.`),
  or the older `unet.<module>.lora.down.weight`, `.lora.up.weight`; an `.alpha` beside them where saved.

The scale of one pair is `strength * alpha / rank` (alpha = rank when the file has none). Linear and
convolution layers both merge (a k x k down with a 1 x 1 up, as LoRA convolutions are saved).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from framecast.errors import ModelLoadError
from framecast.models.weights import read_safetensors

KOHYA = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
PAIR = re.compile(r"^(?P<name>.+?)\.(?:lora_down|lora\.down|lora_A)\.weight$")


@dataclass
class Pair:
    """One module's LoRA: down (r, in, ...), up (out, r, ...), alpha or None."""

    down: Tensor
    up: Tensor
    alpha: float | None


def read_lora(path: str | Path) -> dict[str, dict[str, Pair]]:
    """A LoRA file -> {part ("unet", "text_encoder", ...): {key name (part prefix removed): Pair}}."""
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"LoRA file not found: {file}")
    if file.suffix != ".safetensors":
        raise ModelLoadError(f"{file}: LoRA files load from .safetensors only")
    weights = read_safetensors(file, "LoRA")
    parts: dict[str, dict[str, Pair]] = {}
    for key in weights:
        m = PAIR.match(key)
        if m is None:
            continue
        name = m["name"]
        up_key = _up_key(key)
        if up_key not in weights:
            raise ModelLoadError(f"{file}: {key} has no matching up weight {up_key}")
        alpha = weights.get(f"{name}.alpha")
        part, local = _split(name)
        parts.setdefault(part, {})[local] = Pair(weights[key], weights[up_key], None if alpha is None else float(alpha))
    if not parts:
        sample = ", ".join(list(weights)[:3])
        raise ModelLoadError(f"{file}: no LoRA pairs (lora_down/lora_up or lora_A/lora_B) found; keys start {sample}")
    return parts


def _up_key(down_key: str) -> str:
    for a, b in ((".lora_down.", ".lora_up."), (".lora.down.", ".lora.up."), (".lora_A.", ".lora_B.")):
        if a in down_key:
            return down_key.replace(a, b)
    raise AssertionError(down_key)


def _split(name: str) -> tuple[str, str]:
    """`lora_unet_down_blocks_0_...` -> ("unet", "down_blocks_0_..."); `unet.down_blocks.0...` -> ("unet", ...)."""
    for prefix in sorted(KOHYA, key=len, reverse=True):
        if name.startswith(prefix):
            return KOHYA[prefix], name[len(prefix) :]
    part, _, local = name.partition(".")
    return part, local


def merge_lora(model: nn.Module, pairs: Mapping[str, Pair], strength: float = 1.0, where: str = "model") -> int:
    """Add every pair into `model`'s weights in place; returns how many modules changed. Module names match with
    dots (diffusers/PEFT keys) or with underscores (kohya keys)."""
    modules = dict(model.named_modules())
    flat = {name.replace(".", "_"): mod for name, mod in modules.items()}
    for name, pair in pairs.items():
        module = modules.get(name) or flat.get(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor):
            raise ModelLoadError(f"the LoRA names {name!r}, which is not a layer with weights in the {where}")
        _merge(weight, pair, strength, name)
    return len(pairs)


@torch.no_grad()
def _merge(weight: Tensor, pair: Pair, strength: float, name: str) -> None:
    down, up = pair.down.double(), pair.up.double()
    rank = down.shape[0]
    scale = strength * (rank if pair.alpha is None else pair.alpha) / rank
    delta = up.flatten(1) @ down.flatten(1)  # (out, in * k * k)
    if delta.numel() != weight.numel():
        raise ModelLoadError(f"the LoRA for {name} makes {tuple(delta.shape)}, the layer is {tuple(weight.shape)}")
    weight.add_((scale * delta).reshape(weight.shape).to(weight.dtype))
