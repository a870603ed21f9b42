"""Wan2.1-family models from one local folder: the parts the causal family (family/causal.py) streams.

A Wan folder (docs/models.md) holds, in either layout,

| part         | diffusers (`WanPipeline.save_pretrained`)  | original Wan2.1                                   |
|--------------|--------------------------------------------|---------------------------------------------------|
| DiT          | `transformer/`                             | `config.json`, `diffusion_pytorch_model*.safetensors` |
| VAE          | `vae/` (config.json + safetensors)         | `Wan2.1_VAE.pth`                                  |
| text encoder | `text_encoder/` (UMT5EncoderModel)         | `models_t5_umt5-xxl-enc-bf16.pth`                 |
| tokenizer    | `tokenizer/`                               | `google/umt5-xxl/`                                |

(each part is looked for in both places, so a mixed folder loads too). A causal checkpoint (Self-Forcing,
CausVid, ...) goes over the folder's DiT (`models.wan_weights`). The DiT becomes a `CausalWanDiT`, the VAE a
`WanVAE` whose per-stream state is its causal-conv cache, the text encoder UMT5 with 512 tokens. Nothing is
downloaded; a missing part is a one-line `ModelLoadError` that says what was expected where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from framecast.errors import InputError, ModelLoadError
from framecast.models.autoencoder import StreamingAutoencoder
from framecast.models.dit import CausalWanDiT
from framecast.models.taehv import load_tiny_decoder
from framecast.models.text import CachedTextEncoder, TextEncoder
from framecast.models.umt5 import WAN_T5_FILES, WAN_TOKENIZER, load_wan_text_encoder
from framecast.models.wan_vae_weights import ORIGINAL_VAE_FILES, load_wan_vae
from framecast.models.wan_weights import load_wan_dit, locate


@dataclass(frozen=True)
class WanOptions:
    """What a Wan folder does not say: the frame size in pixels (multiples of 16), latent frames per chunk (3 as
    Self-Forcing and CausVid, 1 as StreamDiffusionV2), the VAE's dtype (float32 as WanPipeline runs it), and a
    TAEHV file (`taew2_1.pth`) to decode with instead of the VAE's decoder (the VAE still encodes inputs)."""

    height: int = 480
    width: int = 832
    chunk_frames: int = 3
    vae_dtype: torch.dtype = torch.float32
    tiny_decoder: str | Path | None = None

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value % 16:
                raise InputError(f"Wan frame {name} must be a positive multiple of 16, got {value!r}")
        if isinstance(self.chunk_frames, bool) or not isinstance(self.chunk_frames, int) or self.chunk_frames < 1:
            raise InputError(f"chunk_frames must be a positive integer, got {self.chunk_frames!r}")


@dataclass(frozen=True)
class WanFiles:
    """Where each part of a Wan folder is."""

    folder: Path
    layout: str  # of the DiT: "wan" (original) or "diffusers"
    vae: Path  # a diffusers vae/ folder or an original file
    text_encoder: Path  # a transformers folder or an original file
    tokenizer: Path


def is_wan_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a Wan2.1 DiT in the original or the diffusers layout."""
    try:
        return locate(folder)[1] in ("wan", "diffusers")
    except ModelLoadError:
        return False


def _first(folder: Path, what: str, candidates: list[tuple[str, Path]]) -> Path:
    for _, path in candidates:
        if path.exists():
            return path
    expected = " or ".join(f"{p}{'/' if kind == 'dir' else ''}" for kind, p in candidates)
    raise ModelLoadError(f"no {what} in the Wan folder {folder}: expected {expected}")


def find_files(folder: str | Path) -> WanFiles:
    """The parts of a Wan folder, each found in the diffusers or the original layout (see the module table)."""
    root = Path(folder)
    _, layout = locate(root)
    if layout not in ("wan", "diffusers"):
        raise ModelLoadError(f"{root} is not a Wan2.1 folder (its DiT is in the {layout} layout)")
    vae = _first(root, "Wan VAE", [("dir", root / "vae")] + [("file", root / f) for f in ORIGINAL_VAE_FILES])
    enc = _first(
        root, "UMT5 text encoder", [("dir", root / "text_encoder")] + [("file", root / f) for f in WAN_T5_FILES]
    )
    tok = _first(root, "UMT5 tokenizer", [("dir", root / "tokenizer"), ("dir", root / WAN_TOKENIZER)])
    return WanFiles(root, layout, vae, enc, tok)


def load_wan(
    folder: str | Path,
    checkpoint: str | Path | None = None,
    options: WanOptions | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    text_encoder: TextEncoder | None = None,
) -> tuple[CausalWanDiT, StreamingAutoencoder, TextEncoder]:
    """The DiT (with `checkpoint` over it), VAE and text encoder of a Wan folder, for `CausalFamily`.

    `dtype`: the DiT's (default bfloat16 on CUDA, float32 elsewhere); the text encoder runs in bfloat16 when the
    DiT runs in a half type (UMT5 overflows in float16), else float32. `text_encoder` replaces the folder's."""
    opts = options or WanOptions()
    files = find_files(folder)  # every part found before any is read
    dev = torch.device(device)
    dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    vae = load_wan_vae(files.vae, opts.vae_dtype)
    ae: StreamingAutoencoder = vae if opts.tiny_decoder is None else load_tiny_decoder(opts.tiny_decoder, vae)
    sf = vae.spatial_factor
    dit = load_wan_dit(
        files.folder, checkpoint, dtype=dt, device=dev, chunk_frames=opts.chunk_frames,
        latent_height=opts.height // sf, latent_width=opts.width // sf,
    )  # fmt: skip
    if text_encoder is None:
        t5_dtype = torch.bfloat16 if dt in (torch.bfloat16, torch.float16) else torch.float32
        text_encoder = CachedTextEncoder(load_wan_text_encoder(files.text_encoder, files.tokenizer, dev, t5_dtype))
    return dit, ae, text_encoder
