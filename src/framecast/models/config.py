"""Settings of the causal video DiT, as a typed dataclass saved beside the weights.

The constructor of `CausalWanDiT` takes one `DiTConfig`; `config.json` in a model folder is
`DiTConfig.to_dict()`. Presets are named: `tiny` runs in real time on a laptop CPU, `wan-1.3b` and
`wan-14b` are the published Wan2.1 sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from framecast.errors import ModelLoadError


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a Wan2.1-style causal video DiT.

    Latent layout: (B, in_channels, F, H, W); a 1 x p x p patch turns one latent frame into
    (H / p) * (W / p) tokens. `chunk_frames` latent frames share one timestep and form one
    block of the block-causal attention.
    """

    dim: int = 1536
    num_heads: int = 12
    num_layers: int = 30
    ffn_dim: int = 8960
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    cross_attn_norm: bool = True
    eps: float = 1e-6
    rope_theta: float = 10000.0
    chunk_frames: int = 3
    text_modulation: bool = False  # also add the pooled text to the timestep embedding (not in Wan2.1)
    precondition: bool = False  # velocity = skip(s) * x + scale(s) * network output (not in Wan2.1)
    structure_channels: int = 0  # latent channels of a structure input (video to video); 0: none (not in Wan2.1)
    refiner_channels: int = 0  # width of a convolutional refiner at latent resolution (models/refiner.py); 0: none
    latent_height: int = 60
    latent_width: int = 104
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ModelLoadError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ModelLoadError(f"head dim {self.head_dim} must be even and at least 6 for 3D RoPE")
        if self.patch_size[0] != 1:
            raise ModelLoadError("only a temporal patch size of 1 is supported (Wan2.1 uses 1x2x2)")
        if self.structure_channels < 0:
            raise ModelLoadError(f"structure_channels must be 0 or more, got {self.structure_channels}")
        if self.refiner_channels < 0 or self.refiner_channels % 8:
            raise ModelLoadError(f"refiner_channels must be 0 or a positive multiple of 8, got {self.refiner_channels}")
        for name in ("latent_height", "latent_width"):
            if getattr(self, name) % self.patch_size[1]:
                raise ModelLoadError(f"{name} {getattr(self, name)} is not a multiple of the patch size")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        """Tokens of one latent frame: (H / p) * (W / p)."""
        return (self.latent_height // self.patch_size[1]) * (self.latent_width // self.patch_size[2])

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (H / p, W / p) of one latent frame."""
        return self.latent_height // self.patch_size[1], self.latent_width // self.patch_size[2]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelLoadError(f"unknown DiT config keys: {', '.join(unknown)}")
        d = dict(d)
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelLoadError(f"bad DiT config: {e}") from None


PRESETS: dict[str, DiTConfig] = {
    # Real time on a 2-core CPU: 4 frames of 64x64 pixels -> a 16x8x8 latent frame -> 16 tokens.
    "tiny": DiTConfig(
        dim=128,
        num_heads=4,
        num_layers=4,
        ffn_dim=384,
        in_channels=16,
        out_channels=16,
        text_dim=384,
        freq_dim=64,
        chunk_frames=1,
        text_modulation=True,
        precondition=True,
        structure_channels=16,  # video to video reads the encoded input frames (docs/v2v.md)
        latent_height=8,
        latent_width=8,
        refiner_channels=96,
    ),
    # Wan2.1 T2V 1.3B at 480x832: 30 blocks, dim 1536, 12 heads x 128, FFN 8960.
    "wan-1.3b": DiTConfig(),
    # Wan2.1 T2V 14B at 480x832: 40 blocks, dim 5120, 40 heads x 128, FFN 13824.
    "wan-14b": DiTConfig(dim=5120, num_heads=40, num_layers=40, ffn_dim=13824),
}


def preset(name: str) -> DiTConfig:
    """A named preset; a clear error lists the names when `name` is unknown."""
    if name not in PRESETS:
        raise ModelLoadError(f"unknown DiT preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
