"""The one training loop under every stage: LR schedule, clipping, EMA, progress bar, checkpoints, resume."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from framecast.train.checkpoint import TrainState, load_checkpoint, lr_at, save_checkpoint, update_ema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    lr: float
    warmup: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    ema: float = 0.999
    checkpoint_every: int = 500
    seed: int = 0
    lr_scale: tuple[tuple[str, float], ...] = ()  # (name prefix, factor): those parameters learn at factor x lr


def new_state(model: nn.Module, cfg: LoopConfig) -> TrainState:
    """Model, a frozen EMA copy and AdamW."""
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    return TrainState(model, ema, opt)


def param_groups(model: nn.Module, cfg: LoopConfig) -> list[dict[str, Any]]:
    """The parameters in model order, cut into groups wherever their learning-rate factor (`cfg.lr_scale`, by
    name prefix; 1 otherwise) changes: one group for a plain model, a second for a new input registered last.
    The groups keep model order, so a checkpoint's optimizer state (indexed in that order) fits any grouping."""
    named = list(model.named_parameters())
    scale = [next((f for prefix, f in cfg.lr_scale if n.startswith(prefix)), 1.0) for n, _ in named]
    groups: list[dict[str, Any]] = []
    for (_, p), f in zip(named, scale, strict=True):
        if not groups or groups[-1]["lr_scale"] != f:
            groups.append({"params": [], "lr_scale": f})
        groups[-1]["params"].append(p)
    return groups


def resume(ts: TrainState, ckpt: Path) -> bool:
    """Load `ckpt` into `ts` if it exists; True if something was loaded."""
    if not (ckpt / "state.json").is_file():
        return False
    load_checkpoint(ts, ckpt)
    log.info("resumed from %s at step %d", ckpt, ts.step)
    return True


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The data generator of one step: a function of (seed, step) only, so a resumed run sees the same data."""
    return np.random.default_rng([seed, step])


def train(
    ts: TrainState,
    cfg: LoopConfig,
    loss_fn: Callable[[nn.Module, np.random.Generator, int], tuple[Tensor, dict[str, float]]],
    ckpt: Path,
    on_checkpoint: Callable[[TrainState], dict[str, float]] | None = None,
    desc: str = "train",
    until: int | None = None,
) -> TrainState:
    """Run from `ts.step` to `until` (default `cfg.steps`); `loss_fn(model, rng, step)` gives the loss and figures."""
    ts.model.train()
    end = cfg.steps if until is None else min(until, cfg.steps)
    bar = tqdm(total=cfg.steps, initial=ts.step, desc=desc, unit="step", dynamic_ncols=True)
    while ts.step < end:
        torch.manual_seed(cfg.seed * 1_000_003 + ts.step)
        loss, shown = loss_fn(ts.model, step_rng(cfg.seed, ts.step), ts.step)
        _update(ts, cfg, loss)
        ts.step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        if ts.step % cfg.checkpoint_every == 0 or ts.step == end:
            _checkpoint(ts, ckpt, on_checkpoint, bar)
    bar.close()
    return ts


def _update(ts: TrainState, cfg: LoopConfig, loss: Tensor) -> None:
    lr = lr_at(ts.step, cfg.steps, cfg.lr, cfg.warmup)
    for group in ts.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    ts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ts.model.parameters(), cfg.clip)
    ts.optimizer.step()
    update_ema(ts.ema, ts.model, min(cfg.ema, (1 + ts.step) / (10 + ts.step)))


def _checkpoint(
    ts: TrainState, ckpt: Path, on_checkpoint: Callable[[TrainState], dict[str, float]] | None, bar: tqdm
) -> None:
    if on_checkpoint is not None:
        figures = on_checkpoint(ts)
        ts.extra.setdefault("history", []).append({"step": ts.step, **figures})
        bar.write(f"step {ts.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    save_checkpoint(ts, ckpt)
    ts.model.train()
