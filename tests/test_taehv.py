"""TAEHV's tiny decoder for Wan2.1 (models/taehv.py) from a `taew2_1.pth`-style file: chunk by chunk it decodes
what a frame-by-frame walk of the network (TAEHV's own sequential order) gives, streams batch as each alone, and
a Wan folder decodes with it through the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from framecast.errors import ModelLoadError
from framecast.family.wan import WanOptions
from framecast.models.taehv import MemBlock, TGrow, TinyWanDecoder, build_decoder, load_tiny_decoder
from framecast.pipeline import Pipeline
from tests.wan_parts import DIT, HEIGHT, WIDTH

WIDTHS = (16, 8, 8, 4)


def taew_file(path: Path, seed: int = 0) -> Path:
    """A TAEHV file as published: encoder tensors too, and the first TGrow trained at stride 2 (2 c outputs)."""
    torch.manual_seed(seed)
    dec = build_decoder(WIDTHS)  # PyTorch's default init, the last conv made to spread the output over [0, 1]
    with torch.no_grad():
        dec[-1].weight.mul_(20)
        dec[-1].bias.fill_(0.5)
    state = {f"decoder.{k}": v for k, v in dec.state_dict().items()}
    w0 = WIDTHS[0]
    state["decoder.7.conv.weight"] = torch.cat([torch.randn(w0, w0, 1, 1), state["decoder.7.conv.weight"]])
    state["encoder.0.weight"] = torch.randn(64, 3, 3, 3)
    torch.save(state, path)
    return path


def frame_by_frame(dec: torch.nn.Sequential, z: Tensor) -> Tensor:
    """Latent (C, F, h, w) -> frames (4 F - 3, 3, H, W) in [0, 1], one frame at a time, depth first: each MemBlock
    sees the frame before at its own rate (zeros first), a TGrow's frames go on in order."""
    memory: dict[int, Tensor] = {}

    def run(x: Tensor, i: int) -> list[Tensor]:
        if i == len(dec):
            return [x]
        layer = dec[i]
        if isinstance(layer, MemBlock):
            past = memory.get(i, torch.zeros_like(x))
            memory[i] = x
            return run(layer(x, past), i + 1)
        if isinstance(layer, TGrow):
            return [f for part in layer.conv(x).chunk(layer.stride, 1) for f in run(part, i + 1)]
        return run(layer(x), i + 1)

    with torch.no_grad():
        frames = [f for t in range(z.shape[1]) for f in run(z[None, :, t], 0)]
    return torch.cat(frames)[3:].clamp(0, 1)


def test_chunks_equal_a_frame_by_frame_walk(tmp_path: Path) -> None:
    model = load_tiny_decoder(taew_file(tmp_path / "taew2_1.pth"))
    assert isinstance(model, TinyWanDecoder)
    z = torch.randn(2, 16, 7, 3, 4, generator=torch.Generator().manual_seed(1))
    states = [model.new_decoder_state(), model.new_decoder_state()]
    chunks = [model.decode_chunks([z[0, :, a:b], z[1, :, a:b]], states) for a, b in ((0, 3), (3, 4), (4, 7))]
    assert [c[0].shape[1] for c in chunks] == [9, 4, 12]
    for row in range(2):
        walk = frame_by_frame(model.decoder, z[row]) * 2 - 1  # (25, 3, 24, 32)
        streamed = torch.cat([c[row] for c in chunks], 1).permute(1, 0, 2, 3)
        assert streamed.shape == walk.shape == (25, 3, 24, 32)
        assert (streamed - walk).abs().max().item() < 1e-5
    alone = model.new_decoder_state()
    first = torch.cat([model.decode_chunks([z[1, :, a:b]], [alone])[0] for a, b in ((0, 3), (3, 4), (4, 7))], 1)
    assert (first - torch.cat([c[1] for c in chunks], 1)).abs().max().item() < 1e-5  # batched streams: as alone
    assert states[0].nbytes() > 0


def test_bad_tiny_decoder_files(tmp_path: Path) -> None:
    torch.save({"encoder.0.weight": torch.zeros(1)}, tmp_path / "enc.pth")
    with pytest.raises(ModelLoadError, match="is no TAEHV file: it lacks decoder.1.weight"):
        load_tiny_decoder(tmp_path / "enc.pth")
    with pytest.raises(ModelLoadError, match="tiny decoder weights not found"):
        load_tiny_decoder(tmp_path / "none.pth")


def test_a_wan_folder_decodes_with_it(tmp_path: Path) -> None:
    from tests.wan_parts import parts, save_diffusers

    folder = save_diffusers(parts(), tmp_path / "wan")
    opts = WanOptions(
        height=HEIGHT, width=WIDTH, chunk_frames=DIT.chunk_frames, tiny_decoder=taew_file(tmp_path / "t.pth")
    )
    pipe = Pipeline.load(str(folder), wan=opts)
    assert isinstance(pipe.autoencoder, TinyWanDecoder)
    frames = pipe.generate("a red fox", 21, seed=0, steps=1)
    assert frames.shape == (21, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8
    assert pipe.family.encode(np.zeros((12, HEIGHT, WIDTH, 3), np.uint8)).shape[2] == DIT.chunk_frames
