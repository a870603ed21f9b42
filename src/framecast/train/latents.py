"""Stage 2: a dataset of pre-encoded latents, so DiT training never runs the autoencoder.

Built in shards (`shard_00000.safetensors`, ...), each holding for S samples of G groups:
    latents    (S, G, C, h, w) float32   encoded groups (sink first, then the window)
    positions  (S, G) long               temporal position of each group (its first frame // tf)
    text       (S, G, T, D) float32      text embedding of each group's caption
and a JSON beside it with the captions. Existing shards are kept, so an interrupted build resumes.
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

from framecast.models.autoencoder import TinyAutoencoder
from framecast.models.text import TextEncoder
from framecast.train.data import Sample, clip_sample, to_pixels
from framecast.train.loop import step_rng


@dataclass(frozen=True)
class LatentDataConfig:
    samples: int = 8000
    shard: int = 250
    window: int = 10  # groups after the sink
    max_gap: int = 60  # largest distance in groups between the sink and the window
    switch_prob: float = 0.25
    height: int = 64
    width: int = 64
    seed: int = 1


@torch.no_grad()
def _encode_shard(samples: list[Sample], ae: TinyAutoencoder, text: TextEncoder) -> dict[str, Tensor]:
    tf = ae.temporal_factor
    pixels = to_pixels(np.stack([s.frames for s in samples]))  # (S, 3, G * tf, H, W)
    latents = torch.cat([ae.encode(pixels[i : i + 16]) for i in range(0, len(samples), 16)])  # (S, C, G, h, w)
    captions = sorted({c for s in samples for c in s.captions})
    emb = text.encode(captions).float()  # (U, T, D)
    index = {c: i for i, c in enumerate(captions)}
    idx = torch.tensor([[index[c] for c in s.captions] for s in samples])  # (S, G)
    return {
        "latents": latents.transpose(1, 2).contiguous(),  # (S, G, C, h, w)
        "positions": torch.tensor([[g // tf for g in s.group_start] for s in samples]),
        "text": emb[idx].contiguous(),  # (S, G, T, D)
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
        tmp = path.with_suffix(".tmp")
        save_file(_encode_shard(samples, ae, text), str(tmp))
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps([s.captions for s in samples]) + "\n")
    return paths


def load_latents(paths: list[Path]) -> dict[str, Tensor]:
    """Concatenate shards: latents (N, G, C, h, w), positions (N, G), text (N, G, T, D)."""
    shards = [load_file(str(p)) for p in paths]
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
