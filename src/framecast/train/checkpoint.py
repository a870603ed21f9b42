"""Resumable training state in safetensors: model, EMA and optimizer tensors, plus a JSON of the rest.

A checkpoint folder holds `model.safetensors`, `ema.safetensors`, `optimizer.safetensors` and
`state.json` (step, optimizer hyper-parameters, anything the trainer adds). Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from framecast.errors import ModelLoadError


@dataclass
class TrainState:
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _flat_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state -> tensors named `state.{param}.{key}` and the JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    for idx, entries in sd["state"].items():
        for key, value in entries.items():
            tensors[f"state.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _unflat_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _weights(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(ts: TrainState, folder: Path) -> None:
    """Write the state to `folder` atomically (a temp folder renamed over the old one)."""
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(_weights(ts.model), str(tmp / "model.safetensors"))
    save_file(_weights(ts.ema), str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = _flat_optimizer(ts.optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    meta = {"step": ts.step, "optimizer": opt_meta, "extra": ts.extra}
    (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def load_checkpoint(ts: TrainState, folder: Path) -> None:
    """Restore `ts` in place from `folder`; a clear `ModelLoadError` if it is incomplete.

    A model may have grown since the checkpoint: parameters it registers after all the saved ones (a new
    input, such as the DiT's structure embedding) keep their initial values and start with a fresh
    optimizer state; everything saved is restored. The optimizer's grouping (learning-rate scales) is the
    current one: its state is indexed in model order whatever the groups.
    """
    files = ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise ModelLoadError(f"checkpoint {folder} is incomplete: missing {', '.join(missing)}")
    meta = json.loads((folder / "state.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    new = _grown(ts.model, weights, folder)
    ts.model.load_state_dict(weights, strict=not new)
    ts.ema.load_state_dict(load_file(str(folder / "ema.safetensors")), strict=not new)
    opt = _unflat_optimizer(load_file(str(folder / "optimizer.safetensors")), meta["optimizer"])
    current = ts.optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in opt["param_groups"]] != [len(g["params"]) for g in current]:
        opt["param_groups"] = current  # grown, or grouped otherwise: the state is indexed in model order
    ts.optimizer.load_state_dict(opt)
    ts.step, ts.extra = int(meta["step"]), dict(meta.get("extra", {}))


def _grown(model: nn.Module, saved: dict[str, Tensor], folder: Path) -> list[str]:
    """Names of the model's parameters the checkpoint lacks: [] for the same model; an error unless they are
    the model's last parameters (so the saved optimizer state keeps its order) and nothing saved is unknown."""
    names = [n for n, _ in model.named_parameters()]
    new = [n for n in names if n not in saved]
    unknown = sorted(set(saved) - set(model.state_dict()))
    if unknown or (new and names[-len(new) :] != new):
        raise ModelLoadError(
            f"checkpoint {folder} does not fit this model: unknown {unknown[:3]}, missing {new[:3]}"
            " (only parameters registered after all the saved ones may be new)"
        )
    return new


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameters and float buffers."""
    for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if e.is_floating_point():
            e.lerp_(m.detach(), 1 - decay)
        else:
            e.copy_(m)


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of `base` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
