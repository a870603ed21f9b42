"""Edit pairs: teach the DiT video to video (keep the input's layout, draw the prompt's look).

Plain flow matching never shows the model a noisy chunk whose look disagrees with its caption, so under
video to video (SDEdit: the input chunk noised to strength s, then denoised under the prompt) it either keeps
the input (low s) or draws the prompt anywhere (high s), with no blend between. An edit pair is a world scene
(the source) and the same scene restyled (same places, motions, sizes and background; new colors and shapes)
with a caption of the restyled one. The model starts from the source noised to s and is taught the path of an
ideal editor, which lands on the restyled clip:

    x_sigma = (1 - s) (sigma / s) source + (1 - sigma / s) target + sigma noise      (sigma in [0, s])
    v*      = (x_sigma - target) / sigma                                              (x0 = x_sigma - sigma v*)

At sigma = s that is the SDEdit start; an Euler step of v* from sigma to sigma' gives x_sigma' of the same
formula, so every level a stream visits (any steps, stream batch or sequential) lies on the path. Clean
context groups are the target (what the stream emitted before). When source = target, v* is the flow
matching velocity noise - x0, so a caption that agrees with the input asks for nothing new.

Shards (`edit_00000.safetensors`, ...) hold what `latents.py` shards hold for the targets, plus
    source         (S, G, C, h, w) float32   the encoded source groups
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from framecast.models.autoencoder import TinyAutoencoder
from framecast.models.text import TextEncoder
from framecast.sampling.flow import sdedit_sigmas
from framecast.train.data import Sample, to_pixels
from framecast.train.latents import _encode_shard, encode_clips, write_shard
from framecast.train.loop import step_rng
from framecast.world.captions import caption
from framecast.world.render import render
from framecast.world.sample import sample_scene
from framecast.world.scene import Scene
from framecast.world.vocab import COLORS, SHAPES, allowed_on, is_heldout


@dataclass(frozen=True)
class EditDataConfig:
    samples: int = 0  # edit pairs; 0: no edit training
    shard: int = 250
    window: int = 10  # groups after the sink, as the latent dataset
    max_gap: int = 60
    height: int = 64
    width: int = 64
    seed: int = 2


def restyled(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with new colors and shapes (each object another color and another shape), everything else kept;
    a training scene (no held-out triple, distinct colors, each visible on the background)."""
    bg = scene.background
    for _ in range(100):
        objects = tuple(
            dataclasses.replace(
                o,
                color=str(rng.choice([c for c in COLORS if c != o.color])),
                shape=str(rng.choice([s for s in SHAPES if s != o.shape])),
            )
            for o in scene.objects
        )
        colors = [o.color for o in objects]
        if (
            len(set(colors)) == len(colors)
            and not any(is_heldout(o.color, o.shape, o.motion) for o in objects)
            and all(allowed_on(c, bg.top, bg.bottom) for c in colors)
        ):
            return dataclasses.replace(scene, objects=objects)
    raise ValueError("no restyling of the scene is a training scene")  # 8 colors, 4 shapes: never in practice


def edit_sample(
    rng: np.random.Generator, window: int, tf: int, max_gap: int, height: int, width: int
) -> tuple[Sample, np.ndarray]:
    """An edit pair: the restyled clip with its caption (a `Sample`) and the source frames (G * tf, H, W, 3).

    Scenes are the world's own (any place, size and speed), since video to video follows any input; groups
    as `clip_sample`: a sink at frame 0, then `window` consecutive groups `gap` groups later.
    """
    while True:
        source = sample_scene(int(rng.integers(2**31)), "train", height=height, width=width)
        try:
            target = restyled(source, rng)
            break
        except ValueError:
            continue
    gap = 1 if rng.random() < 0.4 else int(rng.integers(2, max_gap + 1))
    starts = [0] + [(gap + i) * tf for i in range(window)]
    text = caption(target, rng)
    frames = np.concatenate([render(target, s, tf) for s in starts])
    src = np.concatenate([render(source, s, tf) for s in starts])
    return Sample(frames, starts, [text] * (window + 1)), src


def build_edit_latents(out: Path, cfg: EditDataConfig, ae: TinyAutoencoder, text: TextEncoder) -> list[Path]:
    """Write missing edit shards to `out`; returns all shard paths (none when cfg.samples is 0)."""
    if cfg.samples <= 0:
        return []
    out.mkdir(parents=True, exist_ok=True)
    ae.eval()
    paths = []
    tf = ae.temporal_factor
    for k in tqdm(range(-(-cfg.samples // cfg.shard)), desc="edit pairs", unit="shard"):
        path = out / f"edit_{k:05d}.safetensors"
        paths.append(path)
        if path.is_file():
            continue
        rng = step_rng(cfg.seed, k)
        pairs = [edit_sample(rng, cfg.window, tf, cfg.max_gap, cfg.height, cfg.width) for _ in range(cfg.shard)]
        samples = [p[0] for p in pairs]
        tensors = _encode_shard(samples, ae, text)
        source = encode_clips(ae, to_pixels(np.stack([p[1] for p in pairs])))  # (S, C, G, h, w)
        tensors["source"] = source.transpose(1, 2).contiguous()  # (S, G, C, h, w)
        write_shard(path, tensors, samples)
    return paths


def edit_levels(
    rng: np.random.Generator, groups: int, strength: float, shift: float, sink_clean: float, fresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """Levels (groups,) of a video-to-video stream at start strength `strength`, and loss weights (groups,).

    A share `fresh` of the samples trains the sink group alone at a level of the chunk's schedule: a stream's
    first chunk has no context, and there the faint input is all that says where the objects are (the later
    groups get weight 0; the causal mask keeps them from touching the sink). The others: half in the stream
    batch's pattern (newest at pass j, group m back at pass j + m), half drawn independently from the chunk's
    schedule, the sink clean with probability `sink_clean`, at least one group noisy; weight where noisy.
    """
    steps = int(rng.integers(1, 5))
    sig = sdedit_sigmas(steps, shift, strength).numpy().astype(np.float64)  # (steps + 1,), sig[0] = strength
    if rng.random() < fresh:
        levels, weight = np.full(groups, strength), np.zeros(groups)
        levels[0], weight[0] = sig[int(rng.integers(steps))], 1.0
        return levels, weight
    if rng.random() < 0.5:
        back = np.arange(groups)[::-1]
        levels = sig[np.minimum(int(rng.integers(steps)) + back, steps)]
    else:
        levels = sig[rng.integers(steps + 1, size=groups)]
    if rng.random() < sink_clean:
        levels[0] = 0.0
    if not (levels > 0).any():
        levels[-1] = sig[int(rng.integers(steps))]
    return levels, (levels > 0).astype(np.float64)


def edit_path(source: Tensor, target: Tensor, noise: Tensor, strength: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """The ideal editor's state and velocity at `sigma` (all broadcast to (B, C, G, h, w)): see the module doc.

    Where sigma is 0 the state is the target and the velocity 0."""
    r = sigma / strength
    x = (1 - strength) * r * source + (1 - r) * target + sigma * noise
    v = torch.where(sigma > 0, (x - target) / sigma.clamp_min(1e-6), torch.zeros_like(x))
    return x, v


def edit_inputs(
    batch: dict[str, Tensor],
    rng: np.random.Generator,
    strengths: tuple[float, float],
    shift: float,
    sink_clean: float,
    fresh: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Model input x (B, C, G, h, w), levels (B, G), loss weights (B, G) and target velocity (B, C, G, h, w)
    of an edit batch."""
    target = batch["latents"].transpose(1, 2)  # (B, C, G, h, w)
    source = batch["source"].transpose(1, 2)
    B, _, G = target.shape[:3]
    strength = rng.uniform(*strengths, size=B)  # (B,)
    drawn = [edit_levels(rng, G, float(s), shift, sink_clean, fresh) for s in strength]
    sigma = torch.from_numpy(np.stack([d[0] for d in drawn])).float()  # (B, G)
    weight = torch.from_numpy(np.stack([d[1] for d in drawn])).float()  # (B, G)
    s = torch.from_numpy(strength).float()[:, None, None, None, None]
    x, v = edit_path(source, target, torch.randn_like(target), s, sigma[:, None, :, None, None])
    return x, sigma, weight, v
