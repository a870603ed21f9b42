"""The per-frame image family: a diffusers UNet image model (SD 1.5/2.1, SD-Turbo, SDXL, LCM) streamed frame by frame.

StreamDiffusion's stream batch: each stream keeps one frame per denoising step in flight; at every pass each
frame moves one step down the stream's timesteps, a new frame enters at the top (noise, or an input frame
noised to its strength) and the frame that took its last step leaves. Every stream's frames run in ONE UNet
call; finished frames decode in ONE VAE call (AutoencoderKL or the tiny AutoencoderTiny).

Guidance (`StreamConfig.guidance` != 1) takes its negative side as `ImageSettings.cfg_type` says: a negative
row per frame ("full"), or residual CFG ("self", "initialize": eps_neg ~ delta * the noise the latent carries,
no row, or one row at a frame's first pass). The step math is `sampling.ddpm`; per-stream state is
`ImageState`; the driver sees only the model-family contract (`family.contract`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from framecast.errors import InputError
from framecast.family.contract import Schedule
from framecast.family.image_settings import ImageSettings
from framecast.io.frames import frames_to_uint8, uint8_to_frames
from framecast.models.diffusers_image import ImageParts, vae_scale
from framecast.sampling import ddpm
from framecast.stream.config import StreamConfig
from framecast.stream.prompt import Conditioner, check_prompt
from framecast.stream.state import ChunkInput


@dataclass
class ImageCondition:
    """A prompt's condition: hidden states (T, D), pooled (P,) or None (SDXL), and the negative prompt's."""

    hidden: Tensor
    pooled: Tensor | None
    neg_hidden: Tensor
    neg_pooled: Tensor | None


@dataclass
class Frame:
    """A frame in flight: its next step's index, its timesteps, condition, start noise (1, C, h, w) and the
    residual noise its latent carries (residual CFG)."""

    step: int
    timesteps: list[int]
    cond: ImageCondition
    noise: Tensor
    residual: Tensor | None = None


@dataclass
class ImageState:
    """One stream: its frames in flight (oldest first) with their latents x (R, C, h, w), its noise source and
    the latent of its last finished frame (feedback)."""

    cfg: StreamConfig
    timesteps: list[int]
    generator: torch.Generator  # on the CPU: the same noise on any device
    noise: Tensor | None  # (1, C, h, w) the stream's one noise draw ("fixed"), else None
    start_scale: float = 1.0  # txt2img starts from this times the noise (the scheduler's convention)
    x: Tensor | None = None
    frames: list[Frame] = field(default_factory=list)
    last_latent: Tensor | None = None  # (1, C, h, w)


Row = tuple[ImageState, Frame]  # a frame in flight and its stream, one UNet row


class ImageFamily:
    """One image model (UNet, VAE, CLIP text encoders, scheduler facts) serving any number of streams."""

    def __init__(
        self,
        parts: ImageParts,
        settings: ImageSettings | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.settings = settings or ImageSettings()
        self.unet: Any = parts.unet.to(self.device, self.dtype).eval()
        self.vae: Any = parts.vae.to(self.device, self.dtype).eval()
        self.prompts = parts.prompts.to(self.device, self.dtype)
        self.sched, self.kind = parts.scheduler, parts.kind
        self.network: nn.Module = self.unet
        self.conditioner: Conditioner[Any] = Conditioner(self._embed, self._cross)
        self.scale = vae_scale(self.vae)
        self.latent_shape = self._latent_shape()
        neg_hidden, neg_pooled = self.prompts.negative(self.settings.negative_prompt)  # once, on the device
        self._negative = (neg_hidden.to(self.device, self.dtype), _to(neg_pooled, self))
        vcfg = self.vae.config
        self.vae_factor = float(vcfg.get("scaling_factor", 1.0))
        self.tiny = "upsampling_scaling_factor" in vcfg
        self.unet_calls = 0  # UNet forwards so far (residual CFG's saving is counted, not assumed)

    def _latent_shape(self) -> tuple[int, int, int]:
        u = self.unet.config
        h, w = self.settings.size or (u["sample_size"] * self.scale, u["sample_size"] * self.scale)
        if h % self.scale or w % self.scale:
            raise InputError(f"size {w}x{h} must be a multiple of {self.scale} pixels each way (the VAE's factor)")
        return u["in_channels"], h // self.scale, w // self.scale

    # -- what a chunk is: one frame -------------------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        return h * self.scale, w * self.scale

    @property
    def frames_per_chunk(self) -> int:
        return 1

    def timesteps(self, steps: int) -> list[int]:
        """The stream's timesteps: the t-index list's, else the scheduler's own for `steps`."""
        t_index = self.settings.t_index
        if t_index is None:
            ts = self.sched.timesteps(steps)
        elif len(t_index) != steps:
            raise InputError(f"the t-index list {list(t_index)} has {len(t_index)} entries, steps is {steps}")
        else:
            ts = ddpm.t_index_timesteps(t_index, train_steps=self.sched.train_steps)
        return ddpm.check_timesteps(ts, self.sched.train_steps)

    # -- per-stream state ---------------------------------------------------------------------------------
    def rows_per_frame(self, cfg: StreamConfig) -> float:
        """UNet rows a frame costs per pass on average: 2 with full guidance, 1 + 1/steps with "initialize"."""
        if not cfg.guided:
            return 1.0
        kind = self.settings.cfg_type
        return 2.0 if kind == "full" else 1.0 + (1.0 / cfg.steps if kind == "initialize" else 0.0)

    def schedule(self, cfg: StreamConfig) -> Schedule:
        """No clean pass: the stream batch finishes a frame every pass with `steps` frames in its rows; sequential
        runs a frame's `steps` passes one at a time. A frame leaves `steps - 1` passes after it entered."""
        units = max(1, round(cfg.steps * self.rows_per_frame(cfg)))
        if cfg.batch_steps:
            return Schedule(passes_per_chunk=1, chunk_units=units, emit_delay=cfg.steps - 1, warm_passes=cfg.steps)
        return Schedule(passes_per_chunk=cfg.steps, chunk_units=units, emit_delay=0, warm_passes=cfg.steps)

    def new_state(self, cfg: StreamConfig, seed: int) -> ImageState:
        gen = torch.Generator().manual_seed(seed)
        noise = self._draw(gen) if self.settings.noise == "fixed" else None
        ts = self.timesteps(cfg.steps)
        start = self.sched.start_scale(cfg.steps) if self.settings.t_index is None else 1.0
        return ImageState(cfg, ts, gen, noise, start)

    def _draw(self, gen: torch.Generator) -> Tensor:
        return torch.randn((1, *self.latent_shape), generator=gen).to(self.device)  # (1, C, h, w) float32

    def memory_bytes(self, state: ImageState) -> int:
        held = [state.x, state.noise, state.last_latent] + [f.noise for f in state.frames]
        held += [f.residual for f in state.frames]
        return sum(t.nbytes for t in held if t is not None)

    def pass_units(self, state: ImageState) -> int:
        """UNet rows of the stream's next pass (its frames and a new one where due, negative rows included)."""
        frames = len(state.frames) + self.needs_chunk(state)
        if not state.cfg.guided or self.settings.cfg_type == "self":
            return frames
        if self.settings.cfg_type == "full":
            return 2 * frames
        return frames + sum(f.step == 0 for f in state.frames) + self.needs_chunk(state)

    def needs_chunk(self, state: ImageState) -> bool:
        """Stream batch: a new frame enters every pass. Sequential: when the last one has left."""
        return state.cfg.batch_steps or not state.frames

    @torch.inference_mode()
    def admit(self, state: ImageState, cond: ImageCondition, inp: ChunkInput | None = None) -> None:
        """A new frame at the top of the buffer: noise, or the input latent noised to its strength."""
        noise = state.noise if state.noise is not None else self._draw(state.generator)
        if inp is None:
            ts, x = list(state.timesteps), noise * state.start_scale
        else:
            ts = ddpm.strength_timesteps(state.timesteps, inp.strength)
            z = inp.latent[:, :, 0].to(self.device, torch.float32)  # (1, C, h, w)
            if self.settings.feedback and state.last_latent is not None:
                z = torch.lerp(z, state.last_latent, self.settings.feedback)
            x = ddpm.renoise(z, noise, self.sched.alphas[ts[0] : ts[0] + 1]).float()
        state.frames.append(Frame(0, ts, cond, noise))
        state.x = x if state.x is None else torch.cat([state.x, x])

    def recondition(self, state: ImageState, cond: ImageCondition) -> None:
        """Frames that have run fewer than `switch_passes` of their steps take the new condition."""
        for f in state.frames:
            if f.step < state.cfg.switch_passes:
                f.cond = cond

    # -- passes ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def denoise(self, states: Sequence[ImageState]) -> list[list[Tensor]]:
        """ONE UNet call over every stream's frames (their negative rows after them), one step per frame; each
        stream's frames that took their last step leave, oldest first, as latents (C, 1, h, w)."""
        rows = [(st, f) for st in states for f in st.frames]
        if not rows:
            return [[] for _ in states]
        x = torch.cat([st.x for st in states if st.x is not None])  # (R, C, h, w) float32
        t = torch.tensor([f.timesteps[f.step] for _, f in rows])
        a = self.sched.alphas[t]  # (R,) float64
        neg = [i for i, (st, f) in enumerate(rows) if self._negative_row(st.cfg, f)]
        out = self._unet(x, t, [f.cond for _, f in rows], neg)  # (R + len(neg), C, h, w)
        _, eps = ddpm.split_prediction(x, out[: len(rows)], a, self.sched.prediction)  # (R, C, h, w) float64
        eps_neg = ddpm.split_prediction(x[neg], out[len(rows) :], a[neg], self.sched.prediction)[1] if neg else None
        eps = self._guide(rows, eps, eps_neg, neg)
        ad = a.to(x.device).view(-1, 1, 1, 1)
        x0 = (x.double() - (1 - ad).sqrt() * eps) / ad.sqrt()
        x_next = self._step(rows, x, x0, eps, t)
        return self._advance(states, x_next)

    def _negative_row(self, cfg: StreamConfig, f: Frame) -> bool:
        kind = self.settings.cfg_type
        return cfg.guided and (kind == "full" or kind == "initialize" and f.step == 0)

    def _unet(self, x: Tensor, t: Tensor, conds: list[ImageCondition], neg: list[int]) -> Tensor:
        """The UNet on the frames' rows, then a negative row for each index in `neg` -> outputs float32."""
        hidden = [c.hidden for c in conds] + [conds[i].neg_hidden for i in neg]
        x_in = torch.cat([x, x[neg]]).to(self.dtype)
        t_in = torch.cat([t, t[neg]]).to(self.device)
        extra = {}
        if self.kind == "sdxl":
            pooled = [c.pooled for c in conds] + [conds[i].neg_pooled for i in neg]  # (P,) each: SDXL has them
            text_embeds = torch.stack([p for p in pooled if p is not None])
            extra["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": self._time_ids(len(hidden))}
        self.unet_calls += 1
        return self.unet(x_in, t_in, encoder_hidden_states=torch.stack(hidden), **extra).sample.float()

    def _time_ids(self, n: int) -> Tensor:
        """SDXL's size condition: original size, crop corner (0, 0), target size: (n, 6)."""
        h, w = self.frame_size
        return torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=self.device).expand(n, 6)

    def _guide(self, rows: list[Row], eps: Tensor, eps_neg: Tensor | None, neg: list[int]) -> Tensor:
        """Guided noise per row: eps_n + w (eps - eps_n), eps_n the negative row's or delta * the residual."""
        out, s = eps.clone(), self.settings
        negatives = dict(zip(neg, eps_neg if eps_neg is not None else [], strict=True))
        for i, (st, f) in enumerate(rows):
            if not st.cfg.guided:
                continue
            if s.cfg_type == "full":
                base = negatives[i]
            else:
                if f.step == 0:
                    f.residual = negatives[i][None] if s.cfg_type == "initialize" else f.noise.double()
                assert f.residual is not None
                base = s.delta * f.residual[0].double()
            out[i] = base + st.cfg.guidance * (eps[i] - base)
        return out

    def _step(self, rows: list[Row], x: Tensor, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Each row to its next timestep (a' = 1 past its last); the residual noise each latent now carries."""
        nxt = [f.timesteps[f.step + 1] if f.step + 1 < len(f.timesteps) else -1 for _, f in rows]
        a_next = torch.where(torch.tensor(nxt) < 0, 1.0, self.sched.alphas[torch.tensor(nxt).clamp(min=0)])
        noise = None
        if self.sched.rule == "lcm":
            noise = torch.cat([self._step_noise(st, f) for st, f in rows])
        x_next = ddpm.step(self.sched.rule, x, x0, eps, t.to(x.device), a_next, noise)
        carried = eps if noise is None else noise.double()
        for i, (st, f) in enumerate(rows):  # only residual CFG reads it: a copy of the row, not a view of the batch
            f.residual = carried[i : i + 1].clone() if st.cfg.guided and self.settings.cfg_type != "full" else None
        return x_next

    def _step_noise(self, st: ImageState, f: Frame) -> Tensor:
        """LCM's noise for a frame's next step: its own start noise ("fixed"), or a new draw ("fresh")."""
        if f.step + 1 == len(f.timesteps):
            return torch.zeros_like(f.noise)
        return f.noise if st.noise is not None else self._draw(st.generator)

    def _advance(self, states: Sequence[ImageState], x: Tensor) -> list[list[Tensor]]:
        out, start = [], 0
        for st in states:
            n = len(st.frames)
            for f in st.frames:
                f.step += 1
            done = sum(f.step == len(f.timesteps) for f in st.frames)  # the oldest ones
            out.append([x[start + i, :, None].clone() for i in range(done)])
            if done:
                st.last_latent = x[start + done - 1 : start + done].clone()
            st.frames = st.frames[done:]
            st.x = x[start + done : start + n].clone() if done < n else None
            start += n
        return out

    # -- decoding and encoding ------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, states: Sequence[ImageState], latents: Sequence[Tensor]) -> list[np.ndarray]:
        """Finished frames (C, 1, h, w) -> uint8 (1, H, W, 3) each, in ONE VAE call."""
        if not latents:
            return []
        z = torch.stack([lat[:, 0] for lat in latents]).to(self.device, self.dtype) / self.vae_factor  # (N, C, h, w)
        images = self.vae.decode(z).sample.float()  # (N, 3, H, W) in [-1, 1]
        return [frames_to_uint8(img[:, None]) for img in images]

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> Tensor:
        """Input frames uint8 (1, H, W, 3) at `frame_size` -> latent (1, C, 1, h, w) float32 (the VAE's mode)."""
        x = uint8_to_frames(frames, self.device, self.dtype)[:, :, 0]  # (1, 3, H, W)
        enc = self.vae.encode(x)
        z = enc.latents if self.tiny else enc.latent_dist.mode()
        return (z.float() * self.vae_factor)[:, :, None]

    # -- conditioning ---------------------------------------------------------------------------------------
    def _embed(self, text: str) -> Tensor:
        """A prompt -> one flat vector (hidden states, then pooled): what prompt blends interpolate."""
        hidden, pooled = self.prompts.encode(check_prompt(text))
        return hidden.flatten() if pooled is None else torch.cat([hidden.flatten(), pooled])

    def _cross(self, flat: Tensor) -> ImageCondition:
        neg_hidden, neg_pooled = self._negative
        n = neg_hidden.numel()
        hidden = flat[:n].view_as(neg_hidden).to(self.device, self.dtype)
        pooled = None if neg_pooled is None else flat[n:].to(self.device, self.dtype)
        return ImageCondition(hidden, pooled, neg_hidden, neg_pooled)


def _to(t: Tensor | None, fam: ImageFamily) -> Tensor | None:
    return None if t is None else t.to(fam.device, fam.dtype)
