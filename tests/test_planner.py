"""The memory planner against memory measured on the CPU: each term exactly against the objects it counts, and
a pass's activations (and a whole 1.3B stream, slow) against the peak RSS of a process that runs it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framecast.cli import main
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.models.config import DiTConfig, preset
from framecast.planner import (
    UMT5_XXL_PARAMS,
    PlanSpec,
    activation_bytes,
    condition_bytes,
    dit_weight_bytes,
    kv_cache_bytes,
    parse_memory,
    plan,
)
from framecast.planner_model import wan_vae_bytes
from framecast.recipes import recipe
from framecast.stream.config import StreamConfig
from framecast.stream.state import Condition, StreamState
from tests.conftest import tiny_config, tiny_model

PROBE = Path(__file__).parent / "memory_probe.py"
RSS_TOLERANCE = 0.25  # a pass's peak RSS and the planned activations agree within 25%


def _bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_are_the_model_s_bytes(dtype: torch.dtype) -> None:
    for kw in ({}, dict(text_modulation=True, structure_channels=4, refiner_channels=8)):
        model = tiny_model(**kw).to(dtype)  # norms and modulation stay float32, as the planner counts them
        assert dit_weight_bytes(model.config, dtype) == _bytes(model)


STREAMS = [
    StreamConfig(),
    StreamConfig(steps=2, batch_steps=False),
    StreamConfig(steps=3, clean_pass=False, batch_steps=False, sink_chunks=2, window_chunks=3),
    StreamConfig(steps=2, guidance=3.0),
    recipe("streamdiffusionv2").stream_config(),
]


@pytest.mark.parametrize("cfg", STREAMS, ids=lambda c: f"{c.steps}-{c.batch_steps}-{c.guided}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_and_condition_are_the_state_s_bytes(cfg: StreamConfig, dtype: torch.dtype) -> None:
    mc = tiny_config(chunk_frames=2)
    text = torch.randn(1, 7, mc.text_dim)
    cond = Condition.from_cross(tiny_model(chunk_frames=2).to(dtype).cross_kv(text))
    st = StreamState.create(mc, cfg, 0, dtype, torch.device("cpu"), cond)
    assert kv_cache_bytes(mc, cfg, dtype) == st.memory_bytes()
    assert condition_bytes(mc, 7, dtype) == sum(t.numel() * t.element_size() for t in (cond.k, cond.v))


def test_tiny_decoder_state_is_the_last_latent_frame() -> None:
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=4)).eval()
    st = ae.new_decoder_state()
    ae.decode_chunks([torch.randn(4, 2, 6, 10)], [st])
    assert st.nbytes() == 4 * 6 * 10 * 4


def test_wan_decoder_state_equals_a_real_decode() -> None:
    """The meta-device count equals the cache a real (tiny) Wan VAE carries after decoding, in steady state."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLWan

    from framecast.models.wan_vae import WanVAE
    from tests.wan_parts import VAE

    vae = WanVAE(AutoencoderKLWan(**VAE)).eval()
    st = vae.new_decoder_state()
    for _ in range(3):
        vae.decode_chunks([torch.randn(vae.latent_channels, 1, 4, 6)], [st])
    weights, state = wan_vae_bytes(dict(VAE), 4, 6)
    assert state == st.nbytes() and weights == sum(p.numel() * 4 for p in vae.vae.parameters())


def test_umt5_xxl_count_is_transformers() -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    xxl = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     feed_forward_proj="gated-gelu")  # fmt: skip
    with torch.device("meta"):
        assert sum(p.numel() for p in UMT5EncoderModel(xxl).parameters()) == UMT5_XXL_PARAMS


def _probe(dit: DiTConfig, stream: StreamConfig, chunks: int, tokens: int) -> dict:
    """Run tests/memory_probe.py in its own process (large allocations mapped, so a freed pass leaves nothing)."""
    d, s = dataclasses.asdict(dit), dataclasses.asdict(stream)
    d["patch_size"], s["timesteps"] = list(d["patch_size"]), list(s["timesteps"])
    spec = json.dumps(dict(dit=d, stream=s, chunks=chunks, tokens=tokens))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, str(PROBE), spec], capture_output=True, text=True, env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MID = DiTConfig(dim=256, num_heads=2, num_layers=4, ffn_dim=1536, text_dim=64, freq_dim=64, chunk_frames=3,
                latent_height=32, latent_width=32)  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("cfg", [StreamConfig(steps=4), StreamConfig(steps=2, batch_steps=False)], ids=str)
def test_activations_match_the_peak_rss_of_a_pass(cfg: StreamConfig) -> None:
    """Steady passes of one stream (3840 query tokens in the stream batch's row) raise the process's peak RSS above
    what it held before them by the planned activations (CPU: attention weights materialised), within 25%."""
    r = _probe(MID, cfg, chunks=14, tokens=64)
    measured, planned = r["passes"] - r["built"], activation_bytes(MID, cfg, torch.float32, 64, scores=True)
    assert abs(measured - planned) <= RSS_TOLERANCE * planned, (measured, planned)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_wan_13b_streams_end_to_end_at_the_planned_peak() -> None:
    """The 1.3B configuration (30 blocks, dim 1536), random float32 weights, 160 x 96 pixels (a 12 x 20 latent),
    StreamDiffusionV2's recipe (1 latent frame a chunk, 2 steps, 3 sinks + 2 window chunks), 512 text tokens,
    the tiny decoder: 48 frames, and the process's peak RSS above its start is the planned total within 10%."""
    dit = dataclasses.replace(preset("wan-1.3b"), chunk_frames=1, latent_height=12, latent_width=20)
    stream = recipe("streamdiffusionv2").stream_config()
    r = _probe(dit, stream, chunks=12, tokens=512)
    assert r["frames"] == 48
    with torch.device("meta"):
        ae = sum(p.numel() for p in TinyAutoencoder(AutoencoderConfig(latent_channels=16)).parameters())
    p = plan(PlanSpec(dit, stream, torch.float32, 512, 0, ae * 4, 16 * 12 * 20 * 4, scores=True))
    measured = max(r["built"], r["passes"]) - r["baseline"]
    assert abs(measured - p.total(1)) <= 0.10 * p.total(1), (measured, p.total(1))


def test_plan_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--model", "wan-1.3b", "--size", "832x480", "--recipe", "self-forcing"]) == 0
    out = capsys.readouterr().out
    assert "DiT weights" in out and "stream(s) fit" in out and "(self-forcing)" in out
    assert main(["plan", "--model", "tiny", "--size", "65x64"]) == 2
    assert main(["plan", "--model", "tiny", "--gpu-memory", "lots"]) == 2
    assert parse_memory("80GB") == 80 * 10**9 and parse_memory("24G") == 24 * 2**30 == parse_memory("24GiB")
