"""Discrete-time diffusion (DDPM-family image models: SD 1.5/2.1, SDXL, LCM, Turbo) as pure functions.

Convention: x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * eps, with a_t = alpha-bar_t of the model's training
schedule (t in 0 .. train_steps - 1). The network predicts eps ("epsilon"), v = sqrt(a) eps - sqrt(1 - a) x0
("v_prediction") or x0 ("sample"). Two step rules:

* "ode": the deterministic step from t to t' (DDIM with eta 0; the same map as an Euler step of the
  probability-flow ODE in sigma = sqrt((1 - a) / a)): x_t' = sqrt(a') x0 + sqrt(1 - a') eps.
* "lcm": a latent consistency model's step: the boundary-conditioned clean estimate
  c_skip(t) x_t + c_out(t) x0, noised to t' with a given noise: x_t' = sqrt(a') x0_lcm + sqrt(1 - a') noise.

Both return the clean estimate when t' is past the end (a' = 1). Nothing here holds state; noise comes in as
an argument. Row-wise: every row of a batch has its own t and t' (alphas as (R,) float64 tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from framecast.errors import InputError

Prediction = Literal["epsilon", "v_prediction", "sample"]
StepRule = Literal["ode", "lcm"]
PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear")
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


def alphas_cumprod(
    train_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, schedule: str = "scaled_linear"
) -> Tensor:
    """alpha-bar_t of the training schedule, (train_steps,) float64 ("scaled_linear": SD's betas, linear in
    sqrt(beta))."""
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, train_steps, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, train_steps, dtype=torch.float64) ** 2
    else:
        raise InputError(f"unsupported beta schedule {schedule!r}: expected one of {', '.join(BETA_SCHEDULES)}")
    return torch.cumprod(1.0 - betas, dim=0)


def t_index_timesteps(t_index: Sequence[int], grid_steps: int = 50, train_steps: int = 1000) -> list[int]:
    """StreamDiffusion's t-index list: entries of a `grid_steps`-step grid from the top, t = T-1 - i * T/grid
    ([0, 16, 32, 45] of 50 -> [999, 679, 359, 99])."""
    stride = train_steps // grid_steps
    if any(not 0 <= i < grid_steps for i in t_index):
        raise InputError(f"t-index entries must be in [0, {grid_steps}), got {list(t_index)}")
    return [train_steps - 1 - i * stride for i in t_index]


def strength_timesteps(timesteps: Sequence[int], strength: float) -> list[int]:
    """The same number of steps over [0, strength] of the schedule (img2img / SDEdit): each t scaled."""
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    return [max(0, round((t + 1) * strength) - 1) for t in timesteps]


def check_timesteps(timesteps: Sequence[int], train_steps: int) -> list[int]:
    """Timesteps must strictly decrease within [0, train_steps)."""
    ts = [int(t) for t in timesteps]
    if not ts or any(b >= a for a, b in zip(ts, ts[1:], strict=False)) or ts[-1] < 0 or ts[0] >= train_steps:
        raise InputError(f"timesteps must strictly decrease within [0, {train_steps}), got {ts}")
    return ts


def _rows(a: Tensor, x: Tensor) -> Tensor:
    return a.reshape((-1,) + (1,) * (x.dim() - 1))  # (R,) -> (R, 1, ...)


def split_prediction(x: Tensor, out: Tensor, a: Tensor, prediction: Prediction) -> tuple[Tensor, Tensor]:
    """The network's output on x_t (R, C, h, w) at alpha-bar a (R,) -> (x0, eps), float64."""
    a = _rows(a, x).to(x.device)
    xd, od = x.double(), out.double()
    if prediction == "epsilon":
        return (xd - (1 - a).sqrt() * od) / a.sqrt(), od
    if prediction == "v_prediction":
        return a.sqrt() * xd - (1 - a).sqrt() * od, a.sqrt() * od + (1 - a).sqrt() * xd
    if prediction == "sample":
        return od, (xd - a.sqrt() * od) / (1 - a).sqrt()
    raise InputError(f"unsupported prediction type {prediction!r}: expected one of {', '.join(PREDICTIONS)}")


def renoise(x0: Tensor, eps: Tensor, a_next: Tensor) -> Tensor:
    """sqrt(a') x0 + sqrt(1 - a') eps, row-wise (a' (R,) float64; 1 gives x0)."""
    a_next = _rows(a_next, x0).to(x0.device)
    return a_next.sqrt() * x0.double() + (1 - a_next).sqrt() * eps.double()


def lcm_scalings(t: Tensor) -> tuple[Tensor, Tensor]:
    """LCM's boundary condition at integer timesteps t (R,): (c_skip, c_out), float64."""
    ts = t.double() * LCM_TIMESTEP_SCALING
    c_skip = LCM_SIGMA_DATA**2 / (ts**2 + LCM_SIGMA_DATA**2)
    c_out = ts / (ts**2 + LCM_SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def step(
    rule: StepRule, x: Tensor, x0: Tensor, eps: Tensor, t: Tensor, a_next: Tensor, noise: Tensor | None = None
) -> Tensor:
    """One step of every row from x_t to t' (a' = a_next (R,), 1 at the end) -> x_t' in x's dtype.

    x0, eps: `split_prediction` of the (guided) output. "lcm" needs `noise` (R, C, h, w) for rows that go on.
    """
    if rule == "ode":
        return renoise(x0, eps, a_next).to(x.dtype)
    if rule == "lcm":
        c_skip, c_out = (_rows(c, x).to(x.device) for c in lcm_scalings(t))
        clean = c_skip * x.double() + c_out * x0
        return renoise(clean, noise if noise is not None else torch.zeros_like(x), a_next).to(x.dtype)
    raise InputError(f"unsupported step rule {rule!r}: expected 'ode' or 'lcm'")
