"""The stages end to end: autoencoder -> latent dataset -> DiT -> a model folder the pipeline loads.

    out/
      autoencoder/{checkpoint,autoencoder}/    stage 1
      latents/shard_*.safetensors              stage 2
      edits/edit_*.safetensors                 stage 2, edit pairs (when asked for)
      dit/checkpoint/, dit/samples/*.mp4       stage 3
      model/                                   framecast.json, dit/, autoencoder/ (load with --model out/model)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from framecast.models.autoencoder import TinyAutoencoder, load_autoencoder
from framecast.models.dit import CausalWanDiT
from framecast.models.text import CachedTextEncoder, TextEncoder, load_text_encoder
from framecast.pipeline import Pipeline, PipelineConfig
from framecast.stream.config import StreamConfig
from framecast.train.autoencoder import AETrainConfig, finetune_decoder, train_autoencoder
from framecast.train.checkpoint import TrainState
from framecast.train.dit import EDIT_KEYS, DiTTrainConfig, drop_text, edit_loss, flow_loss, new_model, take
from framecast.train.edit import EditDataConfig, build_edit_latents
from framecast.train.latents import LatentDataConfig, build_latents, load_latents
from framecast.train.loop import new_state, resume, train

log = logging.getLogger(__name__)

GROWN_LR = 10.0  # learning-rate factor of parts grown onto a trained model (they start at zero)
SAMPLE_PROMPTS = ("a red circle moving left", "a blue square bouncing off the walls on a white background")


@dataclass(frozen=True)
class RunConfig:
    autoencoder: AETrainConfig = field(default_factory=AETrainConfig)
    latents: LatentDataConfig = field(default_factory=LatentDataConfig)
    edits: EditDataConfig = field(default_factory=EditDataConfig)
    dit: DiTTrainConfig = field(default_factory=DiTTrainConfig)
    fps: float = 24.0
    threads: int = 0  # torch threads; 0 keeps torch's default
    decoder_steps: int = 0  # decoder-only fine-tune after the autoencoder (encoder frozen); 0: none
    text_encoder: str = "minilm-tokens"  # sentence token + token states (see models/text.py)


def pipeline_config(cfg: RunConfig) -> PipelineConfig:
    return PipelineConfig(fps=cfg.fps, text_encoder=cfg.text_encoder, stream=StreamConfig(shift=cfg.dit.shift))


def stage_autoencoder(out: Path, cfg: RunConfig, resume_run: bool) -> TinyAutoencoder:
    done = out / "autoencoder" / "autoencoder"
    if resume_run and (done / "model.safetensors").is_file():
        log.info("autoencoder already trained: %s", done)
        ae = load_autoencoder(done)
    else:
        ae = train_autoencoder(out / "autoencoder", cfg.autoencoder, resume_run)
    if not cfg.decoder_steps:
        return ae
    tuned = out / "decoder" / "autoencoder"
    if resume_run and (tuned / "model.safetensors").is_file():
        log.info("decoder already fine-tuned: %s", tuned)
        return load_autoencoder(tuned)
    return finetune_decoder(ae, out / "decoder", cfg.autoencoder, cfg.decoder_steps, resume_run)


def stage_dit(
    out: Path,
    cfg: RunConfig,
    ae: TinyAutoencoder,
    text: TextEncoder,
    data: dict[str, Tensor],
    resume_run: bool,
    edits: dict[str, Tensor] | None = None,
) -> CausalWanDiT:
    ts = new_state(new_model(cfg.dit, cfg.dit.loop.seed), cfg.dit.loop)
    if resume_run:
        resume(ts, out / "dit" / "checkpoint")

    null = text.encode([""]).float()  # (1, T, D): the empty prompt, the unconditional branch of guidance

    def loss_fn(model: nn.Module, rng: np.random.Generator, step: int) -> tuple[Tensor, dict[str, float]]:
        assert isinstance(model, CausalWanDiT)
        batch = take(data, rng, cfg.dit.batch)
        if cfg.dit.text_drop > 0:
            batch = drop_text(batch, null, rng, cfg.dit.text_drop)
        if cfg.dit.rollout > 0:
            batch["null"] = null  # the own chunks are drawn with guidance, as a stream draws them
        loss, shown = flow_loss(model, batch, rng, cfg.dit)
        if edits is None or not cfg.dit.edit_batch:
            return loss, shown
        n, m = cfg.dit.batch, cfg.dit.edit_batch
        edit, edit_shown = edit_loss(model, take(edits, rng, m, EDIT_KEYS), rng, cfg.dit)
        return (loss * n + edit * m) / (n + m), {**shown, **edit_shown}

    def on_checkpoint(s: TrainState) -> dict[str, float]:
        return write_samples(s, out / "dit" / "samples", ae, text, cfg)

    train(ts, cfg.dit.loop, loss_fn, out / "dit" / "checkpoint", on_checkpoint, desc="dit")
    assert isinstance(ts.ema, CausalWanDiT)
    return ts.ema


@torch.no_grad()
def write_samples(
    ts: TrainState, folder: Path, ae: TinyAutoencoder, text: TextEncoder, cfg: RunConfig
) -> dict[str, float]:
    """Sample videos of the EMA model, and the share of frames where the detector finds the prompted color."""
    from framecast.io.video import VideoWriter
    from framecast.world import detect_objects

    assert isinstance(ts.ema, CausalWanDiT)
    pipe = Pipeline(ts.ema, ae, text, pipeline_config(cfg))
    folder.mkdir(parents=True, exist_ok=True)
    hits = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        frames = pipe.generate(prompt, num_frames=48, seed=i)
        h, w = frames.shape[1:3]
        with VideoWriter(folder / f"step{ts.step:06d}_{i}.mp4", cfg.fps, w, h) as vw:
            for f in frames:
                vw.write(f)
        color = prompt.split()[1]
        hits += [any(d.color == color for d in detect_objects(f)) for f in frames]
    return {"sample_color": float(np.mean(hits))}


def run_config(
    ae_steps: int,
    dit_steps: int,
    samples: int,
    batch: int,
    seed: int,
    threads: int,
    decoder_steps: int = 0,
    recycle: float = 0.0,
    edit_samples: int = 0,
    edit_batch: int = 4,
    rollout: float = 0.0,
    edit_strength: tuple[float, float] | None = None,
    structure: bool = False,
    refiner: int = 0,
) -> RunConfig:
    """The recipe of the built-in model with the command line's sizes."""
    base = replace(RunConfig(), decoder_steps=decoder_steps)
    ae = replace(base.autoencoder, loop=replace(base.autoencoder.loop, steps=ae_steps, seed=seed))
    dit_loop = replace(base.dit.loop, steps=dit_steps, seed=seed)
    edit_batch = edit_batch if edit_samples else 0
    dit = replace(base.dit, batch=batch, recycle=recycle, rollout=rollout, loop=dit_loop, edit_batch=edit_batch)
    if edit_strength is not None:
        dit = replace(dit, edit_strength=edit_strength)
    grown: list[tuple[str, float]] = []  # new parts start at zero beside a trained model: GROWN_LR x the rate
    if structure:
        grown.append(("structure_embedding.", GROWN_LR))
        dit = replace(dit, model=replace(dit.model, structure_channels=dit.model.in_channels))
    if refiner:
        grown.append(("refiner.", GROWN_LR))
        dit = replace(dit, model=replace(dit.model, refiner_channels=refiner))
    if grown:
        dit = replace(dit, loop=replace(dit.loop, lr_scale=tuple(grown)))
    edits = replace(base.edits, samples=edit_samples)
    latents = replace(base.latents, samples=samples)
    return replace(base, autoencoder=ae, dit=dit, latents=latents, edits=edits, threads=threads)


def train_all(out: Path, cfg: RunConfig, resume_run: bool = True, stop_after: str = "dit") -> Path:
    """Run every stage not yet done, up to `stop_after`; returns the folder of the last stage."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    ae = stage_autoencoder(out, cfg, resume_run)
    if stop_after == "autoencoder":
        return out / "autoencoder"
    text = CachedTextEncoder(load_text_encoder(cfg.text_encoder))
    paths = build_latents(out / "latents", cfg.latents, ae, text)
    edit_paths = build_edit_latents(out / "edits", cfg.edits, ae, text)
    if stop_after == "latents":
        return out / "latents"
    data = load_latents(paths)
    edits = load_latents(edit_paths) if edit_paths else None
    dit = stage_dit(out, cfg, ae, text, data, resume_run, edits)
    folder = Pipeline(dit, ae, text, pipeline_config(cfg)).save(out / "model")
    log.info("model written to %s", folder)
    return folder
