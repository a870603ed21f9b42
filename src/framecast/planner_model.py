"""What `framecast plan` plans for: a model preset or folder, read as configurations only (no weights are read).

A preset (`tiny`, `wan-1.3b`, `wan-14b`), a framecast model folder (`framecast.json`, `dit/config.json`,
`autoencoder/config.json`) or a Wan2.1 folder (its DiT `config.json`; a `text_encoder/config.json` when it has
one) gives the DiT's configuration and the parts beside it; the frame size, the latent frames per chunk, a recipe
and stream fields then shape the `PlanSpec`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from framecast.errors import InputError, ModelLoadError
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.models.config import PRESETS, DiTConfig
from framecast.models.wan_weights import locate, wan_config
from framecast.models.weights import read_json
from framecast.pipeline import BUILTIN
from framecast.pipeline import WEIGHTS_DIR as BUILTIN_DIR
from framecast.planner import MINILM_PARAMS, UMT5_XXL_PARAMS, PlanSpec, latent_size, size_of
from framecast.recipes import Recipe, apply_recipe, choose_recipe
from framecast.stream.config import StreamConfig

WAN_TEXT_TOKENS = 512
MINILM_TOKENS = {"minilm": 1, "minilm-tokens": 33}


@dataclass(frozen=True)
class ModelParts:
    """A model's DiT configuration and what stands beside it."""

    dit: DiTConfig
    stream: StreamConfig = field(default_factory=StreamConfig)
    wan: bool = False  # Wan VAE + UMT5; else the tiny autoencoder + MiniLM
    text_tokens: int = WAN_TEXT_TOKENS
    text_params: int = UMT5_XXL_PARAMS
    autoencoder: AutoencoderConfig | None = None  # the tiny autoencoder's
    vae_config: dict[str, Any] = field(default_factory=dict)  # a diffusers vae/config.json, {} for Wan2.1's own


def model_parts(model: str) -> ModelParts:
    """A preset by name or a model folder, from its configuration files."""
    builtin = BUILTIN_DIR / model
    if model in BUILTIN and (builtin / "framecast.json").is_file():
        return _framecast_parts(builtin)  # the built-in model's own folder, as `--model tiny` loads it
    if model in PRESETS:
        cfg = PRESETS[model]
        if model == "tiny":
            return ModelParts(cfg, wan=False, text_tokens=1, text_params=MINILM_PARAMS, autoencoder=AutoencoderConfig())
        return ModelParts(cfg, wan=True)
    folder = Path(model)
    if not folder.is_dir():
        raise InputError(f"unknown model {model!r}: expected a preset ({', '.join(PRESETS)}) or a model folder")
    if (folder / "framecast.json").is_file():
        return _framecast_parts(folder)
    where, layout = locate(folder)
    if layout == "framecast":
        return ModelParts(DiTConfig.from_dict(read_json(where / "config.json", "DiT config")))
    cfg = wan_config(read_json(where / "config.json", "DiT config"), where / "config.json")
    vae = folder / "vae" / "config.json"
    return ModelParts(cfg, wan=True, text_params=_umt5_params(folder), vae_config=_vae_config(vae))


def _framecast_parts(folder: Path) -> ModelParts:
    pipe = read_json(folder / "framecast.json", "pipeline config")
    dit = DiTConfig.from_dict(read_json(folder / "dit" / "config.json", "DiT config"))
    ae = dict(read_json(folder / pipe.get("autoencoder", "autoencoder") / "config.json", "autoencoder config"))
    ae.pop("kind", None)
    text = str(pipe.get("text_encoder", "minilm"))
    if text not in MINILM_TOKENS:
        raise InputError(f"plan knows MiniLM text encoders ({', '.join(MINILM_TOKENS)}), not {text!r}")
    stream = StreamConfig(**pipe.get("stream", {}))
    return ModelParts(dit, stream, False, MINILM_TOKENS[text], MINILM_PARAMS, AutoencoderConfig.from_dict(ae))


def _umt5_params(folder: Path) -> int:
    """UMT5's parameters: from a diffusers folder's text_encoder/config.json (counted by transformers on the meta
    device), else Wan2.1's umt5-xxl."""
    cfg = folder / "text_encoder" / "config.json"
    if not cfg.is_file():
        return UMT5_XXL_PARAMS
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**read_json(cfg, "UMT5 config")))
    return sum(p.numel() for p in model.parameters())


def _vae_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return {k: v for k, v in read_json(path, "Wan VAE config").items() if not k.startswith("_")}


def plan_spec(
    parts: ModelParts,
    dtype: torch.dtype,
    size: tuple[int, int] | None = None,
    chunk_frames: int | None = None,
    recipe: Recipe | None = None,
    **stream_fields: Any,
) -> PlanSpec:
    """The spec of `parts` at frame size (width, height) in pixels (default: the DiT's own), `chunk_frames` latent
    frames per chunk (default: the recipe's, else the DiT's), under `recipe` and `stream_fields`."""
    spatial = 8  # the Wan VAE's and the tiny autoencoder's
    if parts.autoencoder is not None:
        spatial = parts.autoencoder.spatial_factor
    lat = latent_size(*size, spatial) if size is not None else (parts.dit.latent_height, parts.dit.latent_width)
    cf = chunk_frames or (recipe.chunk_frames if recipe is not None else parts.dit.chunk_frames)
    dit = dataclasses.replace(parts.dit, latent_height=lat[0], latent_width=lat[1], chunk_frames=cf)
    stream = parts.stream if recipe is None else apply_recipe(recipe, parts.stream, cf)
    stream = dataclasses.replace(stream, **stream_fields)
    half = dtype in (torch.float16, torch.bfloat16)
    text_bytes = parts.text_params * (size_of(torch.bfloat16) if parts.wan and half else 4)
    ae_bytes, dec = _autoencoder_bytes(parts, dit)
    return PlanSpec(dit, stream, dtype, parts.text_tokens, text_bytes, ae_bytes, dec)


def _autoencoder_bytes(parts: ModelParts, dit: DiTConfig) -> tuple[int, int]:
    """(weights, one stream's decoder state) in float32, as the pipeline runs the autoencoder."""
    if parts.wan:
        return wan_vae_bytes(parts.vae_config, dit.latent_height, dit.latent_width)
    ae = parts.autoencoder or AutoencoderConfig()
    with torch.device("meta"):
        params = sum(p.numel() for p in TinyAutoencoder(ae).parameters())
    return params * 4, ae.latent_channels * dit.latent_height * dit.latent_width * 4  # the last latent frame


def wan_vae_bytes(vae_config: dict[str, Any], height: int, width: int) -> tuple[int, int]:
    """The Wan VAE's weights and one stream's decoder cache in steady state (float32), from the VAE built and two
    latent frames decoded on the meta device: the cache holds two frames of every causal conv's input (3.5 GiB at
    480 x 832)."""
    try:
        from diffusers import AutoencoderKLWan
    except ImportError:
        raise ModelLoadError("planning a Wan VAE needs diffusers: pip install 'framecast[wan]'") from None
    from framecast.models.wan_vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE(cast(nn.Module, AutoencoderKLWan(**vae_config)))
        state = vae.new_decoder_state()
        for _ in range(2):
            vae.decode_chunks([torch.zeros(vae.latent_channels, 1, height, width)], [state])
    return sum(p.numel() for p in vae.vae.parameters()) * 4, state.nbytes()


def resolve(model: str, recipe_name: str | None) -> tuple[ModelParts, Recipe | None]:
    """The parts of `model` and the recipe by name, or the one its folder names."""
    return model_parts(model), choose_recipe(model, None, recipe_name)
