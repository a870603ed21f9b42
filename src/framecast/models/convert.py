"""Parameter-name conversion between framecast (original Wan2.1 names) and diffusers' Wan layout.

framecast names its parameters as the original Wan2.1 checkpoints do; diffusers'
`WanTransformer3DModel` uses other names for the same tensors. These pure functions map a state
dict one way or the other, so a diffusers-format folder loads into `CausalWanDiT`.
"""

from __future__ import annotations

import re

from torch import Tensor

# (framecast pattern, diffusers replacement); applied to the start of a key.
_RULES: list[tuple[str, str]] = [
    (r"text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"time_projection\.1\.", "condition_embedder.time_proj."),
    (r"blocks\.(\d+)\.self_attn\.([qkv])\.", r"blocks.\1.attn1.to_\2."),
    (r"blocks\.(\d+)\.self_attn\.o\.", r"blocks.\1.attn1.to_out.0."),
    (r"blocks\.(\d+)\.self_attn\.norm_([qk])\.", r"blocks.\1.attn1.norm_\2."),
    (r"blocks\.(\d+)\.cross_attn\.([qkv])\.", r"blocks.\1.attn2.to_\2."),
    (r"blocks\.(\d+)\.cross_attn\.o\.", r"blocks.\1.attn2.to_out.0."),
    (r"blocks\.(\d+)\.cross_attn\.norm_([qk])\.", r"blocks.\1.attn2.norm_\2."),
    (r"blocks\.(\d+)\.norm3\.", r"blocks.\1.norm2."),
    (r"blocks\.(\d+)\.ffn\.0\.", r"blocks.\1.ffn.net.0.proj."),
    (r"blocks\.(\d+)\.ffn\.2\.", r"blocks.\1.ffn.net.2."),
    (r"blocks\.(\d+)\.modulation$", r"blocks.\1.scale_shift_table"),
    (r"head\.head\.", "proj_out."),
    (r"head\.modulation$", "scale_shift_table"),
]

_INVERSE: list[tuple[str, str]] = [
    (r"condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"condition_embedder\.time_proj\.", "time_projection.1."),
    (r"blocks\.(\d+)\.attn1\.to_([qkv])\.", r"blocks.\1.self_attn.\2."),
    (r"blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"blocks\.(\d+)\.attn1\.norm_([qk])\.", r"blocks.\1.self_attn.norm_\2."),
    (r"blocks\.(\d+)\.attn2\.to_([qkv])\.", r"blocks.\1.cross_attn.\2."),
    (r"blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"blocks\.(\d+)\.attn2\.norm_([qk])\.", r"blocks.\1.cross_attn.norm_\2."),
    (r"blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"proj_out\.", "head.head."),
    (r"scale_shift_table$", "head.modulation"),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return new
    return key


def to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """framecast / original Wan2.1 names -> diffusers `WanTransformer3DModel` names."""
    return {_rename(k, _RULES): v for k, v in state.items()}


def from_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """diffusers `WanTransformer3DModel` names -> framecast / original Wan2.1 names."""
    return {_rename(k, _INVERSE): v for k, v in state.items()}
