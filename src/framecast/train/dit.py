"""Stage 3: train the causal DiT on pre-encoded latents with flow matching and diffusion forcing.

Every group (latent frame) of a sample gets its own noise level, and attention follows the engine's
visibility rule (block-causal, a window of chunks plus sinks), so one model serves both a clean cache
and the moving-buffer stream batch. Half of the samples draw levels independently (diffusion forcing);
the other half use the pattern of the stream batch: the newest group at pass j of a k-step schedule,
the group m before it at pass j + m, clean groups further back.

A share of samples ("fresh" samples) has no clean context at all: those that start at the stream's first
chunk replay its warm-up, the others train only their sink group (which attends to nothing else). There
the text is the only source of the picture, so these samples are what teaches the model to follow the
prompt. The loss is a mean per sample, so a fresh sample counts as much as one with eleven noisy groups.

A share `text_drop` of the samples sees the empty prompt instead of its captions, which teaches the
unconditional velocity that classifier-free guidance needs (`StreamConfig.guidance`).

A share `recycle` of the samples reads, in place of its clean context groups, the model's own one-step
estimate of them from a noised copy (error recycling): at inference the context is the model's own output.

Within a group, latent cells on objects weigh `1 + object_weight` times a background cell: objects cover a
few percent of a frame, and with a plain mean a model that lets them fade loses almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from framecast.models.config import DiTConfig, preset
from framecast.models.dit import CausalWanDiT, CrossKV
from framecast.sampling.flow import shift_sigma, sigmas
from framecast.stream.request import visible
from framecast.train.edit import edit_inputs
from framecast.train.loop import LoopConfig

SAMPLE_KEYS = ("latents", "positions", "objects")
EDIT_KEYS = (*SAMPLE_KEYS, "source")


def default_model() -> DiTConfig:
    """The tiny preset without its video-to-video parts: the recipe grows the structure input and the refiner
    later (`--structure`, `--refiner N`; docs/model-card.md)."""
    return replace(preset("tiny"), structure_channels=0, refiner_channels=0)


@dataclass(frozen=True)
class DiTTrainConfig:
    model: DiTConfig = field(default_factory=default_model)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=10000, lr=5e-4, warmup=300, ema=0.999))
    batch: int = 16
    stream_prob: float = 0.5  # share of samples with the stream-batch pattern of noise levels
    fresh_prob: float = 0.35  # share of samples with no clean context (warm-up replay or a lone sink)
    shift: float = 3.0  # schedule shift of the stream pattern (the model's default at inference)
    sink_clean_prob: float = 0.7
    window_chunks: int = 6
    sink_chunks: int = 1
    object_weight: float = 6.0  # extra loss weight of latent cells on objects (0: a plain mean)
    text_drop: float = 0.1  # share of samples trained on the empty prompt: the unconditional branch of guidance
    recycle: float = 0.0  # share of samples whose clean context is the model's own estimate (see `recycle_context`)
    recycle_levels: tuple[float, float] = (0.2, 0.6)  # noise levels the estimate is made from
    rollout: float = 0.0  # share of the samples from a stream's start whose first chunks the model draws itself
    rollout_chunks: int = 2  # chunks it draws (see `rollout_context`)
    rollout_guidance: float = 2.0  # guidance of those samples (needs batch["null"], else unguided)
    edit_batch: int = 0  # edit pairs per step besides `batch` (see train/edit.py); 0: none
    edit_strength: tuple[float, float] = (0.5, 0.95)  # video-to-video strengths the edit pairs start from
    edit_fresh: float = 0.35  # share of the edit pairs that train a stream's first chunk alone (no context)
    structure_drop: float = 0.1  # share of the edit pairs a model with a structure input sees without it


def stream_levels(rng: np.random.Generator, groups: int, shift: float) -> np.ndarray:
    """(groups,) levels of a stream batch: newest at pass j, group m back at pass j + m (clean at the end)."""
    steps = int(rng.integers(1, 5))
    sig = sigmas(steps, shift).numpy()  # (steps + 1,), sig[steps] = 0
    j = int(rng.integers(steps))
    back = np.arange(groups)[::-1]  # m for each group, oldest first
    return sig[np.minimum(j + back, steps)]


def independent_levels(rng: np.random.Generator, groups: int, cfg: DiTTrainConfig) -> np.ndarray:
    """(groups,) levels drawn independently (diffusion forcing), uniform or shifted towards noise."""
    u = rng.random(groups)
    if rng.random() < 0.5:
        u = shift_sigma(torch.from_numpy(u), cfg.shift).numpy()
    if rng.random() < cfg.sink_clean_prob:
        u[: cfg.sink_chunks] = 0.0
    return u


def warmup_levels(rng: np.random.Generator, groups: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """The stream batch's first ticks: at tick T < k, chunk c is at pass T - c; chunks after T do not exist yet.

    Returns levels (groups,) and loss weights (groups,): 1 for chunks 0..T, 0 for the not-yet-admitted ones
    (their levels are 1; the causal mask keeps them from touching the others).
    """
    steps = int(rng.integers(1, 5))
    sig = sigmas(steps, shift).numpy()
    tick = int(rng.integers(min(steps, groups)))
    levels, weight = np.ones(groups), np.zeros(groups)
    levels[: tick + 1] = sig[tick - np.arange(tick + 1)]
    weight[: tick + 1] = 1.0
    return levels, weight


def sink_only_levels(rng: np.random.Generator, groups: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Levels (groups,) and loss weights (groups,): the sink group alone at a random level, the rest ignored."""
    levels, weight = np.ones(groups), np.zeros(groups)
    u = rng.random()
    levels[0] = float(shift_sigma(torch.tensor([u]), shift)[0]) if rng.random() < 0.5 else u
    levels[0] = max(levels[0], 0.02)
    weight[0] = 1.0
    return levels, weight


def sample_levels(rng: np.random.Generator, batch: int, groups: int, cfg: DiTTrainConfig) -> Tensor:
    """Noise levels (B, G) in [0, 1]."""
    rows = [
        stream_levels(rng, groups, cfg.shift)
        if rng.random() < cfg.stream_prob
        else independent_levels(rng, groups, cfg)
        for _ in range(batch)
    ]
    return torch.from_numpy(np.stack(rows)).float()


def attention_mask(groups: int, tokens: int, cfg: DiTTrainConfig) -> Tensor:
    """(1, 1, N, N) bool, N = groups * tokens: the engine's visibility rule over the sample's groups."""
    chunk = torch.arange(groups).repeat_interleave(tokens)
    return visible(chunk, chunk, cfg.sink_chunks, cfg.window_chunks)[None, None]


def per_group_cross(model: CausalWanDiT, text: Tensor, index: Tensor) -> CrossKV:
    """Caption embeddings (U, T, D) and each group's row (B, G) -> cross K/V (L, B, G, T, h, hd).

    Each distinct caption goes through the text layers once; most groups of a sample share one.
    """
    kv = model.cross_kv(text)  # (L, U, T, h, hd)
    mod = None if kv.mod is None else kv.mod[index]  # (B, G, D)
    return CrossKV(kv.k[:, index], kv.v[:, index], mod)


def flow_loss(
    model: CausalWanDiT, batch: dict[str, Tensor], rng: np.random.Generator, cfg: DiTTrainConfig
) -> tuple[Tensor, dict[str, float]]:
    """Velocity MSE on the noisy groups of a batch (see `take`): object cells weigh 1 + cfg.object_weight."""
    x0 = batch["latents"].transpose(1, 2)  # (B, C, G, h, w)
    B, _, G = x0.shape[:3]
    sigma = sample_levels(rng, B, G, cfg)  # (B, G)
    weight = (sigma > 0).float()
    contiguous = (batch["positions"][:, 1:] - batch["positions"][:, :-1] == 1).all(dim=1)  # (B,) starts at chunk 0
    for b in np.flatnonzero(rng.random(B) < cfg.fresh_prob):
        fresh = warmup_levels if contiguous[b] else sink_only_levels
        levels, w = fresh(rng, G, cfg.shift)
        sigma[b], weight[b] = torch.from_numpy(levels).float(), torch.from_numpy(w).float()
    noise = torch.randn_like(x0)
    s = sigma[:, None, :, None, None]
    xt = (1 - s) * x0 + s * noise
    mask = attention_mask(G, model.config.tokens_per_frame, cfg)
    cross = per_group_cross(model, batch["text"], batch["text_index"])
    if cfg.recycle > 0:  # clean context groups (level 0) read the model's own estimate in some samples
        clean = sigma[:, None, :, None, None] == 0
        xt = torch.where(clean, recycle_context(model, x0, cross, mask, batch, rng, cfg), xt)
    if cfg.rollout > 0:  # the first clean groups of some samples from a stream's start: the model's own chunks
        clean = sigma[:, None, :, None, None] == 0
        xt = torch.where(clean, rollout_context(model, xt, contiguous, batch, rng, cfg), xt)
    out = model(xt, sigma * 1000.0, batch["positions"], cross, None, mask)
    loss = weighted_error(out.velocity.float(), noise - x0, batch["objects"], weight, cfg)
    return loss, {"loss": loss.item()}


def weighted_error(velocity: Tensor, target: Tensor, objects: Tensor, weight: Tensor, cfg: DiTTrainConfig) -> Tensor:
    """Mean over samples of the per-group MSE (B, C, G, h, w -> B, G), object cells (B, G, h, w) weighing
    1 + cfg.object_weight, groups weighted by `weight` (B, G) (0: no loss there)."""
    cell = 1.0 + cfg.object_weight * objects  # (B, G, h, w)
    sq = (velocity - target).pow(2).mean(dim=1)  # (B, G, h, w)
    err = (sq * cell).sum(dim=(2, 3)) / cell.sum(dim=(2, 3))  # (B, G)
    per_sample = (err * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B,)
    return per_sample.sum() / (weight.sum(1) > 0).sum().clamp_min(1)


def edit_loss(
    model: CausalWanDiT, batch: dict[str, Tensor], rng: np.random.Generator, cfg: DiTTrainConfig
) -> tuple[Tensor, dict[str, float]]:
    """Velocity MSE of an edit batch (`take(..., keys=EDIT_KEYS)`) against the ideal editor's path (train/edit.py)."""
    x, sigma, weight, target = edit_inputs(
        batch, rng, cfg.edit_strength, cfg.shift, cfg.sink_clean_prob, cfg.edit_fresh
    )
    mask = attention_mask(x.shape[2], model.config.tokens_per_frame, cfg)
    cross = per_group_cross(model, batch["text"], batch["text_index"])
    structure = edit_structure(model, batch, rng, cfg.structure_drop)
    out = model(x, sigma * 1000.0, batch["positions"], cross, None, mask, structure)
    loss = weighted_error(out.velocity.float(), target, batch["objects"], weight, cfg)
    return loss, {"edit": loss.item()}


def edit_structure(
    model: CausalWanDiT, batch: dict[str, Tensor], rng: np.random.Generator, drop: float
) -> Tensor | None:
    """The structure input of an edit batch: its source latents (B, C, G, h, w), every group (a stream gives every
    chunk its input frames), zeros for a share `drop` of the samples; None for a model without the input."""
    if not model.config.structure_channels:
        return None
    source = batch["source"].transpose(1, 2)  # (B, C, G, h, w)
    keep = torch.from_numpy(rng.random(source.shape[0]) >= drop).to(source.dtype)  # (B,)
    return source * keep[:, None, None, None, None]


@torch.no_grad()
def recycle_context(
    model: CausalWanDiT, x0: Tensor, cross: CrossKV, mask: Tensor, batch: dict[str, Tensor],
    rng: np.random.Generator, cfg: DiTTrainConfig,
) -> Tensor:  # fmt: skip
    """x0 (B, C, G, h, w) with a share `cfg.recycle` of the samples replaced by the model's own one-step estimate
    from a noised copy (a level per sample from `recycle_levels`): the imperfect, slightly blurred context a
    stream reads back from its own output. Used for the clean context groups only; the targets stay true,
    so the model learns to draw the next chunk sharp from a context that is not."""
    rows = torch.from_numpy(np.flatnonzero(rng.random(x0.shape[0]) < cfg.recycle))
    if not len(rows):
        return x0
    level = torch.from_numpy(rng.uniform(*cfg.recycle_levels, size=len(rows))).float()  # (R,)
    s, chosen = level[:, None, None, None, None], x0[rows]
    xt = (1 - s) * chosen + s * torch.randn_like(chosen)
    sub = CrossKV(cross.k[:, rows], cross.v[:, rows], None if cross.mod is None else cross.mod[rows])
    t = (level[:, None] * 1000.0).expand(-1, x0.shape[2])  # (R, G)
    velocity = model(xt, t, batch["positions"][rows], sub, None, mask).velocity.float()
    out = x0.clone()
    out[rows] = xt - s * velocity  # x0 = x_s - s * v
    return out


@torch.no_grad()
def rollout_context(
    model: CausalWanDiT, x: Tensor, contiguous: Tensor, batch: dict[str, Tensor], rng: np.random.Generator,
    cfg: DiTTrainConfig,
) -> Tensor:  # fmt: skip
    """x (B, C, G, h, w) with the first `rollout_chunks` groups of a share `cfg.rollout` of the samples that start
    at a stream's first chunk (`contiguous`, (B,) bool) replaced by the model's own stream: each chunk drawn from
    noise with the 4-step schedule (guided when batch["null"] is there), after the chunks it drew before.

    Error recycling shows the model a blurred copy of the truth; here the context is what a stream really
    reads at its start, where a sink drawn slightly wrong set every later chunk off. The targets stay true,
    so the model learns to carry on a caption's clip from its own first chunks.
    """
    rows = torch.from_numpy(np.flatnonzero(contiguous.numpy() & (rng.random(x.shape[0]) < cfg.rollout)))
    n = min(cfg.rollout_chunks, x.shape[2])
    if not len(rows) or n == 0:
        return x
    index = batch["text_index"][rows, :n]  # (R, n)
    text, guided = batch["text"], "null" in batch and cfg.rollout_guidance != 1.0
    if guided:
        text = torch.cat([text, batch["null"].to(text)])
        index = torch.cat([index, torch.full_like(index, text.shape[0] - 1)])  # the empty prompt's rows after
    copies = 2 if guided else 1  # rows per sample: the prompt's, then the empty prompt's
    positions = batch["positions"][rows, :n].repeat(copies, 1)
    own = x[rows, :, :n].clone()  # (R, C, n, h, w)
    sig = sigmas(4, cfg.shift)
    for c in range(n):
        own[:, :, c] = torch.randn_like(own[:, :, c])
        mask = attention_mask(c + 1, model.config.tokens_per_frame, cfg)
        cross = per_group_cross(model, text, index[:, : c + 1])
        for a, b in zip(sig[:-1], sig[1:], strict=True):
            t = torch.zeros(len(rows), c + 1)
            t[:, c] = a * 1000.0
            inp = own[:, :, : c + 1].repeat(copies, 1, 1, 1, 1)
            v = model(inp, t.repeat(copies, 1), positions[:, : c + 1], cross, None, mask).velocity.float()
            v = v[:, :, c]
            if guided:
                v_c, v_u = v.chunk(2)
                v = v_u + cfg.rollout_guidance * (v_c - v_u)
            own[:, :, c] = own[:, :, c] + (b - a) * v
    out = x.clone()
    out[rows, :, :n] = own
    return out


def take(
    data: dict[str, Tensor], rng: np.random.Generator, batch: int, keys: tuple[str, ...] = SAMPLE_KEYS
) -> dict[str, Tensor]:
    """A random batch of the latent dataset (`load_latents`): latents (B, G, C, h, w), positions (B, G),
    objects (B, G, h, w) (and source (B, G, C, h, w) of edit pairs), the batch's distinct caption embeddings
    text (U, T, D) and text_index (B, G)."""
    idx = torch.from_numpy(rng.integers(data["latents"].shape[0], size=batch))
    out = {k: data[k][idx] for k in keys}
    rows, out["text_index"] = torch.unique(data["caption_index"][idx], return_inverse=True)  # (U,), (B, G)
    out["text"] = data["captions"][rows]  # (U, T, D)
    return out


def drop_text(batch: dict[str, Tensor], null: Tensor, rng: np.random.Generator, p: float) -> dict[str, Tensor]:
    """Give a share `p` of the samples the empty prompt's embedding null (1, T, D) in every group, so that
    the model also learns the unconditional velocity that classifier-free guidance subtracts."""
    drop = torch.from_numpy(rng.random(batch["text_index"].shape[0]) < p)  # (B,)
    if not bool(drop.any()):
        return batch
    text = torch.cat([batch["text"], null.to(batch["text"])])  # (U + 1, T, D)
    index = batch["text_index"].clone()
    index[drop] = text.shape[0] - 1
    return {**batch, "text": text, "text_index": index}


def new_model(cfg: DiTTrainConfig, seed: int) -> CausalWanDiT:
    """A fresh DiT whose output head starts at zero (a stable start for flow matching)."""
    torch.manual_seed(seed)
    model = CausalWanDiT(cfg.model)
    torch.nn.init.zeros_(model.head.head.weight)
    torch.nn.init.zeros_(model.head.head.bias)
    return model
