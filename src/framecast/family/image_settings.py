"""Settings of the per-frame image family (`family.image`): size, timesteps, guidance kind, noise, feedback."""

from __future__ import annotations

from dataclasses import dataclass

from framecast.errors import InputError

CFG_TYPES = ("full", "self", "initialize")
NOISE_KINDS = ("fixed", "fresh")


@dataclass(frozen=True)
class ImageSettings:
    """How an image model streams (the stream settings common to every family stay in `StreamConfig`).

    size:            (height, width) in pixels, multiples of the VAE's factor (8); None: the UNet's sample size.
    t_index:         StreamDiffusion's t-index list over a 50-step grid ([0, 16, 32, 45] -> t = 999, 679, 359,
                     99); its length is the number of steps. None: the folder's scheduler's own timesteps.
    cfg_type:        how guidance (`StreamConfig.guidance` != 1) gets its negative side. "full": a negative row
                     per frame and pass (classifier-free guidance). "self": residual CFG, the negative
                     prediction is `delta` times the noise the latent carries, no extra UNet row.
                     "initialize": as "self", but a frame's first pass runs the negative prompt once and that
                     prediction is the residual it starts from.
    delta:           residual CFG's weight of the residual noise.
    negative_prompt: the negative side of guidance ("" is the empty prompt; SDXL: zeros, as diffusers).
    noise:           "fixed": one noise draw per stream, reused for every frame (the same input gives the same
                     output: less flicker); "fresh": new noise for every frame and LCM step (diffusers' way).
    feedback:        img2img: weight of the stream's last output latent blended into each input latent.
    """

    size: tuple[int, int] | None = None
    t_index: tuple[int, ...] | None = None
    cfg_type: str = "self"
    delta: float = 1.0
    negative_prompt: str = ""
    noise: str = "fixed"
    feedback: float = 0.0

    def __post_init__(self) -> None:
        if self.cfg_type not in CFG_TYPES:
            raise InputError(f"cfg_type must be one of {', '.join(CFG_TYPES)}, got {self.cfg_type!r}")
        if self.noise not in NOISE_KINDS:
            raise InputError(f"noise must be one of {', '.join(NOISE_KINDS)}, got {self.noise!r}")
        if not 0.0 <= self.delta <= 2.0:
            raise InputError(f"delta must be in [0, 2], got {self.delta}")
        if not 0.0 <= self.feedback < 1.0:
            raise InputError(f"feedback must be in [0, 1), got {self.feedback}")
        if self.t_index is not None and not self.t_index:
            raise InputError("t_index must list at least one entry")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 8):
            raise InputError(f"size must be (height, width) of at least 8 pixels each, got {self.size}")
