"""A per-frame image model family behind the model-family contract (test code, real computation).

A diffusers `UNet2DConditionModel` denoises one image latent per frame; StreamDiffusion's stream batch keeps one
frame per denoising step in flight: at every pass each frame in a stream's buffer moves one step down the stream's
timestep list, a new noisy frame enters at the top and the frame that finished its last step leaves. A diffusers
`AutoencoderTiny` (TAESD) decodes finished frames and encodes inputs (video to video). The scheduler is DDIM
(eta 0, epsilon prediction) over the alphas of a linear beta schedule, in a few lines here so it can be tested.

It knows nothing of the driver: it only answers the calls of `framecast.family.contract.ModelFamily`
(docs/architecture.md, "Adding a family: a worked example").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny  # the modules, not the lazy top
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # level: mypy sees the real classes
from torch import Tensor, nn

from framecast.errors import InputError
from framecast.family.contract import Schedule
from framecast.io.frames import frames_to_uint8, uint8_to_frames
from framecast.stream.config import StreamConfig
from framecast.stream.prompt import Conditioner
from framecast.stream.state import ChunkInput

TRAIN_STEPS = 1000


# -- the scheduler: pure functions -------------------------------------------------------------------------
def alphas_cumprod(train_steps: int = TRAIN_STEPS, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """alpha-bar_t of a linear beta schedule, (train_steps,) float64."""
    betas = torch.linspace(beta_start, beta_end, train_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def even_timesteps(steps: int, train_steps: int = TRAIN_STEPS) -> list[int]:
    """`steps` timesteps evenly spaced from the top: 4 -> [999, 749, 499, 249]."""
    return [train_steps * (steps - i) // steps - 1 for i in range(steps)]


def t_index_timesteps(t_index: Sequence[int], inference_steps: int = 50, train_steps: int = TRAIN_STEPS) -> list[int]:
    """StreamDiffusion's t-index list: the listed entries of an `inference_steps`-step schedule's timesteps."""
    stride = train_steps // inference_steps
    return [train_steps - 1 - i * stride for i in t_index]


def sdedit_timesteps(timesteps: Sequence[int], strength: float) -> list[int]:
    """A frame started from an input at `strength` in (0, 1]: the same number of steps over [0, strength]."""
    return [max(0, round((t + 1) * strength) - 1) for t in timesteps]


def ddim_step(x: Tensor, eps: Tensor, a: Tensor, a_next: Tensor) -> Tensor:
    """One deterministic DDIM step (eta 0, epsilon prediction) from alpha-bar `a` to `a_next` (rows of x:
    (R, C, h, w); a, a_next (R,) float64; a_next 1 at the last step, which returns the clean estimate)."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    a, a_next = a.reshape(shape), a_next.reshape(shape)
    x0 = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
    return (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps.double()).to(x.dtype)


# -- per-stream state ----------------------------------------------------------------------------------------
@dataclass
class Frame:
    """A frame in flight: the index of its next step, its timesteps (one per step) and its condition (T, D)."""

    step: int
    timesteps: list[int]
    cond: Tensor


@dataclass
class ImageState:
    """One stream: its latent buffer of frames in flight (oldest first, one per denoising step in the stream
    batch), their conditions and timesteps, its noise generator, and its last decoded frame."""

    cfg: StreamConfig
    timesteps: list[int]  # the stream's timestep list, one per step, from the top
    generator: torch.Generator  # on the CPU: the same noise on any device
    x: Tensor | None = None  # (R, C, h, w): the frames in flight, oldest first
    frames: list[Frame] = field(default_factory=list)  # row by row, as x
    last_output: np.ndarray | None = None  # (1, H, W, 3): the last frame decoded (for temporal reuse)

    @property
    def steps(self) -> int:
        return len(self.timesteps)


# -- the family ------------------------------------------------------------------------------------------------
class ImageFamily:
    """A UNet, a TAESD and a text encoder, serving any number of streams (`ModelFamily`, by duck typing)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderTiny,
        embed: Callable[[str], Tensor],
        device: torch.device | str = "cpu",
        timesteps: Callable[[int], list[int]] = even_timesteps,
    ) -> None:
        self.device, self.dtype = torch.device(device), torch.float32
        self.unet = unet.to(self.device).eval()  # type: ignore[arg-type]  # (diffusers types `to` oddly); float32
        self.vae = vae.to(self.device).eval()  # type: ignore[arg-type]
        self.network: nn.Module = self.unet
        self.timesteps = timesteps
        self.alphas = alphas_cumprod()  # on the CPU, float64: indexed per row
        self._embed_text = embed
        self.conditioner: Conditioner[Any] = Conditioner(self._embed, self._cross)
        u, v = unet.config, vae.config
        self.latent_shape = (u["in_channels"], u["sample_size"], u["sample_size"])
        self.scale = v["upsampling_scaling_factor"] ** (len(v["decoder_block_out_channels"]) - 1)
        if v["latent_channels"] != u["in_channels"]:
            raise InputError(f"the VAE gives {v['latent_channels']} channels, the UNet takes {u['in_channels']}")

    # -- what a chunk is: one frame ------------------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int]:
        _, h, w = self.latent_shape
        return h * self.scale, w * self.scale

    @property
    def frames_per_chunk(self) -> int:
        return 1

    # -- per-stream state ------------------------------------------------------------------------------------
    def schedule(self, cfg: StreamConfig) -> Schedule:
        """No clean pass: the stream batch finishes a frame every pass, `steps` frames in its rows; sequential
        runs a frame's `steps` passes one row at a time. A frame leaves `steps - 1` passes after it entered."""
        if cfg.batch_steps:
            return Schedule(passes_per_chunk=1, chunk_units=cfg.steps, emit_delay=cfg.steps - 1, warm_passes=cfg.steps)
        return Schedule(passes_per_chunk=cfg.steps, chunk_units=cfg.steps, emit_delay=0, warm_passes=cfg.steps)

    def new_state(self, cfg: StreamConfig, seed: int) -> ImageState:
        if cfg.guided:
            raise InputError("this image family has no classifier-free guidance (guidance must be 1)")
        ts = self.timesteps(cfg.steps)
        if len(ts) != cfg.steps or any(b >= a for a, b in zip(ts, ts[1:], strict=False)) or ts[-1] < 0:
            raise InputError(f"the schedule must give {cfg.steps} decreasing timesteps, got {ts}")
        if ts[0] >= len(self.alphas):
            raise InputError(f"timesteps must be below {len(self.alphas)}, got {ts[0]}")
        return ImageState(cfg, ts, torch.Generator().manual_seed(seed))

    def memory_bytes(self, state: ImageState) -> int:
        conds = {id(f.cond): f.cond for f in state.frames}
        held = sum(t.nbytes for t in conds.values())
        return held + (0 if state.x is None else state.x.nbytes)

    def pass_units(self, state: ImageState) -> int:
        """Frames in the stream's next pass (those in flight, and a new one where due): UNet rows."""
        return len(state.frames) + self.needs_chunk(state)

    def needs_chunk(self, state: ImageState) -> bool:
        """Stream batch: a new frame enters every pass. Sequential: when the last one has left."""
        return state.cfg.batch_steps or not state.frames

    @torch.inference_mode()
    def admit(self, state: ImageState, cond: Tensor, inp: ChunkInput | None = None) -> None:
        """Push a new frame at the top of the buffer: noise, or the input latent noised to its strength."""
        noise = torch.randn((1, *self.latent_shape), generator=state.generator).to(self.device, self.dtype)
        if inp is None:
            ts, x = list(state.timesteps), noise
        else:
            ts = sdedit_timesteps(state.timesteps, inp.strength)
            a = self.alphas[ts[0]]
            x = (a.sqrt() * inp.latent[:, :, 0].double() + (1 - a).sqrt() * noise.double()).to(self.dtype)
        state.frames.append(Frame(0, ts, cond))
        state.x = x if state.x is None else torch.cat([state.x, x])

    def recondition(self, state: ImageState, cond: Tensor) -> None:
        """Frames that have run fewer than `switch_passes` of their steps take the new condition."""
        for f in state.frames:
            if f.step < state.cfg.switch_passes:
                f.cond = cond

    # -- passes --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def denoise(self, states: Sequence[ImageState]) -> list[list[Tensor]]:
        """ONE UNet call over every stream's buffer (a timestep and a condition per row), one DDIM step per
        row; each stream's frames that took their last step leave, oldest first, as (C, 1, h, w)."""
        rows = [f for st in states for f in st.frames]
        if not rows:
            return [[] for _ in states]
        x = torch.cat([st.x for st in states if st.x is not None])
        t = [f.timesteps[f.step] for f in rows]
        t_next = [f.timesteps[f.step + 1] if f.step + 1 < len(f.timesteps) else -1 for f in rows]
        a = self.alphas[t]
        a_next = torch.where(torch.tensor(t_next) < 0, 1.0, self.alphas[torch.tensor(t_next).clamp(min=0)])
        cond = torch.stack([f.cond for f in rows])
        timestep = torch.tensor(t, device=self.device)
        eps = self.unet(x, timestep, encoder_hidden_states=cond).sample
        x = ddim_step(x, eps, a.to(self.device), a_next.to(self.device))
        out, start = [], 0
        for st in states:
            n = len(st.frames)
            for f in st.frames:
                f.step += 1
            done = sum(f.step == len(f.timesteps) for f in st.frames)  # the oldest ones
            assert all(f.step == len(f.timesteps) for f in st.frames[:done])
            out.append([x[start + i, :, None].clone() for i in range(done)])
            st.frames = st.frames[done:]
            st.x = x[start + done : start + n].clone() if done < n else None
            start += n
        return out

    @torch.inference_mode()
    def decode(self, states: Sequence[ImageState], latents: Sequence[Tensor]) -> list[np.ndarray]:
        """Finished frames (C, 1, h, w) -> uint8 (1, H, W, 3) each, in ONE TAESD call."""
        if not latents:
            return []
        z = torch.stack([lat[:, 0] for lat in latents]).to(self.device, self.dtype)  # (N, C, h, w)
        images = self.vae.decode(z).sample  # (N, 3, H, W) in [-1, 1]
        frames = [frames_to_uint8(img[:, None]) for img in images]
        for st, f in zip(states, frames, strict=True):  # in order: a stream's later frame wins
            st.last_output = f
        return frames

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> Tensor:
        """Input frames uint8 (1, H, W, 3) at `frame_size` -> latent (1, C, 1, h, w)."""
        x = uint8_to_frames(frames, self.device, self.dtype)[:, :, 0]  # (1, 3, H, W)
        return self.vae.encode(x).latents[:, :, None]

    # -- conditioning --------------------------------------------------------------------------------------
    def _embed(self, text: str) -> Tensor:
        return self._embed_text(text).to(self.device, self.dtype)  # (T, D)

    def _cross(self, embedding: Tensor) -> Tensor:
        """The condition is the embedding itself: rows of the UNet's encoder_hidden_states."""
        return embedding.to(self.device, self.dtype)


# -- building a small one ------------------------------------------------------------------------------------------
def tiny_unet(seed: int = 0, text_dim: int = 12) -> UNet2DConditionModel:
    """An 8x8-latent UNet with one cross-attention block down and up, random weights made to matter."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_dim,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    _perturb(unet, seed + 1, 0.05)
    return unet.eval()


def tiny_vae(seed: int = 0) -> AutoencoderTiny:
    """A TAESD with 4x up/down sampling (8x8 latents <-> 32x32 frames). Its random weights are perturbed so that
    the encoder gives latents of about unit scale (default init: about 0.02) and the decoder draws with contrast
    around mid grey (its output is 2 * layers(z) - 1: a default-init decoder draws nearly black)."""
    torch.manual_seed(seed)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16),
        decoder_block_out_channels=(16, 16, 16),
        num_encoder_blocks=(1, 1, 1),
        num_decoder_blocks=(1, 1, 1),
        latent_channels=4,
    )
    _perturb(vae.encoder, seed + 11, 0.1)
    _perturb(vae.decoder, seed + 7, 0.03)
    with torch.no_grad():
        vae.decoder.layers[-1].bias.add_(0.5)
    return vae.eval()


def _perturb(module: nn.Module, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
