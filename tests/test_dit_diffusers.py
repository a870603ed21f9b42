"""The DiT is Wan2.1's architecture: equal to diffusers' WanTransformer3DModel on one chunk."""

from __future__ import annotations

import pytest
import torch

from framecast.models.config import DiTConfig
from framecast.models.convert import from_diffusers, to_diffusers
from framecast.models.dit import CausalWanDiT

diffusers = pytest.importorskip("diffusers")


def _tiny() -> DiTConfig:
    return DiTConfig(
        dim=48,
        num_heads=4,
        num_layers=2,
        ffn_dim=64,
        in_channels=4,
        out_channels=4,
        text_dim=20,
        freq_dim=32,
        chunk_frames=2,
        latent_height=8,
        latent_width=6,
    )


def _reference(cfg: DiTConfig) -> torch.nn.Module:
    return diffusers.WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
    ).eval()


def _randomize(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_matches_diffusers_on_one_chunk() -> None:
    torch.manual_seed(0)
    cfg = _tiny()
    ours = CausalWanDiT(cfg).eval()
    _randomize(ours)
    ref = _reference(cfg)
    missing, unexpected = ref.load_state_dict(to_diffusers(ours.state_dict()), strict=True), None
    del missing, unexpected
    x = torch.randn(2, cfg.in_channels, cfg.chunk_frames, cfg.latent_height, cfg.latent_width)
    text = torch.randn(2, 7, cfg.text_dim)
    t = torch.tensor([700.0, 250.0])
    with torch.no_grad():
        expected = ref(x, t, text, return_dict=False)[0]
        frames = cfg.chunk_frames
        out = ours(
            x,
            t[:, None].expand(2, frames),
            torch.arange(frames).expand(2, frames),
            ours.cross_kv(text).per_frame(frames),
        )
    err = (out.velocity - expected).abs().max().item()
    assert err < 1e-4 * expected.abs().max().item(), err


def test_name_conversion_round_trips() -> None:
    ours = CausalWanDiT(_tiny())
    state = ours.state_dict()
    back = from_diffusers(to_diffusers(state))
    assert back.keys() == state.keys()
    assert set(to_diffusers(state)) == set(_reference(_tiny()).state_dict())
