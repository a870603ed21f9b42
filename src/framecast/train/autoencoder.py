"""Stage 1: train the built-in autoencoder on frame groups of the procedural world.

Loss: L1 + MSE of the reconstruction, weighted towards object pixels (objects cover a few percent of a
frame, and an unweighted loss lets small stars and triangles blur into blobs). The decoder also sees
slightly noised latents, so that the imperfect latents a diffusion model makes still decode cleanly.
With a decoder that sees the previous latent frame (`decoder_context`), batches hold two consecutive groups,
so the decoder learns both a stream's first group (its own past) and a later one.
After training, per-channel latent statistics are folded into the autoencoder (`set_latent_stats`), so
the DiT sees unit-variance latents.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder, save_autoencoder, with_decoder_context
from framecast.train.data import frame_groups, steady_groups
from framecast.train.loop import LoopConfig, new_state, resume, step_rng, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AETrainConfig:
    model: AutoencoderConfig = field(
        default_factory=lambda: AutoencoderConfig(
            latent_channels=16, width=64, max_width=128, res_blocks=2, unshuffle=4, decoder_context=1
        )
    )
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=3000, lr=1e-3, ema=0.995))
    batch: int = 16
    height: int = 64
    width: int = 64
    latent_noise: float = 0.1  # std of noise added to latents, relative to their std
    latent_penalty: float = 1e-4
    object_weight: float = 8.0  # extra loss weight of pixels that differ from their row's background
    decoder_lr: float = 3e-4  # the decoder-only stage (`finetune_decoder`)
    decoder_steady: float = 0.5  # share of its batches from steady scenes: the sizes and speeds the DiT draws
    decoder_object_weight: float = 16.0  # its object weight: small stars' points need the sharper edges
    temporal_weight: float = 0.0  # weight of the error of frame-to-frame changes (seams between groups jump)


def object_mask(x: Tensor, threshold: float = 0.15) -> Tensor:
    """(B, 3, T, H, W) pixels -> (B, 1, T, H, W) float, 1 on and around objects, 0 on the background.

    The world's backgrounds are constant along each row, and objects cover well under half a row, so a
    row's median is its background; pixels away from it (and their neighbours, for the edges) are objects.
    """
    background = x.median(dim=-1, keepdim=True).values  # (B, 3, T, H, 1)
    away = ((x - background).abs().amax(dim=1, keepdim=True) > threshold).float()  # (B, 1, T, H, W)
    B, _, T, H, W = away.shape
    grown = torch.nn.functional.max_pool2d(away.view(B * T, 1, H, W), 3, stride=1, padding=1)
    return grown.view(B, 1, T, H, W)


def reconstruction_loss(ae: TinyAutoencoder, x: Tensor, cfg: AETrainConfig) -> tuple[Tensor, dict[str, float]]:
    """x: (B, 3, tf, H, W) in [-1, 1] -> loss and shown figures."""
    z = ae.encode(x)  # (B, C, 1, h, w)
    noisy = z + cfg.latent_noise * z.detach().std() * torch.randn_like(z)
    y = ae.decode(noisy)
    weight = 1.0 + cfg.object_weight * object_mask(x)  # (B, 1, T, H, W)
    err = y - x
    mse = err.pow(2).mean()
    loss = ((err.pow(2) + err.abs()) * weight).mean() / weight.mean() + cfg.latent_penalty * z.pow(2).mean()
    if cfg.temporal_weight:
        loss = loss + cfg.temporal_weight * change_loss(err)
    return loss, {"mse": mse.item(), "psnr": psnr(mse.item())}


def change_loss(err: Tensor) -> Tensor:
    """Reconstruction error (B, 3, T, H, W) -> the error of the frame-to-frame changes, (y1 - y0) - (x1 - x0):
    zero when the output changes from frame to frame as the input does, even if both are off by as much."""
    change = err[:, :, 1:] - err[:, :, :-1]  # (B, 3, T - 1, H, W)
    return (change.pow(2) + change.abs()).mean()


def psnr(mse: float) -> float:
    """PSNR in dB of an MSE measured on [-1, 1] pixels."""
    return float(10 * np.log10(4.0 / max(mse, 1e-10)))


@torch.no_grad()
def evaluate(ae: nn.Module, cfg: AETrainConfig, batches: int = 4) -> dict[str, float]:
    """Reconstruction PSNR on fixed held-out frame groups (seeded apart from training data)."""
    assert isinstance(ae, TinyAutoencoder)
    ae.eval()
    mses, kept = [], []
    for i in range(batches):
        x = frame_groups(step_rng(10**9 + 7, i), cfg.batch, _frames(ae.config), cfg.height, cfg.width)
        y = ae.decode(ae.encode(x))
        mses.append((y - x).pow(2).mean().item())
        kept += shapes_kept(x[:, :, 0], y[:, :, 0])
    return {"eval_psnr": psnr(float(np.mean(mses))), "shapes_kept": float(np.mean(kept)) if kept else 1.0}


def shapes_kept(x: Tensor, y: Tensor) -> list[bool]:
    """Frames (B, 3, H, W) and reconstructions -> per object found in x: does y show its shape in its color?"""
    from framecast.world import detect_objects

    def uint8(t: Tensor) -> np.ndarray:
        return ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()

    out = []
    for a, b in zip(uint8(x), uint8(y), strict=True):
        found = {d.color: d.shape for d in detect_objects(b)}
        out += [found.get(d.color) == d.shape for d in detect_objects(a)]
    return out


@torch.no_grad()
def latent_stats(ae: TinyAutoencoder, cfg: AETrainConfig, batches: int = 16) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (C,) of raw encoder outputs over random groups."""
    ae.set_latent_stats(torch.zeros(ae.latent_channels), torch.ones(ae.latent_channels))
    zs = [ae.encode(frame_groups(step_rng(7, i), cfg.batch, ae.temporal_factor, cfg.height, cfg.width))
          for i in range(batches)]
    z = torch.cat(zs).transpose(0, 1).flatten(1)  # (C, everything)
    return z.mean(1), z.std(1)


def _frames(model: AutoencoderConfig) -> int:
    """Frames of one training sample: a group, or two consecutive ones when the decoder sees the past."""
    return model.temporal_factor * (1 + model.decoder_context)


def _loss_fn(cfg: AETrainConfig) -> Callable[[nn.Module, np.random.Generator, int], tuple[Tensor, dict[str, float]]]:
    """The training loop's loss: a fresh batch of frame groups from the step's generator, reconstructed."""

    def loss_fn(model: nn.Module, rng: np.random.Generator, step: int) -> tuple[Tensor, dict[str, float]]:
        assert isinstance(model, TinyAutoencoder)
        batch = frame_groups(rng, cfg.batch, _frames(model.config), cfg.height, cfg.width)
        return reconstruction_loss(model, batch, cfg)

    return loss_fn


LossFn = Callable[[nn.Module, np.random.Generator, int], tuple[Tensor, dict[str, float]]]


def _decoder_loss_fn(cfg: AETrainConfig) -> LossFn:
    """The decoder stage's loss: pooled groups plus a share of steady-scene groups, heavier object weight."""
    tuned = replace(cfg, object_weight=cfg.decoder_object_weight)
    n_steady = round(cfg.batch * cfg.decoder_steady)

    def loss_fn(model: nn.Module, rng: np.random.Generator, step: int) -> tuple[Tensor, dict[str, float]]:
        assert isinstance(model, TinyAutoencoder)
        frames = _frames(model.config)
        parts = [frame_groups(rng, cfg.batch - n_steady, frames, cfg.height, cfg.width)]
        if n_steady:
            parts.append(steady_groups(rng, n_steady, frames, cfg.height, cfg.width))
        return reconstruction_loss(model, torch.cat(parts), tuned)

    return loss_fn


def train_autoencoder(out: Path, cfg: AETrainConfig, resume_run: bool = True) -> TinyAutoencoder:
    """Train, checkpointing to `out/checkpoint`; the EMA model with latent statistics goes to `out/autoencoder`."""
    torch.manual_seed(cfg.loop.seed)
    ts = new_state(TinyAutoencoder(cfg.model), cfg.loop)
    if resume_run:
        resume(ts, out / "checkpoint")
    train(ts, cfg.loop, _loss_fn(cfg), out / "checkpoint", lambda s: evaluate(s.ema, cfg), desc="autoencoder")
    ae = ts.ema
    assert isinstance(ae, TinyAutoencoder)
    ae.set_latent_stats(*latent_stats(ae, cfg))
    save_autoencoder(ae, out / "autoencoder")
    log.info("autoencoder: %s", evaluate(ae, cfg))
    return ae


def finetune_decoder(
    ae: TinyAutoencoder, out: Path, cfg: AETrainConfig, steps: int, resume_run: bool = True
) -> TinyAutoencoder:
    """Train the decoder alone for `steps` steps (checkpoints in `out/checkpoint`, result in `out/autoencoder`).

    The encoder and the latent statistics stay as they are, so latents encoded before (and a DiT trained on
    them) stay valid: this stage can sharpen the decoding of shapes after the DiT's data exists. Its batches
    mix pooled groups with steady-scene groups (`decoder_steady`) under a heavier object weight. When
    `cfg.model` asks for a decoder that sees the previous latent frame and `ae` has none, it gets one first
    (`with_decoder_context`: it starts out decoding exactly as before).
    """
    if cfg.model.decoder_context > ae.config.decoder_context:
        ae = with_decoder_context(ae)
    ae.encoder.requires_grad_(False)
    loop = replace(cfg.loop, steps=steps, lr=cfg.decoder_lr, warmup=min(cfg.loop.warmup, steps))
    ts = new_state(ae, loop)  # AdamW skips the frozen encoder: its parameters never get a gradient
    if resume_run:
        resume(ts, out / "checkpoint")
    train(ts, loop, _decoder_loss_fn(cfg), out / "checkpoint", lambda s: evaluate(s.ema, cfg), desc="decoder")
    tuned = ts.ema
    assert isinstance(tuned, TinyAutoencoder)
    save_autoencoder(tuned, out / "autoencoder")
    log.info("decoder fine-tune: %s", evaluate(tuned, cfg))
    return tuned
