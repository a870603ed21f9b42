"""Flow-matching few-step sampling as pure functions.

Convention (Wan2.1, rectified flow): x_s = (1 - s) * x0 + s * noise for noise level s in [0, 1],
timestep t = 1000 * s, and the model predicts the velocity v = noise - x0. Two samplers step from s to s':
Euler, x_{s'} = x_s + (s' - s) * v (deterministic), and re-noise, x_{s'} = (1 - s') * x0 + s' * fresh noise with
x0 = x_s - s * v (the few-step samplers of CausVid, Self-Forcing and their kin). At s' = 0 both give x0.
Nothing here holds state; randomness comes in as a generator or as drawn noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from framecast.errors import InputError

MAX_STEPS = 4
DEFAULT_SHIFT = 5.0
SAMPLERS = ("euler", "renoise")  # `StreamConfig.sampler`: `euler_step`, `renoise_step`


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """Time shift of flow-matching schedules: s' = shift * s / (1 + (shift - 1) * s)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigmas(steps: int, shift: float = DEFAULT_SHIFT, start: float = 1.0) -> Tensor:
    """Noise levels of a `steps`-step schedule, from `start` down to 0: (steps + 1,) float32.

    `start` < 1 begins part way (SDEdit-style video-to-video); the shift bends the levels towards
    the noisy end, as Wan2.1 samplers do.
    """
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}, got {steps}")
    if not 0.0 < start <= 1.0:
        raise InputError(f"start noise level must be in (0, 1], got {start}")
    base = torch.linspace(start, 0.0, steps + 1, dtype=torch.float64)
    return shift_sigma(base, shift).float()


def unshift_sigma(sigma: float, shift: float) -> float:
    """Inverse of `shift_sigma`: the unshifted level u with shift_sigma(u) = sigma."""
    return sigma / (shift - (shift - 1) * sigma)


def sdedit_sigmas(steps: int, shift: float, strength: float) -> Tensor:
    """Noise levels (steps + 1,) of a video-to-video chunk noised to level `strength` in (0, 1]: the same
    shifted curve as `sigmas(steps, shift)`, restricted to [0, strength] (strength 1 gives that schedule)."""
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    return sigmas(steps, shift, start=min(1.0, unshift_sigma(strength, shift)))


def listed_sigmas(timesteps: Sequence[float], shift: float, strength: float = 1.0) -> Tensor:
    """Noise levels (len + 1,) float32 of an explicit timestep list (t in (0, 1000], descending), then 0.

    Each level is `shift_sigma(t / 1000, shift)`: shift 1 takes the list as it is (CausVid, StreamDiffusionV2,
    Krea), a larger shift warps it as Self-Forcing's `warp_denoising_step` does. A video-to-video chunk noised to
    `strength` < 1 scales the unshifted levels so that the first lands at `strength` (as `sdedit_sigmas` restricts
    the even grid); at 1 (the chunk starts from pure noise) the list is taken as it is.
    """
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    base = torch.tensor([*timesteps, 0.0], dtype=torch.float64) / 1000.0
    if strength != 1.0:
        base = base * (unshift_sigma(strength, shift) / base[0])
    return shift_sigma(base, shift).float()


def timesteps(sig: Tensor) -> Tensor:
    """Model timesteps (0..1000) of noise levels."""
    return sig * 1000.0


def euler_step(x: Tensor, velocity: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Euler step of the flow ODE. sigma, sigma_next broadcast against x (e.g. (B, 1, F, 1, 1))."""
    return x + (sigma_next - sigma).to(x.dtype) * velocity


def renoise_step(x: Tensor, velocity: Tensor, sigma: Tensor, sigma_next: Tensor, noise: Tensor) -> Tensor:
    """One re-noise step: the clean estimate x0 = x - sigma * v noised afresh to sigma_next,
    (1 - sigma_next) * x0 + sigma_next * noise. sigma, sigma_next broadcast against x (e.g. (B, 1, F, 1, 1));
    `noise` is x's shape (where sigma_next is 0 it is not used: any finite values)."""
    x0 = predict_x0(x, velocity, sigma)
    s = sigma_next.to(x0.dtype)
    return (1 - s) * x0 + s * noise


def predict_x0(x: Tensor, velocity: Tensor, sigma: Tensor) -> Tensor:
    """Clean estimate implied by a velocity prediction: x0 = x_s - s * v."""
    return x - sigma.to(x.dtype) * velocity


def noise_like(shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise drawn from the stream's own generator (on the generator's device)."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


def add_noise(x0: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """Noise a clean latent to level sigma: (1 - s) * x0 + s * noise."""
    return (1 - sigma) * x0 + sigma * noise
