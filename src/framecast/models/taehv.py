"""TAEHV's tiny decoder for Wan2.1 latents (madebyollin/taehv, the `taew2_1.pth` file) as a streaming decoder.

Much cheaper than the Wan VAE's decoder (three stages of 3x3 2D convs, no 3D convs), at some cost in quality;
several causal Wan2.1 models ship it for live preview. TAEHV decodes exactly the latents the DiT uses (no
latent mean or std) and gives frames in [0, 1]; here frames are [-1, 1] as everywhere in framecast.

The network, with the published file's indices (`decoder.N`), widths w = (256, 128, 64, 64) in `taew2_1.pth`:

    0 Clamp (3 tanh(x / 3)), 1 conv3x3(16 -> w0), 2 ReLU,
    3-5 MemBlock(w0), 6 Upsample x2, 7 TGrow(w0, 1), 8 conv3x3(w0 -> w1, no bias),
    9-11 MemBlock(w1), 12 Upsample x2, 13 TGrow(w1, 2), 14 conv3x3(w1 -> w2, no bias),
    15-17 MemBlock(w2), 18 Upsample x2, 19 TGrow(w2, 2), 20 conv3x3(w2 -> w3, no bias),
    21 ReLU, 22 conv3x3(w3 -> 3)

A MemBlock maps a frame x and the frame before it at that block (its "past", zeros at a stream's start) to
relu(conv(cat(x, past)) + skip(x)), conv = conv3x3(2c -> c), ReLU, conv3x3, ReLU, conv3x3; a TGrow(c, s) turns
each frame into s frames with a 1x1 conv to s c channels. One latent frame gives 4 frames; a stream's first 3
are dropped, so chunks come out as the Wan VAE's do (4 F - 3 frames first, then 4 F). A stream carries the last
input frame of each MemBlock (`TaehvState`): a few MB at 480 x 832.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framecast.errors import InputError, ModelLoadError
from framecast.models.autoencoder import Autoencoder
from framecast.models.wan_vae import in_rounds
from framecast.models.wan_weights import read_tensor_file

TIME_UP = (False, True, True)  # Wan2.1: 4x in time from the last two stages


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))

    def forward(self, x: Tensor, past: Tensor) -> Tensor:
        """x, past: (N, c, h, w) -> (N, c, h, w)."""
        return F.relu(self.conv(torch.cat([x, past], 1)) + x)


class TGrow(nn.Module):
    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c, c * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(N, T, c, h, w) -> (N, T * stride, c, h, w): each frame's channel blocks become frames, in order."""
        n, t, c, h, w = x.shape
        return self.conv(x.flatten(0, 1)).reshape(n, t * self.stride, c, h, w)


def build_decoder(widths: tuple[int, int, int, int], latent_channels: int = 16) -> nn.Sequential:
    w = widths
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, w[0]), nn.ReLU()]
    for s in range(3):
        layers += [MemBlock(w[s]), MemBlock(w[s]), MemBlock(w[s]), nn.Upsample(scale_factor=2)]
        layers += [TGrow(w[s], 2 if TIME_UP[s] else 1), _conv(w[s], w[s + 1], bias=False)]
    return nn.Sequential(*layers, nn.ReLU(), _conv(w[3], 3))


@dataclass
class TaehvState:
    """A stream's tiny-decoder state: the last input frame of each MemBlock (1, c, h, w), by layer index."""

    memory: dict[int, Tensor] = field(default_factory=dict)
    started: bool = False

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.memory.values())


class TinyWanDecoder(nn.Module):
    """TAEHV's decoder for Wan2.1 latents, streaming; `encode` goes to the full Wan VAE when one is given."""

    def __init__(self, widths: tuple[int, int, int, int] = (256, 128, 64, 64), encoder: Autoencoder | None = None):
        super().__init__()
        self.decoder = build_decoder(widths)
        self.encoder = encoder  # the full VAE (an nn.Module: it moves with this one), for video to video

    temporal_factor = 4
    spatial_factor = 8
    latent_channels = 16

    def new_decoder_state(self) -> TaehvState:
        return TaehvState()

    @torch.no_grad()
    def decode_chunks(self, latents: Sequence[Tensor], states: Sequence[TaehvState]) -> list[Tensor]:
        """Chunks (16, F, h, w), each with its stream's state (a stream may appear more than once, in order) ->
        frames (3, T, 8 h, 8 w) in [-1, 1]: T = 4 F, or 4 F - 3 for a stream's first chunk."""
        out: list[Tensor] = [torch.empty(0)] * len(latents)
        for rnd in in_rounds(states):
            frames = self._decode(torch.stack([latents[i] for i in rnd]), [states[i] for i in rnd])
            for k, i in enumerate(rnd):
                trim = 0 if states[i].started else self.temporal_factor - 1
                out[i] = frames[k, trim:].permute(1, 0, 2, 3) * 2 - 1  # (3, T, H, W)
                states[i].started = True
        return out

    def _decode(self, z: Tensor, states: Sequence[TaehvState]) -> Tensor:
        """Latents (N, C, F, h, w) -> frames (N, 4 F, 3, H, W) in [0, 1], every stream's memory moved on."""
        p = next(self.decoder.parameters())
        x = z.to(p).transpose(1, 2)  # (N, F, C, h, w)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                mem = torch.stack([s.memory[i][0] if i in s.memory else torch.zeros_like(x[0, 0]) for s in states])
                past = torch.cat([mem[:, None], x[:, :-1]], 1)  # (N, T, c, h, w): each frame's previous one
                for k, s in enumerate(states):
                    s.memory[i] = x[k, -1:].clone()
                x = layer(x.flatten(0, 1), past.flatten(0, 1)).unflatten(0, x.shape[:2])
            elif isinstance(layer, TGrow):
                x = layer(x)
            else:
                x = layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return x.clamp(0, 1).float()

    @torch.no_grad()
    def decode(self, latent: Tensor, past: Tensor | None = None) -> Tensor:
        """Latent (B, 16, F, h, w) -> frames (B, 3, 4 F - 3, H, W): the whole clip from a stream's start."""
        if past is not None:
            raise InputError("the tiny decoder carries its own state, not a past latent frame: use decode_chunks")
        return torch.stack(self.decode_chunks(list(latent), [TaehvState() for _ in latent]))

    def encode(self, frames: Tensor) -> Tensor:
        if self.encoder is None:
            raise InputError("the tiny decoder does not encode; load it beside the Wan VAE for video to video")
        return self.encoder.encode(frames)


def load_tiny_decoder(path: str | Path, encoder: Autoencoder | None = None) -> TinyWanDecoder:
    """TAEHV's decoder from a `taew2_1.pth` file (or its `.safetensors`); the encoder's tensors are not read."""
    p = Path(path)
    obj: Any = read_tensor_file(p, "tiny decoder weights")
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(f"tiny decoder weights {p} hold a {type(obj).__name__}, not a dict of tensors")
    state = {k.removeprefix("decoder."): v for k, v in obj.items() if k.startswith("decoder.")}
    try:
        widths = tuple(int(state[f"{i}.weight"].shape[0]) for i in (1, 8, 14, 20))
    except KeyError as err:
        raise ModelLoadError(f"{p} is no TAEHV file: it lacks decoder.{err.args[0]}") from None
    if state["1.weight"].shape[1] != 16 or state.get("22.weight", torch.empty(0)).shape[:1] != (3,):
        raise ModelLoadError(f"{p} is not TAEHV for Wan2.1 (16 latent channels in, 3 colour channels out)")
    model = TinyWanDecoder(widths, encoder)  # type: ignore[arg-type]
    expected = model.decoder.state_dict()
    for i, layer in enumerate(model.decoder):  # a TGrow trained at stride 2 and run at stride 1: its last frame
        key = f"{i}.conv.weight"
        if isinstance(layer, TGrow) and key in state and state[key].shape[0] > expected[key].shape[0]:
            state[key] = state[key][-expected[key].shape[0] :]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(f"tiny decoder weights {p}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, t in expected.items():
        if state[k].shape != t.shape:
            raise ModelLoadError(f"tiny decoder weights {p}: decoder.{k} has shape {tuple(state[k].shape)}, "
                                 f"expected {tuple(t.shape)}")  # fmt: skip
    model.decoder.load_state_dict(state)
    return model.eval()
