"""Wan2.1 VAE weights from local files into `WanVAE`; nothing is downloaded.

Two layouts:

- diffusers (a `WanPipeline` folder's `vae/`): `config.json` (`AutoencoderKLWan`'s constructor arguments) beside
  `diffusion_pytorch_model.safetensors`, in diffusers' names;
- original Wan2.1: one file, `Wan2.1_VAE.pth` (a pickled state dict, read with `torch.load(weights_only=True)`)
  or the same tensors as `.safetensors`, in the original code's names (`encoder.downsamples.3.resample.1.weight`,
  `decoder.upsamples.4.shortcut.weight`, `conv1.weight`, ...). The file holds no configuration: the sizes are
  read off the tensors' shapes, and the latent statistics are Wan2.1's (16 latent channels).

Name conversion (original -> diffusers): the encoder's flat `downsamples` list is diffusers' flat `down_blocks`
(same indices); the decoder's flat `upsamples` list holds, per stage, `num_res_blocks + 1` residual blocks and
then one resampler, which diffusers groups as `up_blocks.S.resnets.J` and `up_blocks.S.upsamplers.0`; inside a
residual block `residual.0/2/3/6` are `norm1/conv1/norm2/conv2` and `shortcut` is `conv_shortcut`; `middle.0/1/2`
are `mid_block.resnets.0`, `mid_block.attentions.0`, `mid_block.resnets.1`; `head.0/2` are `norm_out/conv_out`;
the top-level `conv1/conv2` are `quant_conv/post_quant_conv`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from framecast.errors import ModelLoadError
from framecast.models.wan_vae import WanVAE, diffusers_wan
from framecast.models.wan_weights import read_tensor_file
from framecast.models.weights import CONFIG_FILE, read_json, read_safetensors

DIFFUSERS_VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
ORIGINAL_VAE_FILES = ("Wan2.1_VAE.pth", "Wan2.1_VAE.safetensors")

_RESIDUAL = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.", "residual.6.": "conv2."}
_RESIDUAL.update({"shortcut.": "conv_shortcut."})
_MIDDLE = {
    "middle.0.": "mid_block.resnets.0.",
    "middle.1.": "mid_block.attentions.0.",
    "middle.2.": "mid_block.resnets.1.",
}
_HEAD = {"head.0.": "norm_out.", "head.2.": "conv_out.", "conv1.": "conv_in."}
_TOP = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}


def _inner(rest: str) -> str:
    """The name inside a residual block (or a resampler, kept as it is)."""
    for old, new in _RESIDUAL.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def original_to_diffusers_name(key: str, num_res_blocks: int) -> str:
    """One original Wan2.1 VAE tensor name in diffusers' `AutoencoderKLWan` naming."""
    half, _, rest = key.partition(".")
    if half not in ("encoder", "decoder"):
        return next((new + key[len(old) :] for old, new in _TOP.items() if key.startswith(old)), key)
    for table in (_MIDDLE, _HEAD):
        for old, new in table.items():
            if rest.startswith(old):
                return f"{half}.{new}{_inner(rest[len(old) :]) if table is _MIDDLE else rest[len(old) :]}"
    m = re.match(r"(downsamples|upsamples)\.(\d+)\.(.*)", rest)
    if m is None:
        return key
    index, inner = int(m[2]), _inner(m[3])
    if m[1] == "downsamples":
        return f"encoder.down_blocks.{index}.{inner}"
    stage, j = divmod(index, num_res_blocks + 2)  # per stage: num_res_blocks + 1 residual blocks, one resampler
    part = f"resnets.{j}" if j <= num_res_blocks else "upsamplers.0"
    return f"decoder.up_blocks.{stage}.{part}.{inner}"


def original_config(state: dict[str, Tensor], where: Path) -> dict[str, Any]:
    """`AutoencoderKLWan` arguments read off an original Wan2.1 VAE state dict's shapes."""
    try:
        base = state["encoder.conv1.weight"].shape[0]
        z_dim = state["conv2.weight"].shape[0]
        decoder_in = state["decoder.conv1.weight"].shape[0]
    except KeyError as err:
        raise ModelLoadError(f"{where} is no Wan2.1 VAE: it lacks {err.args[0]}") from None
    blocks = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.downsamples.")})
    resample = [i for i in blocks if f"encoder.downsamples.{i}.resample.1.weight" in state]
    residual = [i for i in blocks if f"encoder.downsamples.{i}.residual.6.weight" in state]
    stages = len(resample) + 1
    if len(resample) + len(residual) != len(blocks) or len(residual) % stages:
        raise ModelLoadError(f"{where}: its encoder blocks are not Wan2.1's (residual blocks and resamplers only)")
    per = len(residual) // stages
    mult = [state[f"encoder.downsamples.{residual[s * per]}.residual.6.weight"].shape[0] // base for s in range(stages)]
    temporal = [f"encoder.downsamples.{i}.time_conv.weight" in state for i in resample]
    if z_dim != 16:
        raise ModelLoadError(
            f"{where} has {z_dim} latent channels; a Wan2.1 VAE file has 16 (its statistics are fixed)"
        )
    decoder_base = decoder_in // mult[-1]
    return dict(
        base_dim=base, decoder_base_dim=None if decoder_base == base else decoder_base, z_dim=z_dim, dim_mult=mult,
        num_res_blocks=per, attn_scales=[], temperal_downsample=temporal,
    )  # fmt: skip


def _construct(config: dict[str, Any], where: Path) -> nn.Module:
    """`AutoencoderKLWan(**config)` on the meta device (no random weights are made)."""
    cls = diffusers_wan().AutoencoderKLWan
    name = config.get("_class_name", "AutoencoderKLWan")
    if name != "AutoencoderKLWan":
        raise ModelLoadError(f"{where} describes a {name}, expected AutoencoderKLWan")
    try:
        with torch.device("meta"):
            model: nn.Module = cls.from_config(config)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ModelLoadError(f"{where}: not a valid AutoencoderKLWan config ({err})") from None
    return model


def _load(model: nn.Module, state: dict[str, Tensor], where: Path, dtype: torch.dtype) -> None:
    """Load `state` strictly (clear errors naming the file), converted to `dtype`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[:3]}" if missing else f"has tensors {unexpected[:3]} the VAE does not"
        raise ModelLoadError(f"Wan VAE weights {where} {what} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, t in expected.items():
        if state[name].shape != t.shape:
            got, want = tuple(state[name].shape), tuple(t.shape)
            raise ModelLoadError(f"Wan VAE weights {where}: {name} has shape {got}, but its config gives {want}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)


def load_wan_vae(path: str | Path, dtype: torch.dtype = torch.float32) -> WanVAE:
    """A `WanVAE` from a diffusers `vae/` folder or an original `Wan2.1_VAE.pth` (or .safetensors) file, on CPU."""
    p = Path(path)
    if p.is_dir():
        config = read_json(p / CONFIG_FILE, "Wan VAE config") if (p / CONFIG_FILE).is_file() else None
        if config is None:
            raise ModelLoadError(f"no {CONFIG_FILE} in the Wan VAE folder {p} (expected diffusers' vae/ layout)")
        state = read_safetensors(p / DIFFUSERS_VAE_WEIGHTS, "Wan VAE weights")
        where = p / DIFFUSERS_VAE_WEIGHTS
        model = _construct(config, p / CONFIG_FILE)
    else:
        if not p.is_file():
            raise ModelLoadError(
                f"Wan VAE not found: {p} (expected a diffusers vae/ folder or {ORIGINAL_VAE_FILES[0]})"
            )
        obj = read_tensor_file(p, "Wan VAE weights")
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise ModelLoadError(f"Wan VAE weights {p} hold a {type(obj).__name__}, not a dict of tensors")
        config = original_config(obj, p)
        state = {original_to_diffusers_name(k, config["num_res_blocks"]): v for k, v in obj.items()}
        where = p
        model = _construct(config, p)
    _load(model, state, where, dtype)
    return WanVAE(model).eval()
