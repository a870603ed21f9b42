"""The Wan VAE (models/wan_vae.py) streams: N chunks, each stream with its own causal-conv cache, equal diffusers'
offline `AutoencoderKLWan` call over the whole video; several streams in one call equal each alone; the original
Wan2.1 file and diffusers' folder load the same weights; bad files are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framecast.errors import InputError, ModelLoadError
from framecast.models.wan_vae import WanVAE
from framecast.models.wan_vae_weights import load_wan_vae, original_to_diffusers_name
from tests.wan_parts import VAE, tiny_vae, vae_to_original

diffusers = pytest.importorskip("diffusers")

CHUNKS = ((0, 3), (3, 4), (4, 7))  # latent frames of three chunks of different lengths


@pytest.fixture(scope="module")
def ref() -> torch.nn.Module:
    return tiny_vae()


@pytest.fixture(scope="module")
def vae(ref: torch.nn.Module) -> WanVAE:
    return WanVAE(ref).eval()


def latents(seed: int, frames: int = 7) -> torch.Tensor:
    return torch.randn(2, 16, frames, 6, 8, generator=torch.Generator().manual_seed(seed))  # (B, C, F, h, w)


def offline_decode(ref: torch.nn.Module, vae: WanVAE, z: torch.Tensor) -> torch.Tensor:
    """diffusers' own decode of the whole clip (latents de-normalised as WanPipeline does)."""
    with torch.no_grad():
        return ref.decode(z * vae.latent_std[None] + vae.latent_mean[None]).sample  # type: ignore[operator]


def test_streaming_decode_equals_offline_decode(ref: torch.nn.Module, vae: WanVAE) -> None:
    z = latents(0)
    whole = offline_decode(ref, vae, z)  # (2, 3, 25, 48, 64)
    states = [vae.new_decoder_state(), vae.new_decoder_state()]
    chunks = [vae.decode_chunks([z[0, :, a:b], z[1, :, a:b]], states) for a, b in CHUNKS]
    assert [c[0].shape[1] for c in chunks] == [9, 4, 12]  # a stream's first chunk: 4 F - 3 frames, then 4 F
    for row in range(2):
        streamed = torch.cat([c[row] for c in chunks], dim=1)
        assert streamed.shape == whole[row].shape
        assert (streamed - whole[row]).abs().max().item() < 1e-5
    assert torch.allclose(vae.decode(z), whole, atol=1e-5, rtol=0)  # the offline call of framecast's wrapper


def test_streaming_encode_equals_offline_encode(ref: torch.nn.Module, vae: WanVAE) -> None:
    x = torch.rand(2, 3, 21, 48, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        mean = ref.encode(x).latent_dist.mode()  # type: ignore[operator]
    whole = (mean - vae.latent_mean[None]) / vae.latent_std[None]  # (2, 16, 6, 6, 8)
    caches = [vae.new_encoder_state(), vae.new_encoder_state()]
    parts = [vae.encode_chunks([x[0, :, a:b], x[1, :, a:b]], caches) for a, b in ((0, 9), (9, 13), (13, 21))]
    for row in range(2):
        streamed = torch.cat([p[row] for p in parts], dim=1)
        assert (streamed - whole[row]).abs().max().item() < 1e-5 * whole.abs().max().item()
    with pytest.raises(InputError, match=r"first chunk must hold 1 \+ 4 k frames for the Wan VAE, got 8"):
        vae.encode_chunks([x[0, :, :8]], [vae.new_encoder_state()])
    with pytest.raises(InputError, match="a chunk after the first must hold 4 k frames"):
        vae.encode_chunks([x[0, :, :5]], [caches[0]])


def test_batched_streams_equal_each_alone(vae: WanVAE) -> None:
    """Three streams in different phases (one starts a chunk later; one finishes two chunks in the call) decode
    in one call as each does alone, each with its own cache."""
    z = latents(2)
    alone = []
    for row in range(2):
        st = vae.new_decoder_state()
        alone.append([vae.decode_chunks([z[row, :, a:b]], [st])[0] for a, b in ((0, 2), (2, 4), (4, 6))])
    a, b = vae.new_decoder_state(), vae.new_decoder_state()
    first = vae.decode_chunks([z[0, :, 0:2]], [a])
    both = vae.decode_chunks([z[0, :, 2:4], z[1, :, 0:2], z[1, :, 2:4]], [a, b, b])  # b twice, in order
    last = vae.decode_chunks([z[0, :, 4:6], z[1, :, 4:6]], [a, b])
    got = [[first[0], both[0], last[0]], [both[1], both[2], last[1]]]
    for row in range(2):
        for mine, ref in zip(got[row], alone[row], strict=True):
            assert mine.shape == ref.shape and (mine - ref).abs().max().item() < 1e-5
    assert a.nbytes() == b.nbytes() > 0  # the cache holds two frames per causal conv, the same after every chunk


def test_original_names_convert_to_diffusers() -> None:
    """Names of the published Wan2.1_VAE.pth (2 residual blocks per stage) and what diffusers calls them."""
    known = {
        "conv1.weight": "quant_conv.weight",
        "conv2.bias": "post_quant_conv.bias",
        "encoder.conv1.weight": "encoder.conv_in.weight",
        "encoder.downsamples.2.resample.1.weight": "encoder.down_blocks.2.resample.1.weight",
        "encoder.downsamples.3.residual.2.weight": "encoder.down_blocks.3.conv1.weight",
        "encoder.downsamples.3.shortcut.weight": "encoder.down_blocks.3.conv_shortcut.weight",
        "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
        "encoder.middle.2.residual.3.gamma": "encoder.mid_block.resnets.1.norm2.gamma",
        "encoder.head.2.bias": "encoder.conv_out.bias",
        "decoder.head.0.gamma": "decoder.norm_out.gamma",
        "decoder.upsamples.2.residual.6.weight": "decoder.up_blocks.0.resnets.2.conv2.weight",
        "decoder.upsamples.3.time_conv.weight": "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
        "decoder.upsamples.4.shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
        "decoder.upsamples.11.resample.1.bias": "decoder.up_blocks.2.upsamplers.0.resample.1.bias",
        "decoder.upsamples.14.residual.0.gamma": "decoder.up_blocks.3.resnets.2.norm1.gamma",
    }
    for old, new in known.items():
        assert original_to_diffusers_name(old, num_res_blocks=2) == new, old
        assert vae_to_original(new, num_res_blocks=2) == old, new


def test_both_layouts_load_the_same_vae(ref: torch.nn.Module, vae: WanVAE, tmp_path: Path) -> None:
    ref.save_pretrained(tmp_path / "vae")  # type: ignore[operator]
    original = {vae_to_original(k, VAE["num_res_blocks"]): v.clone() for k, v in ref.state_dict().items()}  # type: ignore[arg-type]
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    from_folder, from_file = load_wan_vae(tmp_path / "vae"), load_wan_vae(tmp_path / "Wan2.1_VAE.pth")
    assert from_file.vae.config.dim_mult == VAE["dim_mult"] and from_file.vae.config.num_res_blocks == 1
    assert from_file.vae.config.temperal_downsample == VAE["temperal_downsample"]
    expected = vae.state_dict()
    for model in (from_folder, from_file):
        state = model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)


def _bad(path: Path, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match) as info:
        load_wan_vae(path)
    assert "\n" not in str(info.value)


def test_bad_vae_files(ref: torch.nn.Module, tmp_path: Path) -> None:
    _bad(tmp_path / "nowhere.pth", "Wan VAE not found: .*nowhere.pth")
    folder = tmp_path / "vae"
    ref.save_pretrained(folder)  # type: ignore[operator]
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _bad(folder, "diffusion_pytorch_model.safetensors is truncated or not safetensors")
    (folder / "config.json").unlink()
    _bad(folder, "no config.json in the Wan VAE folder")
    state = {vae_to_original(k, 1): v for k, v in ref.state_dict().items()}  # type: ignore[arg-type]
    torch.save({**state, "decoder.head.2.weight": torch.zeros(3, 8, 1, 1, 1)}, tmp_path / "shape.pth")
    _bad(tmp_path / "shape.pth", r"decoder.conv_out.weight has shape \(3, 8, 1, 1, 1\), but its config gives")
    torch.save({k: v for k, v in state.items() if k != "conv2.weight"}, tmp_path / "lacking.pth")
    _bad(tmp_path / "lacking.pth", "is no Wan2.1 VAE: it lacks conv2.weight")
    torch.save({**state, "step": InputError("x")}, tmp_path / "pickle.pth")
    _bad(tmp_path / "pickle.pth", "holds a framecast.errors.InputError object")
