"""Wan2.1-family DiT weights from local files into `CausalWanDiT`; nothing is downloaded.

A base is a folder in one of three layouts:

- original Wan2.1 (`Wan-AI/Wan2.1-T2V-1.3B`): `config.json` (`dim`, `num_heads`, `in_dim`, ...) beside
  `diffusion_pytorch_model.safetensors`, or shards named by `diffusion_pytorch_model.safetensors.index.json`;
  parameter names as framecast's (models/dit.py follows the original checkpoints);
- diffusers (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, a `WanPipeline` folder): `transformer/config.json`
  (`num_attention_heads`, `attention_head_dim`, ...) and its safetensors in the same file pattern, with
  diffusers' parameter names (converted by models/convert.py); the `transformer/` folder itself also works;
- framecast's own model folder (`config.json` with a `DiTConfig` + `model.safetensors`).

A causal checkpoint is a file applied over a base (which gives the configuration): a torch file with a dict
whose weights sit under `generator_ema` (preferred), `generator` (Self-Forcing, CausVid), `state_dict` or
`model`, or a bare state dict; or a `.safetensors` file (Krea). Keys may carry wrapper prefixes (`model.`,
`module.`, ...) and may be in either naming. Tensors it holds replace the base's; tensors it lacks keep the
base's. A LoRA (`generator_lora` in the checkpoint or in its own file: peft's `lora_A`/`lora_B` or
`lora_down`/`lora_up` with an optional `alpha`) is merged into the weights at load: W + (alpha / rank) *
lora_scale * B @ A, computed in float32.

Pickled files are only read with `torch.load(..., weights_only=True)`; every failure is a one-line
`ModelLoadError` that names the file and what was expected there.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framecast.errors import ModelLoadError
from framecast.models.config import DiTConfig
from framecast.models.convert import from_diffusers, from_diffusers_name, is_diffusers_name
from framecast.models.dit import CausalWanDiT, keeps_float32
from framecast.models.weights import CONFIG_FILE, WEIGHTS_FILE, load_into, one_line, read_json, read_safetensors

WAN_WEIGHTS = "diffusion_pytorch_model.safetensors"
WAN_INDEX = "diffusion_pytorch_model.safetensors.index.json"
WAN_PICKLED = "diffusion_pytorch_model.bin"
CHECKPOINT_KEYS = ("generator_ema", "generator", "state_dict", "model")  # in order of preference
LORA_KEYS = ("generator_lora",)
# wrapper prefixes of training code (Self-Forcing's `model.`, DDP's `module.`, torch.compile's `_orig_mod.`,
# peft's `base_model.model.`, ComfyUI's `diffusion_model.`, diffusers pipelines' `transformer.`)
PREFIXES = ("base_model.model.", "model.", "module.", "_orig_mod.", "diffusion_model.", "transformer.")
_LORA = re.compile(r"^(?P<target>.+)\.(?P<part>lora_A|lora_B|lora_down|lora_up)(?:\.[A-Za-z_]\w*)?\.weight$")
_ALPHA = re.compile(r"^(?P<target>.+)\.alpha$")


# -- configuration -------------------------------------------------------------------------------------------

# original Wan2.1 config.json -> DiTConfig
_WAN_FIELDS = {
    "dim": "dim",
    "num_heads": "num_heads",
    "num_layers": "num_layers",
    "ffn_dim": "ffn_dim",
    "in_dim": "in_channels",
    "out_dim": "out_channels",
    "text_dim": "text_dim",
    "freq_dim": "freq_dim",
    "eps": "eps",
    "patch_size": "patch_size",
    "cross_attn_norm": "cross_attn_norm",
}
# diffusers' WanTransformer3DModel config.json -> DiTConfig (dim is num_attention_heads * attention_head_dim)
_DIFFUSERS_FIELDS = {
    "num_attention_heads": "num_heads",
    "num_layers": "num_layers",
    "ffn_dim": "ffn_dim",
    "in_channels": "in_channels",
    "out_channels": "out_channels",
    "text_dim": "text_dim",
    "freq_dim": "freq_dim",
    "eps": "eps",
    "patch_size": "patch_size",
    "cross_attn_norm": "cross_attn_norm",
}
# image-to-video and first-last-frame models set the image keys; framecast runs text-to-video
_DIFFUSERS_REQUIRED = {
    "qk_norm": "rms_norm_across_heads",
    "image_dim": None,
    "added_kv_proj_dim": None,
    "pos_embed_seq_len": None,
}
_DIFFUSERS_IGNORED = {"attention_head_dim", "rope_max_seq_len"}  # framecast computes RoPE exactly at any position
_WAN_IGNORED = {"text_len", "model_type", "window_size", "qk_norm"}  # checked in wan_config


def wan_config(raw: dict[str, Any], where: str | Path, **overrides: Any) -> DiTConfig:
    """A `DiTConfig` from a Wan2.1 `config.json` in the original or the diffusers layout.

    `overrides`: framecast's own settings, which a Wan config does not hold (`chunk_frames`, default 3 as in
    Self-Forcing and CausVid; `latent_height`, `latent_width`, default 60 x 104 for 480 x 832), or any other
    `DiTConfig` field. The text length (`text_len`, 512) goes to `extra`.
    """
    diffusers = "num_attention_heads" in raw or raw.get("_class_name") == "WanTransformer3DModel"
    fields = _DIFFUSERS_FIELDS if diffusers else _WAN_FIELDS
    ignored = _DIFFUSERS_IGNORED if diffusers else _WAN_IGNORED
    layout = "diffusers WanTransformer3DModel" if diffusers else "Wan2.1"
    unknown = sorted(k for k in raw if not k.startswith("_") and k not in fields and k not in ignored)
    if diffusers:
        unknown = [k for k in unknown if k not in _DIFFUSERS_REQUIRED]
    if unknown:
        raise ModelLoadError(f"{where}: unknown {layout} config keys {unknown} (expected {sorted(fields)})")
    kw: dict[str, Any] = {ours: raw[theirs] for theirs, ours in fields.items() if theirs in raw}
    if diffusers:
        for key, want in _DIFFUSERS_REQUIRED.items():
            if raw.get(key, want) != want:
                raise ModelLoadError(f"{where}: {key} is {raw[key]!r}; framecast runs Wan2.1 text-to-video ({want!r})")
        if "num_attention_heads" not in raw or "attention_head_dim" not in raw:
            raise ModelLoadError(f"{where}: expected num_attention_heads and attention_head_dim")
        kw["dim"] = int(raw["num_attention_heads"]) * int(raw["attention_head_dim"])
    else:
        missing = [k for k in ("dim", "num_heads", "num_layers", "ffn_dim") if k not in raw]
        if missing:
            raise ModelLoadError(f"{where}: a Wan2.1 config needs {missing}")
        model_type = raw.get("model_type", "t2v")
        if model_type != "t2v":
            raise ModelLoadError(f"{where}: model_type {model_type!r}; framecast runs Wan2.1 text-to-video ('t2v')")
        if list(raw.get("window_size", (-1, -1))) != [-1, -1]:
            raise ModelLoadError(f"{where}: window_size {raw['window_size']}; expected [-1, -1] (full attention)")
        if not raw.get("qk_norm", True):
            raise ModelLoadError(f"{where}: qk_norm false; Wan2.1 (and framecast) normalise queries and keys")
        if "text_len" in raw:
            kw["extra"] = {"text_len": raw["text_len"]}
    if "patch_size" in kw:
        kw["patch_size"] = tuple(kw["patch_size"])
    return _make_config(kw, overrides, where)


def _make_config(kw: dict[str, Any], overrides: dict[str, Any], where: str | Path) -> DiTConfig:
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ModelLoadError(f"unknown DiT settings {bad} for {where}")
    try:
        return DiTConfig(**{**kw, **overrides})
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{where}: bad DiT config: {err}") from None


# -- files ---------------------------------------------------------------------------------------------------


def read_torch_file(path: Path, what: str) -> Any:
    """The object in a torch file, unpickled with `weights_only=True` (tensors and plain containers only)."""
    if not path.is_file():
        raise ModelLoadError(f"{what} not found: {path}")
    try:
        try:  # memory-mapped: tensors of the entries not used (a critic, the other generator) are never read
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        holds = f"a {found.group(1)} object" if found else "objects other than tensors"
        raise ModelLoadError(
            f"{what} {path} holds {holds}; framecast reads pickled files only with torch.load(weights_only=True), "
            "so save a plain dict of tensors (or safetensors)"
        ) from None
    except Exception as err:  # a damaged pickle fails anywhere in the unpickler (EOFError, KeyError, ...)
        raise ModelLoadError(f"{what} {path} is truncated or not a torch file: {one_line(err)}") from None


def read_tensor_file(path: str | Path, what: str) -> Any:
    """A `.safetensors` file (a dict of tensors) or a torch file (any weights-only object)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return read_safetensors(p, what)
    return read_torch_file(p, what)


# -- bases ---------------------------------------------------------------------------------------------------


@dataclass
class WanState:
    """A DiT configuration with its full state dict (framecast names) and what was read, line by line."""

    config: DiTConfig
    state: dict[str, Tensor]
    notes: list[str] = field(default_factory=list)


def locate(path: str | Path) -> tuple[Path, str]:
    """The folder holding the DiT's config.json and its layout: "wan", "diffusers" or "framecast"."""
    root = Path(path)
    expected = (
        f"expected a Wan2.1 folder ({CONFIG_FILE} + {WAN_WEIGHTS} or shards with {WAN_INDEX}), a diffusers "
        f"WanPipeline folder (transformer/{CONFIG_FILE}) or a framecast model folder ({CONFIG_FILE} + {WEIGHTS_FILE})"
    )
    if not root.exists():
        raise ModelLoadError(f"DiT base folder not found: {root} ({expected})")
    if not root.is_dir():
        raise ModelLoadError(f"DiT base {root} is a file; {expected}")
    if (root / "transformer" / CONFIG_FILE).is_file():
        return root / "transformer", "diffusers"
    cfg = root / CONFIG_FILE
    if not cfg.is_file():
        raise ModelLoadError(f"no {CONFIG_FILE} in {root}: {expected}")
    raw = read_json(cfg, "DiT config")
    if "num_attention_heads" in raw or raw.get("_class_name") == "WanTransformer3DModel":
        return root, "diffusers"
    if "in_dim" in raw or raw.get("_class_name") == "WanModel":
        return root, "wan"
    if "in_channels" in raw and "num_heads" in raw:
        return root, "framecast"
    raise ModelLoadError(f"{cfg} is no Wan2.1, diffusers or framecast DiT config: {expected}")


def read_base(path: str | Path, **overrides: Any) -> WanState:
    """Configuration and weights of a base folder in any of the three layouts (see the module docstring)."""
    folder, layout = locate(path)
    raw = read_json(folder / CONFIG_FILE, "DiT config")
    if layout == "framecast":
        own = DiTConfig.from_dict(raw).to_dict()
        cfg = _make_config({**own, "patch_size": tuple(own["patch_size"])}, overrides, folder / CONFIG_FILE)
        state = read_safetensors(folder / WEIGHTS_FILE, "DiT weights")
        notes = [f"framecast folder {folder}"]
    else:
        cfg = wan_config(raw, folder / CONFIG_FILE, **overrides)
        state, files = _read_wan_weights(folder)
        notes = [f"{'diffusers' if layout == 'diffusers' else 'Wan2.1'} layout: {folder} ({files} weight file(s))"]
    if any(is_diffusers_name(k) for k in state):
        state = from_diffusers(state)
    state = {k: v for k, v in state.items() if not k.endswith("norm_added_q.weight")}  # diffusers ignores it too
    return WanState(cfg, state, notes)


def _read_wan_weights(folder: Path) -> tuple[dict[str, Tensor], int]:
    """The tensors of `diffusion_pytorch_model*.safetensors` in `folder` (one file or shards with an index)."""
    index = folder / WAN_INDEX
    if index.is_file():
        data = read_json(index, "weight index")
        wmap = data.get("weight_map")
        if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
            raise ModelLoadError(f"weight index {index} has no weight_map of tensor names to shard files")
        state: dict[str, Tensor] = {}
        shards = sorted(set(wmap.values()))
        for name in shards:
            shard = folder / name
            if not shard.is_file():
                raise ModelLoadError(f"weight index {index} names shard {name}, which is missing from {folder}")
            part = read_safetensors(shard, "DiT weight shard")
            lacking = sorted(k for k, f in wmap.items() if f == name and k not in part)
            if lacking:
                raise ModelLoadError(f"DiT weight shard {shard} lacks tensors {lacking[:3]} that {index.name} lists")
            state.update(part)
        return state, len(shards)
    single = folder / WAN_WEIGHTS
    if single.is_file():
        return read_safetensors(single, "DiT weights"), 1
    shards = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if shards:
        raise ModelLoadError(
            f"{folder} holds {len(shards)} diffusion_pytorch_model*.safetensors file(s) but no {WAN_INDEX}"
        )
    if (folder / WAN_PICKLED).is_file():
        return _tensors(read_torch_file(folder / WAN_PICKLED, "DiT weights"), folder / WAN_PICKLED), 1
    raise ModelLoadError(f"no DiT weights in {folder}: expected {WAN_WEIGHTS}, or shards listed in {WAN_INDEX}")


def _tensors(obj: Any, where: Path, entry: str = "") -> dict[str, Tensor]:
    """`obj` as a dict of tensors with string names, or a clear error."""
    at = f" (under {entry!r})" if entry else ""
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{where}{at} holds a {type(obj).__name__}, not a dict of tensors")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise ModelLoadError(f"{where}{at}: entry {k!r} is of type {type(v).__name__}, not a tensor")
    return obj


# -- causal checkpoints and LoRA -----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """The weights (framecast names) and LoRA tensors (LoRA names) that one checkpoint file holds."""

    weights: dict[str, Tensor]
    lora: dict[str, Tensor]
    entry: str  # where in the file the weights were ("" for a bare state dict)


def read_checkpoint(path: str | Path, key: str | None = None) -> Checkpoint:
    """The weights and LoRA tensors of a causal checkpoint file (see the module docstring).

    `key`: the entry of a torch file's dict to take the weights from; by default the first of
    `CHECKPOINT_KEYS` present (so `generator_ema` before `generator`), else the whole dict.
    """
    p = Path(path)
    obj = read_tensor_file(p, "checkpoint")
    if not isinstance(obj, dict):
        raise ModelLoadError(f"checkpoint {p} holds a {type(obj).__name__}, expected a dict of tensors")
    lora: dict[str, Tensor] = {}
    for lk in LORA_KEYS:
        if lk in obj:
            lora.update(_tensors(obj[lk], p, lk))
    if key is not None:
        if key not in obj:
            raise ModelLoadError(f"checkpoint {p} has no entry {key!r}; it has {sorted(map(str, obj))[:8]}")
        entry = key
    else:
        entry = next((k for k in CHECKPOINT_KEYS if isinstance(obj.get(k), dict)), "")
    if entry:
        raw = _tensors(obj[entry], p, entry)
    elif lora and all(k in LORA_KEYS or not isinstance(v, Tensor) for k, v in obj.items()):
        raw = {}  # a LoRA file (LongLive's lora.pt: generator_lora and critic_lora)
    elif all(isinstance(v, Tensor) for v in obj.values()):
        raw = _tensors(obj, p)
    else:
        raise ModelLoadError(
            f"checkpoint {p} holds no weights: expected a dict of tensors or one under "
            f"{', '.join(CHECKPOINT_KEYS + LORA_KEYS)}; found entries {sorted(map(str, obj))[:8]}"
        )
    weights: dict[str, Tensor] = {}
    for k, v in raw.items():
        name = strip_prefixes(k)
        if _LORA.match(name) or _ALPHA.match(name):
            lora[k] = v
        else:
            name = name.replace(".base_layer.", ".")  # a peft-wrapped model's own weights
            if name in weights:
                raise ModelLoadError(f"checkpoint {p} holds {name} twice (under two wrapper prefixes)")
            weights[name] = v
    if any(is_diffusers_name(k) for k in weights):
        weights = from_diffusers(weights)
    if not weights and not lora:
        raise ModelLoadError(f"checkpoint {p}{f' entry {entry!r}' if entry else ''} holds no tensors")
    return Checkpoint(weights, lora, entry)


def strip_prefixes(key: str) -> str:
    """`key` without the wrapper prefixes of `PREFIXES` (any number, in any order)."""
    while True:
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        else:
            return key


def apply_checkpoint(state: dict[str, Tensor], ckpt: Checkpoint, where: str | Path) -> int:
    """Replace the tensors of `state` that `ckpt` holds (same names and shapes required); returns how many."""
    unexpected = sorted(set(ckpt.weights) - set(state))
    if unexpected:
        raise ModelLoadError(
            f"checkpoint {where} has tensors {unexpected[:3]} ({len(unexpected)} in all) that its base does not; "
            "is it for another model (image-to-video, another size)?"
        )
    for name, t in ckpt.weights.items():
        if t.shape != state[name].shape:
            raise ModelLoadError(
                f"checkpoint {where}: {name} has shape {tuple(t.shape)}, but the base gives {tuple(state[name].shape)}"
            )
        state[name] = t
    return len(ckpt.weights)


def merge_lora(
    state: dict[str, Tensor], lora: dict[str, Tensor], where: str | Path, alpha: float | None = None, scale: float = 1.0
) -> tuple[int, int]:
    """Merge LoRA pairs into `state` in place: W + (alpha / rank) * scale * B @ A, in float32, stored in W's dtype.

    Pairs are peft's `T.lora_A.weight` (A: rank x in) and `T.lora_B.weight` (B: out x rank), or
    `T.lora_down.weight` / `T.lora_up.weight` with an optional `T.alpha`; T names a linear layer (framecast or
    diffusers naming, wrapper prefixes allowed). `alpha`: used where the file stores none; None means alpha =
    rank (a scale of 1, as LongLive's rank 256 / alpha 256). Returns (pairs merged, rank of the first).
    """
    pairs: dict[str, dict[str, Tensor]] = {}
    alphas: dict[str, float] = {}
    for k, v in lora.items():
        name = strip_prefixes(k)
        m = _LORA.match(name)
        if m:
            part = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B"}[m["part"]]
            pairs.setdefault(m["target"], {})[part] = v
            continue
        a = _ALPHA.match(name)
        if a and v.numel() == 1:
            alphas[a["target"]] = float(v)
            continue
        raise ModelLoadError(f"LoRA in {where}: {k!r} is not a lora_A/lora_B, lora_down/lora_up or alpha tensor")
    rank0 = 0
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ModelLoadError(f"LoRA in {where}: {target} has only {'A (down)' if 'A' in ab else 'B (up)'}")
        name = target + ".weight"
        if is_diffusers_name(name):
            name = from_diffusers_name(name)
        if name not in state:
            raise ModelLoadError(f"LoRA in {where} targets {target}, which the model does not have (as {name})")
        w, A, B = state[name], ab["A"], ab["B"]
        rank = A.shape[0]
        if w.dim() != 2 or A.dim() != 2 or B.dim() != 2 or B.shape[1] != rank or (B.shape[0], A.shape[1]) != w.shape:
            raise ModelLoadError(
                f"LoRA in {where}: {target} has A {tuple(A.shape)} and B {tuple(B.shape)}, "
                f"which do not fit its weight {tuple(w.shape)} (expected a linear weight (out, in), A (rank, in), "
                "B (out, rank))"
            )
        s = scale * (alphas.get(target, alpha if alpha is not None else rank) / rank)
        state[name] = (w.float() + s * (B.float() @ A.float())).to(w.dtype)
        rank0 = rank0 or rank
    return len(pairs), rank0


# -- loading -------------------------------------------------------------------------------------------------


def read_wan_state(
    base: str | Path,
    checkpoint: str | Path | None = None,
    lora: str | Path | None = None,
    *,
    checkpoint_key: str | None = None,
    lora_alpha: float | None = None,
    lora_scale: float = 1.0,
    **overrides: Any,
) -> WanState:
    """The configuration of `base` with its weights, a checkpoint's over them, LoRA merged (see load_wan_dit)."""
    result = read_base(base, **overrides)
    ckpt_lora: dict[str, Tensor] = {}
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint, checkpoint_key)
        if ckpt.weights:
            n = apply_checkpoint(result.state, ckpt, checkpoint)
            at = f" entry {ckpt.entry!r}" if ckpt.entry else ""
            result.notes.append(f"checkpoint {checkpoint}{at}: {n} of {len(result.state)} tensors")
        ckpt_lora = ckpt.lora
        if ckpt_lora:
            pairs, rank = merge_lora(result.state, ckpt_lora, checkpoint, lora_alpha, lora_scale)
            result.notes.append(f"LoRA in {checkpoint}: {pairs} layers merged, rank {rank}")
    if lora is not None:
        extra = read_checkpoint(lora)
        if extra.weights:
            raise ModelLoadError(
                f"LoRA file {lora} also holds plain weights ({sorted(extra.weights)[:2]}); pass it as the checkpoint"
            )
        pairs, rank = merge_lora(result.state, extra.lora, lora, lora_alpha, lora_scale)
        result.notes.append(f"LoRA {lora}: {pairs} layers merged, rank {rank}")
    return result


def load_wan_dit(
    base: str | Path,
    checkpoint: str | Path | None = None,
    lora: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    checkpoint_key: str | None = None,
    lora_alpha: float | None = None,
    lora_scale: float = 1.0,
    **overrides: Any,
) -> CausalWanDiT:
    """A `CausalWanDiT` from a base folder, optionally a causal checkpoint over it and a LoRA merged in.

    The model is built on the meta device and takes the loaded tensors, converted once to `dtype` (the norms,
    modulation, timestep path and head to float32 as `CausalWanDiT` keeps them), so no random float32 copy of
    the weights is ever made. `overrides`: `DiTConfig` settings a Wan config lacks (`chunk_frames`,
    `latent_height`, `latent_width`).
    """
    loaded = read_wan_state(
        base,
        checkpoint,
        lora,
        checkpoint_key=checkpoint_key,
        lora_alpha=lora_alpha,
        lora_scale=lora_scale,
        **overrides,
    )
    state = loaded.state
    half = dtype in (torch.float16, torch.bfloat16)
    for name in list(state):  # one tensor at a time, so the source's copy of each is freed as it goes
        state[name] = state[name].to(torch.float32 if half and keeps_float32(name) else dtype)
    with torch.device("meta"):
        model = CausalWanDiT(loaded.config)
    load_into(model, state, Path(base), "DiT", assign=True)
    return model.to(device).eval()
