"""Stage 2: a dataset of pre-encoded latents, so DiT training never runs the autoencoder.

Built in shards (`shard_00000.safetensors`, ...), each holding for S samples of G groups and U captions:
    latents        (S, G, C, h, w) float32   encoded groups (sink first, then the window)
    positions      (S, G) long               temporal position of each group (its first frame // tf)
    objects        (S, G, h, w) float32      share of each latent cell's pixels on or around an object
    captions       (U, T, D) float32         text embedding of each distinct caption of the shard
    caption_index  (S, G) long               row of `captions` for each group
and a JSON beside it with the captions. Existing shards are kept, so an interrupted build resumes.
Captions are stored once per shard: with token-level text (T = 33) a dense (S, G, T, D) table would take
gigabytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from framecast.errors import InputError
from framecast.models.autoencoder import TinyAutoencoder
from framecast.models.text import TextEncoder
from framecast.train.autoencoder import object_mask
from framecast.train.data import Sample, clip_sample, to_pixels
from framecast.train.loop import step_rng


@dataclass(frozen=True)
class LatentDataConfig:
    samples: int = 8000
    shard: int = 250
    window: int = 10  # groups after the sink
    max_gap: int = 60  # largest distance in groups between the sink and the window
    switch_prob: float = 0.5  # share of samples whose caption (and look) changes part way: a live prompt switch
    height: int = 64
    width: int = 64
    seed: int = 1


@torch.no_grad()
def object_cells(pixels: Tensor, tf: int, sf: int) -> Tensor:
    """Pixels (S, 3, G * tf, H, W) -> (S, G, H / sf, W / sf): share of each latent cell on or near objects."""
    mask = object_mask(pixels)[:, 0]  # (S, G * tf, H, W)
    S, F, H, W = mask.shape
    per_group = mask.view(S, F // tf, tf, H, W).mean(2)  # (S, G, H, W)
    return torch.nn.functional.avg_pool2d(per_group, sf)  # (S, G, h, w)


@torch.no_grad()
def encode_clips(ae: TinyAutoencoder, pixels: Tensor) -> Tensor:
    """Pixels (S, 3, G * tf, H, W) -> latents (S, C, G, h, w), 16 clips at a time."""
    return torch.cat([ae.encode(pixels[i : i + 16]) for i in range(0, pixels.shape[0], 16)])


def write_shard(path: Path, tensors: dict[str, Tensor], samples: list[Sample]) -> None:
    """Save a shard atomically (a temp file renamed) with its captions as JSON beside it."""
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps([s.captions for s in samples]) + "\n")


@torch.no_grad()
def _encode_shard(samples: list[Sample], ae: TinyAutoencoder, text: TextEncoder) -> dict[str, Tensor]:
    tf = ae.temporal_factor
    pixels = to_pixels(np.stack([s.frames for s in samples]))  # (S, 3, G * tf, H, W)
    latents = encode_clips(ae, pixels)  # (S, C, G, h, w)
    captions = sorted({c for s in samples for c in s.captions})
    index = {c: i for i, c in enumerate(captions)}
    return {
        "latents": latents.transpose(1, 2).contiguous(),  # (S, G, C, h, w)
        "positions": torch.tensor([[g // tf for g in s.group_start] for s in samples]),
        "objects": object_cells(pixels, tf, ae.spatial_factor).contiguous(),
        "captions": text.encode(captions).float().contiguous(),  # (U, T, D)
        "caption_index": torch.tensor([[index[c] for c in s.captions] for s in samples]),  # (S, G)
    }


def build_latents(out: Path, cfg: LatentDataConfig, ae: TinyAutoencoder, text: TextEncoder) -> list[Path]:
    """Write missing shards to `out`; returns all shard paths."""
    out.mkdir(parents=True, exist_ok=True)
    ae.eval()
    paths = []
    shards = -(-cfg.samples // cfg.shard)
    for k in tqdm(range(shards), desc="latents", unit="shard"):
        path = out / f"shard_{k:05d}.safetensors"
        paths.append(path)
        if path.is_file():
            continue
        rng = step_rng(cfg.seed, k)
        tf = ae.temporal_factor
        samples = [
            clip_sample(rng, cfg.window, tf, cfg.max_gap, cfg.height, cfg.width, cfg.switch_prob)
            for _ in range(cfg.shard)
        ]
        write_shard(path, _encode_shard(samples, ae, text), samples)
    return paths


def load_latents(paths: list[Path]) -> dict[str, Tensor]:
    """Concatenate shards: latents (N, G, C, h, w), positions (N, G), objects (N, G, h, w), captions (U, T, D)
    and caption_index (N, G) into the concatenated caption table; source (N, G, C, h, w) too for edit pairs."""
    shards = [load_file(str(p)) for p in paths]
    for p, s in zip(paths, shards, strict=True):
        if "caption_index" not in s:
            raise InputError(f"{p} is a latent shard of an older format; delete its folder to rebuild it")
    offsets = np.cumsum([0] + [s["captions"].shape[0] for s in shards[:-1]])
    keys = ["latents", "positions", "objects", "captions"] + (["source"] if all("source" in s for s in shards) else [])
    out = {k: torch.cat([s[k] for s in shards]) for k in keys}
    out["caption_index"] = torch.cat([s["caption_index"] + int(o) for s, o in zip(shards, offsets, strict=True)])
    return out
