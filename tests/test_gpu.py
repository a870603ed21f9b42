"""GPU checks, opt in with `-m gpu` on a machine with CUDA."""

from __future__ import annotations

import pytest
import torch

from framecast.family.denoiser import Denoiser as Engine
from framecast.stream.config import StreamConfig
from framecast.stream.state import Condition, StreamState
from tests.conftest import RandomTextEncoder, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _latents(device: str, dtype: torch.dtype) -> torch.Tensor:
    model = tiny_model().to(device, dtype)
    kv = model.cross_kv(RandomTextEncoder(model.config.text_dim).encode(["red"]).to(device))
    cond = Condition.from_cross(kv)
    st = StreamState.create(model.config, StreamConfig(steps=2), 0, dtype, torch.device(device))
    eng, out = Engine(model), []
    while len(out) < 6:
        out += eng.step([st], [lambda: cond])[0]
    return torch.stack(out).float().cpu()


def test_cuda_fp32_matches_cpu() -> None:
    torch.testing.assert_close(_latents("cuda", torch.float32), _latents("cpu", torch.float32), rtol=1e-3, atol=1e-3)
