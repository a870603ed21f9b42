"""Model folders: `config.json` (the constructor's dataclass) beside `model.safetensors`.

Weights are only ever read with safetensors, never unpickled. Every failure is a `ModelLoadError`
that names the file and what was expected there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from framecast.errors import ModelLoadError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_folder(module: nn.Module, config: dict[str, Any], folder: str | Path) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors`; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_config(folder: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in `folder/config.json`."""
    root = Path(folder)
    if not root.is_dir():
        raise ModelLoadError(
            f"{what} folder not found: {root} (expected a folder with {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{what} config not found: {path} (expected the model settings as JSON)")
    return read_json(path, what)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in the file `path`; any failure is a one-line `ModelLoadError`."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what} {path} must hold a JSON object")
    return data


def read_weights(folder: str | Path, what: str) -> dict[str, Tensor]:
    """Tensors of `folder/model.safetensors`, on the CPU."""
    return read_safetensors(Path(folder) / WEIGHTS_FILE, f"{what} weights")


def read_safetensors(path: Path, what: str) -> dict[str, Tensor]:
    """Tensors of one safetensors file, on the CPU; a missing or damaged file is a one-line `ModelLoadError`."""
    if not path.is_file():
        raise ModelLoadError(f"{what} not found: {path} (expected a safetensors file)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{what} {path} is truncated or not safetensors: {one_line(err)}") from None


def one_line(err: BaseException) -> str:
    """The first line of an error's message, after its type (a bare KeyError's message is just the key)."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_into(module: nn.Module, state: dict[str, Tensor], path: Path, what: str, assign: bool = False) -> None:
    """Load `state` strictly, with a clear error on missing/unexpected keys or the first shape mismatch.

    `assign`: the module's parameters become the tensors of `state` (their dtypes kept), as a module built on
    the meta device needs."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelLoadError(f"{what} weights {path} miss tensors {missing[:3]} that {CONFIG_FILE} requires")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ModelLoadError(
            f"{what} weights {path} have tensors {unexpected[:3]} that {CONFIG_FILE} does not describe"
        )
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            got, want = tuple(state[name].shape), tuple(tensor.shape)
            raise ModelLoadError(f"{what} weights {path}: {name} has shape {got}, but {CONFIG_FILE} gives {want}")
    module.load_state_dict(state, assign=assign)
