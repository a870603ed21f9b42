"""Tests for framecast.models.autoencoder: shapes, streaming == offline, save/load and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from framecast.errors import InputError, ModelLoadError
from framecast.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    StreamDecoder,
    StreamEncoder,
    TinyAutoencoder,
    load_autoencoder,
    save_autoencoder,
    with_decoder_context,
)

CFG = AutoencoderConfig(latent_channels=4, spatial_factor=4, temporal_factor=4, width=8)


@pytest.fixture()
def ae() -> TinyAutoencoder:
    torch.manual_seed(0)
    return TinyAutoencoder(CFG).eval()


def clip(t: int = 12, h: int = 16, w: int = 16, b: int = 2) -> torch.Tensor:
    """Random frames (B, 3, T, H, W) in [-1, 1]."""
    gen = torch.Generator().manual_seed(1)
    return torch.rand(b, 3, t, h, w, generator=gen) * 2 - 1


def test_protocol_and_properties(ae: TinyAutoencoder) -> None:
    assert isinstance(ae, Autoencoder)
    assert (ae.temporal_factor, ae.spatial_factor, ae.latent_channels) == (4, 4, 4)


def test_encode_decode_shapes_and_range(ae: TinyAutoencoder) -> None:
    with torch.no_grad():
        z = ae.encode(clip())
        x = ae.decode(z)
    assert z.shape == (2, 4, 3, 4, 4)
    assert x.shape == (2, 3, 12, 16, 16)
    assert x.min() >= -1 and x.max() <= 1


def test_default_config_shapes() -> None:
    model = TinyAutoencoder()
    with torch.no_grad():
        z = model.encode(clip(t=4, h=16, w=32, b=1))
    assert z.shape == (1, 8, 1, 2, 4)


def test_latent_frames_are_independent(ae: TinyAutoencoder) -> None:
    x = clip()
    with torch.no_grad():
        full = ae.encode(x)
        second = ae.encode(x[:, :, 4:8])
    torch.testing.assert_close(full[:, :, 1:2], second)


@pytest.mark.parametrize(
    ("shape", "needle"),
    [
        ((2, 3, 10, 16, 16), "multiple of temporal_factor"),
        ((2, 3, 8, 18, 16), "multiples of 4"),
        ((2, 1, 8, 16, 16), "3 channels"),
        ((3, 8, 16, 16), "5-D"),
    ],
)
def test_encode_rejects_bad_shapes(ae: TinyAutoencoder, shape: tuple[int, ...], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        ae.encode(torch.zeros(shape))


def test_decode_rejects_bad_latent(ae: TinyAutoencoder) -> None:
    with pytest.raises(InputError, match="4 channels"):
        ae.decode(torch.zeros(1, 5, 2, 4, 4))
    with pytest.raises(InputError, match="5-D"):
        ae.decode(torch.zeros(4, 2, 4, 4))


def test_config_roundtrip_and_validation() -> None:
    assert AutoencoderConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ModelLoadError, match="unknown autoencoder config keys"):
        AutoencoderConfig.from_dict({**CFG.to_dict(), "depth": 3})
    with pytest.raises(ModelLoadError, match="power of 2"):
        AutoencoderConfig.from_dict({"spatial_factor": 6})
    with pytest.raises(InputError, match="positive integer"):
        AutoencoderConfig(width=0)


def test_stream_encoder_matches_offline(ae: TinyAutoencoder) -> None:
    x = clip(t=12)
    with torch.no_grad():
        offline = ae.encode(x)
    stream = StreamEncoder(ae)
    outs = []
    start = 0
    for size in (1, 2, 3, 0, 5, 1):  # chunk sizes summing to 12
        out = stream.push(x[:, :, start : start + size])
        start += size
        if out is not None:
            outs.append(out)
    assert stream.flush() is None
    torch.testing.assert_close(torch.cat(outs, dim=2), offline, rtol=0, atol=1e-6)


def test_stream_encoder_push_returns_none_until_group_complete(ae: TinyAutoencoder) -> None:
    stream = StreamEncoder(ae)
    assert stream.push(clip(t=3)) is None
    out = stream.push(clip(t=1))
    assert out is not None and out.shape == (2, 4, 1, 4, 4)


def test_stream_encoder_flush_pads_with_last_frame(ae: TinyAutoencoder) -> None:
    x = clip(t=6)
    stream = StreamEncoder(ae)
    first = stream.push(x)
    tail = stream.flush()
    assert first is not None and tail is not None
    padded = torch.cat([x, x[:, :, -1:], x[:, :, -1:]], dim=2)
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([first, tail], dim=2), ae.encode(padded), rtol=0, atol=1e-6)
    assert stream.flush() is None


def test_stream_encoder_reset_and_mismatch(ae: TinyAutoencoder) -> None:
    stream = StreamEncoder(ae)
    stream.push(clip(t=2))
    with pytest.raises(InputError, match="do not match"):
        stream.push(clip(t=2, h=32))
    stream.reset()
    assert stream.flush() is None
    with pytest.raises(InputError, match="multiples of 4"):
        stream.push(clip(t=2, h=10))


def _context_ae() -> TinyAutoencoder:
    torch.manual_seed(0)
    return TinyAutoencoder(AutoencoderConfig(**{**CFG.to_dict(), "decoder_context": 1})).eval()


@pytest.mark.parametrize("context", [0, 1])
def test_stream_decoder_matches_offline(ae: TinyAutoencoder, context: int) -> None:
    model = _context_ae() if context else ae
    torch.manual_seed(2)
    z = torch.randn(2, 4, 5, 4, 4)
    with torch.no_grad():
        offline = model.decode(z)
    dec = StreamDecoder(model)
    parts = [dec.decode(z[:, :, i:j]) for i, j in ((0, 1), (1, 3), (3, 5))]
    assert dec.flush() is None
    torch.testing.assert_close(torch.cat(parts, dim=2), offline, rtol=0, atol=1e-6)
    dec.reset()  # a new stream: the first frame is its own past again
    torch.testing.assert_close(dec.decode(z[:, :, 3:5]), model.decode(z[:, :, 3:5]), rtol=0, atol=1e-6)


def test_decoder_context_uses_the_past_and_checks_it() -> None:
    model = _context_ae()
    torch.manual_seed(2)
    z = torch.randn(2, 4, 3, 4, 4)
    with torch.no_grad():
        alone, after = model.decode(z[:, :, 1:]), model.decode(z[:, :, 1:], z[:, :, 0])
        torch.testing.assert_close(after, model.decode(z)[:, :, 4:], rtol=0, atol=1e-6)
    assert (alone - after).abs().max() > 1e-3  # the past changes the picture
    with pytest.raises(InputError, match="past must be the latent frame before the chunk"):
        model.decode(z, z[:1, :, 0])
    with pytest.raises(InputError, match="decoder_context must be 0 or 1"):
        AutoencoderConfig(decoder_context=2)


def test_with_decoder_context_starts_as_the_original(ae: TinyAutoencoder, tmp_path: Path) -> None:
    torch.manual_seed(2)
    z = torch.randn(2, 4, 3, 4, 4)
    ae.set_latent_stats(torch.rand(4), torch.rand(4) + 0.5)
    wide = with_decoder_context(ae)
    assert wide.config.decoder_context == 1 and with_decoder_context(wide) is wide
    with torch.no_grad():
        torch.testing.assert_close(wide.decode(z, torch.randn(2, 4, 4, 4)), ae.decode(z), rtol=0, atol=1e-6)
    x = clip()
    torch.testing.assert_close(wide.encode(x), ae.encode(x))
    save_autoencoder(wide, tmp_path / "wide")
    assert load_autoencoder(tmp_path / "wide").config.decoder_context == 1


def test_save_load_roundtrip(ae: TinyAutoencoder, tmp_path: Path) -> None:
    folder = save_autoencoder(ae, tmp_path / "ae")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    loaded = load_autoencoder(folder)
    assert loaded.config == ae.config and not loaded.training
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), ae.decode(ae.encode(x)))


def test_load_missing_folder_and_files(ae: TinyAutoencoder, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="folder not found"):
        load_autoencoder(tmp_path / "nope")
    folder = save_autoencoder(ae, tmp_path / "ae")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="weights not found: .*model.safetensors"):
        load_autoencoder(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config not found: .*config.json"):
        load_autoencoder(folder)


def test_load_bad_config(ae: TinyAutoencoder, tmp_path: Path) -> None:
    folder = save_autoencoder(ae, tmp_path / "ae")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_autoencoder(folder)
    (folder / "config.json").write_text(json.dumps({"kind": "wan_vae"}))
    with pytest.raises(ModelLoadError, match="kind 'wan_vae'"):
        load_autoencoder(folder)


def test_load_truncated_weights(ae: TinyAutoencoder, tmp_path: Path) -> None:
    folder = save_autoencoder(ae, tmp_path / "ae")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="truncated or not safetensors"):
        load_autoencoder(folder)
    weights.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="truncated or not safetensors"):
        load_autoencoder(folder)


def test_load_shape_mismatch_names_tensor(ae: TinyAutoencoder, tmp_path: Path) -> None:
    folder = save_autoencoder(ae, tmp_path / "ae")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "width": 16}))
    with pytest.raises(ModelLoadError, match=r"encoder\.0\.weight has shape \(8, 12, 3, 3\)"):
        load_autoencoder(folder)


def test_load_missing_and_unexpected_keys(ae: TinyAutoencoder, tmp_path: Path) -> None:
    folder = save_autoencoder(ae, tmp_path / "ae")
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if k != "decoder.0.bias"}, str(weights))
    with pytest.raises(ModelLoadError, match=r"miss tensors \['decoder\.0\.bias'\]"):
        load_autoencoder(folder)
    save_file({**state, "extra.weight": torch.zeros(2)}, str(weights))
    with pytest.raises(ModelLoadError, match=r"tensors \['extra\.weight'\] that config.json does not describe"):
        load_autoencoder(folder)
