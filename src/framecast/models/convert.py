"""Parameter-name conversion between framecast (original Wan2.1 names) and diffusers' Wan layout.

framecast names its parameters as the original Wan2.1 checkpoints do; diffusers'
`WanTransformer3DModel` uses other names for the same tensors. One table of name pieces serves both
directions, so a diffusers-format folder loads into `CausalWanDiT`.
"""

from __future__ import annotations

import re

from torch import Tensor

# (framecast, diffusers) names outside the blocks
_TOP = [
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("head.modulation", "scale_shift_table"),
]

# (framecast, diffusers) names inside `blocks.N.`
_BLOCK = [
    *((f"self_attn.{p}.", f"attn1.to_{p}.") for p in "qkv"),
    ("self_attn.o.", "attn1.to_out.0."),
    *((f"self_attn.norm_{p}.", f"attn1.norm_{p}.") for p in "qk"),
    *((f"cross_attn.{p}.", f"attn2.to_{p}.") for p in "qkv"),
    ("cross_attn.o.", "attn2.to_out.0."),
    *((f"cross_attn.norm_{p}.", f"attn2.norm_{p}.") for p in "qk"),
    ("norm3.", "norm2."),
    ("ffn.0.", "ffn.net.0.proj."),
    ("ffn.2.", "ffn.net.2."),
    ("modulation", "scale_shift_table"),
]

_BLOCK_PREFIX = re.compile(r"^(blocks\.\d+\.)(.*)$")


def _swap(name: str, pairs: list[tuple[str, str]], forward: bool) -> str:
    for ours, theirs in pairs:
        src, dst = (ours, theirs) if forward else (theirs, ours)
        if name == src or (src.endswith(".") and name.startswith(src)):
            return dst + name[len(src) :]
    return name


def _rename(key: str, forward: bool) -> str:
    m = _BLOCK_PREFIX.match(key)
    if m:
        return m.group(1) + _swap(m.group(2), _BLOCK, forward)
    return _swap(key, _TOP, forward)


def to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """framecast / original Wan2.1 names -> diffusers `WanTransformer3DModel` names."""
    return {_rename(k, True): v for k, v in state.items()}


def from_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers `WanTransformer3DModel` names -> framecast / original Wan2.1 names."""
    return {_rename(k, False): v for k, v in state.items()}


def from_diffusers_name(key: str) -> str:
    """One diffusers `WanTransformer3DModel` parameter name -> its framecast / original Wan2.1 name."""
    return _rename(key, False)


def is_diffusers_name(key: str) -> bool:
    """Whether `key` is in diffusers' Wan naming (a name only diffusers uses, after any wrapper prefix)."""
    return key.startswith(("condition_embedder.", "proj_out.", "scale_shift_table")) or bool(
        re.match(r"^blocks\.\d+\.(attn1|attn2|ffn\.net|scale_shift_table)", key)
    )
