"""Video autoencoders: the `Autoencoder` interface, a small built-in one, streaming wrappers and I/O.

Pixel layout: frames are float tensors (B, 3, T, H, W) in [-1, 1].
Latent layout: (B, C, F, h, w) with F = T / temporal_factor, h = H / spatial_factor, w = W / spatial_factor.

`TinyAutoencoder` folds each group of `temporal_factor` frames into channels and runs a plain 2D conv
encoder/decoder on it, so every latent frame depends on exactly one group of frames. With
`decoder_context` 1 the decoder also sees the latent frame before the one it decodes (its "past"): one
latent frame says where an object is during its group, two say how it moves within it. Streaming decode
carries that one latent frame from chunk to chunk (`past`), and gives the same result as the offline call
on the whole clip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from framecast.errors import InputError, ModelLoadError
from framecast.models.weights import WEIGHTS_FILE, load_into, read_config, read_weights, save_folder

TINY_KIND = "tiny_autoencoder"


@runtime_checkable
class Autoencoder(Protocol):
    """What the engine needs from a video autoencoder.

    `encode`: frames (B, 3, T, H, W) in [-1, 1] -> latent (B, C, T / tf, H / sf, W / sf).
    `decode`: latent (B, C, F, h, w) -> frames (B, 3, F * tf, h * sf, w * sf) in [-1, 1]; `past` (B, C, h, w)
    is the latent frame just before latent[:, :, 0] in the stream (None at a stream's start).
    """

    def encode(self, frames: Tensor) -> Tensor: ...

    def decode(self, latent: Tensor, past: Tensor | None = None) -> Tensor: ...

    @property
    def temporal_factor(self) -> int: ...

    @property
    def spatial_factor(self) -> int: ...

    @property
    def latent_channels(self) -> int: ...


@runtime_checkable
class DecoderState(Protocol):
    """What a stream's decoder carries from chunk to chunk (owned by the stream, opaque to the engine)."""

    def nbytes(self) -> int: ...


@runtime_checkable
class StreamingAutoencoder(Autoencoder, Protocol):
    """An autoencoder that decodes the chunks of many streams in one call, each with its stream's carried state.

    `new_decoder_state()`: a stream's decoder state before its first chunk (mutable, kept by the stream).
    `decode_chunks(latents, states)`: chunks (C, F, h, w), each with the state of its stream (a stream may appear
    more than once, in order) -> frames (3, T, H, W) in [-1, 1] each; the states move on past their chunks.
    """

    def new_decoder_state(self) -> DecoderState: ...

    def decode_chunks(self, latents: Sequence[Tensor], states: Sequence[Any]) -> list[Tensor]: ...

    def to(self, device: torch.device) -> Any: ...

    def eval(self) -> Any: ...


@dataclass
class PastFrame:
    """`TinyAutoencoder`'s decoder state: the last latent frame decoded (C, h, w), None at a stream's start."""

    latent: Tensor | None = None

    def nbytes(self) -> int:
        return 0 if self.latent is None else self.latent.numel() * self.latent.element_size()


@dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters of `TinyAutoencoder`.

    `spatial_factor` must be a power of 2 (one stride-2 stage per factor of 2). Conv channels are `width`
    at full resolution and double at every stage up to `max_width`; `res_blocks` residual blocks run at
    the latent resolution, where they are cheap. `unshuffle` > 1 folds unshuffle x unshuffle pixel blocks
    into channels before the first conv (and unfolds them after the last), so no conv runs at full
    resolution: much cheaper, and edges stay sharp because every output pixel has its own channel.
    `decoder_context` 1: the decoder also takes the previous latent frame (0: each frame alone).
    """

    in_channels: int = 3
    latent_channels: int = 8
    spatial_factor: int = 8
    temporal_factor: int = 4
    width: int = 32
    max_width: int = 128
    res_blocks: int = 1
    unshuffle: int = 1
    decoder_context: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name in ("res_blocks", "decoder_context") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(f"AutoencoderConfig.{f.name} must be a positive integer, got {value!r}")
        for name in ("spatial_factor", "unshuffle"):
            value = getattr(self, name)
            if value & (value - 1):
                raise InputError(f"{name} must be a power of 2, got {value}")
        if self.decoder_context > 1:
            raise InputError(f"decoder_context must be 0 or 1, got {self.decoder_context}")
        if self.unshuffle > self.spatial_factor:
            raise InputError(f"unshuffle ({self.unshuffle}) must not exceed spatial_factor ({self.spatial_factor})")

    def to_dict(self) -> dict[str, int]:
        """Plain JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        """Build a config from `to_dict()` output; unknown keys or bad values raise `ModelLoadError`."""
        if not isinstance(data, dict):
            raise ModelLoadError(f"autoencoder config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(f"unknown autoencoder config keys {unknown}; expected only {sorted(known)}")
        try:
            return cls(**data)
        except InputError as err:
            raise ModelLoadError(str(err)) from err


def _stages(config: AutoencoderConfig) -> int:
    """Number of stride-2 conv stages: log2(spatial_factor / unshuffle)."""
    return int(math.log2(config.spatial_factor // config.unshuffle))


def _widths(config: AutoencoderConfig) -> list[int]:
    """Conv channels at each conv resolution, the finest first: (stages + 1,) entries."""
    return [min(config.width * 2**s, config.max_width) for s in range(_stages(config) + 1)]


class ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), same channels and size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        conv = lambda: nn.Conv2d(channels, channels, 3, padding=1)  # noqa: E731
        self.body = nn.Sequential(nn.SiLU(), conv(), nn.SiLU(), conv())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _build_encoder(config: AutoencoderConfig) -> nn.Sequential:
    """(N, in_channels * tf, H, W) -> (N, latent_channels, H / sf, W / sf)."""
    w, u = _widths(config), config.unshuffle
    layers: list[nn.Module] = [nn.PixelUnshuffle(u)] if u > 1 else []
    layers += [nn.Conv2d(config.in_channels * config.temporal_factor * u * u, w[0], 3, padding=1)]
    for s in range(_stages(config)):
        layers += [nn.SiLU(), nn.Conv2d(w[s], w[s + 1], 3, stride=2, padding=1)]
    layers += [ResBlock(w[-1]) for _ in range(config.res_blocks)]
    layers += [nn.SiLU(), nn.Conv2d(w[-1], config.latent_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def _build_decoder(config: AutoencoderConfig) -> nn.Sequential:
    """(N, latent_channels * (1 + context), h, w) -> (N, in_channels * tf, h * sf, w * sf), tanh output in [-1, 1].

    With context the input is the latent frame, then its past, along channels."""
    w = _widths(config)[::-1]  # latent resolution first
    c_in = config.latent_channels * (1 + config.decoder_context)
    layers: list[nn.Module] = [nn.Conv2d(c_in, w[0], 3, padding=1)]
    layers += [ResBlock(w[0]) for _ in range(config.res_blocks)]
    for s in range(_stages(config)):
        layers += [nn.SiLU(), nn.Upsample(scale_factor=2.0), nn.Conv2d(w[s], w[s + 1], 3, padding=1)]
    u = config.unshuffle
    out_channels = config.in_channels * config.temporal_factor * u * u
    layers += [nn.SiLU(), nn.Conv2d(w[-1], out_channels, 3, padding=1)]
    layers += [nn.PixelShuffle(u), nn.Tanh()] if u > 1 else [nn.Tanh()]
    return nn.Sequential(*layers)


def _check_rank(x: object, name: str, layout: str) -> Tensor:
    """Raise `InputError` unless `x` is a 5-D floating tensor."""
    if not isinstance(x, Tensor) or x.dim() != 5:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise InputError(f"{name} must be a 5-D tensor {layout}, got {got}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor {layout}, got dtype {x.dtype}")
    return x


def check_frames(frames: object, ae: Autoencoder, channels: int = 3, whole_groups: bool = True) -> Tensor:
    """Validate pixel frames (B, channels, T, H, W) for `ae`; raise `InputError` naming the problem."""
    x = _check_rank(frames, "frames", "(B, 3, T, H, W)")
    _, c, t, h, w = x.shape
    sf, tf = ae.spatial_factor, ae.temporal_factor
    if c != channels:
        raise InputError(f"frames must have {channels} channels in dim 1 (B, 3, T, H, W), got {c}")
    if h % sf or w % sf or h == 0 or w == 0:
        raise InputError(f"frame height and width must be positive multiples of {sf}, got {h}x{w}")
    if whole_groups and (t == 0 or t % tf):
        raise InputError(f"frame count T must be a positive multiple of temporal_factor={tf}, got {t}")
    return x


class TinyAutoencoder(nn.Module):
    """Small conv autoencoder: each group of `temporal_factor` frames maps to one latent frame.

    Frames (B, 3, T, H, W) in [-1, 1] <-> latent (B, latent_channels, T / tf, H / sf, W / sf).
    """

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else AutoencoderConfig()
        self.encoder = _build_encoder(self.config)
        self.decoder = _build_decoder(self.config)
        # Per-channel latent statistics, so that the diffusion model sees roughly unit-variance latents.
        self.register_buffer("latent_mean", torch.zeros(self.config.latent_channels))
        self.register_buffer("latent_std", torch.ones(self.config.latent_channels))

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Normalise latents by per-channel `mean`, `std` (C,) measured on raw encoder outputs."""
        with torch.no_grad():
            self._stat("latent_mean").view(-1).copy_(mean)
            self._stat("latent_std").view(-1).copy_(std.clamp_min(1e-6))

    def _stat(self, name: str) -> Tensor:
        return getattr(self, name)[:, None, None]  # (C, 1, 1)

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def _param(self) -> Tensor:
        return next(self.parameters())

    def encode(self, frames: Tensor) -> Tensor:
        """Frames (B, 3, T, H, W) in [-1, 1] -> latent (B, C, T / tf, H / sf, W / sf)."""
        x = check_frames(frames, self, self.config.in_channels).to(self._param())
        b, c, t, h, w = x.shape
        tf = self.temporal_factor
        x = x.reshape(b, c, t // tf, tf, h, w).permute(0, 2, 1, 3, 4, 5)  # (B, F, C, tf, H, W)
        z: Tensor = self.encoder(x.reshape(b * (t // tf), c * tf, h, w))  # (B*F, C_lat, h, w)
        z = (z - self._stat("latent_mean")) / self._stat("latent_std")
        return z.reshape(b, t // tf, *z.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C_lat, F, h, w)

    def decode(self, latent: Tensor, past: Tensor | None = None) -> Tensor:
        """Latent (B, C, F, h, w) -> frames (B, 3, F * tf, h * sf, w * sf) in [-1, 1].

        `past` (B, C, h, w): the latent frame before latent[:, :, 0] (used with `decoder_context`); None at
        the start of a stream, where the first frame stands in for its own past (an object at rest).
        """
        z = _check_rank(latent, "latent", "(B, C, F, h, w)").to(self._param())
        b, c, f, h, w = z.shape
        if c != self.latent_channels:
            raise InputError(f"latent must have {self.latent_channels} channels in dim 1, got {c}")
        frames = [z] + ([self._pasts(z, past)] if self.config.decoder_context else [])  # each (B, C, F, h, w)
        flat = [y.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) for y in frames]  # each (B*F, C, h, w)
        z = torch.cat([y * self._stat("latent_std") + self._stat("latent_mean") for y in flat], dim=1)
        x: Tensor = self.decoder(z)  # (B*F, 3*tf, H, W)
        tf, out_c = self.temporal_factor, self.config.in_channels
        x = x.reshape(b, f, out_c, tf, *x.shape[2:]).permute(0, 2, 1, 3, 4, 5)  # (B, 3, F, tf, H, W)
        return x.reshape(b, out_c, f * tf, *x.shape[4:])  # (B, 3, T, H, W)

    def new_decoder_state(self) -> PastFrame:
        return PastFrame()

    def decode_chunks(self, latents: Sequence[Tensor], states: Sequence[PastFrame]) -> list[Tensor]:
        """Chunks (C, F, h, w) -> frames (3, F * tf, H, W) each, in one call; each chunk's past is the latent frame
        its stream decoded last (its own first frame at the start of a stream)."""
        pasts = []
        for st, lat in zip(states, latents, strict=True):  # in order: a stream's second chunk follows its first
            pasts.append(lat[:, 0] if st.latent is None else st.latent)
            st.latent = lat[:, -1]
        z, past = torch.stack(list(latents)).float(), torch.stack(pasts).float()  # (N, C, F, h, w), (N, C, h, w)
        return list(self.decode(z, past))  # (3, T, H, W) each

    def _pasts(self, z: Tensor, past: Tensor | None) -> Tensor:
        """Latent (B, C, F, h, w) -> the latent frame before each frame (B, C, F, h, w)."""
        first = z[:, :, :1] if past is None else _check_past(past, z)[:, :, None]
        return torch.cat([first, z[:, :, :-1]], dim=2)


def _check_past(past: object, z: Tensor) -> Tensor:
    """`past` must be (B, C, h, w) matching latent z (B, C, F, h, w)."""
    want = (z.shape[0], z.shape[1], z.shape[3], z.shape[4])
    if not isinstance(past, Tensor) or tuple(past.shape) != want:
        got = tuple(past.shape) if isinstance(past, Tensor) else type(past).__name__
        raise InputError(f"past must be the latent frame before the chunk, shape {want}, got {got}")
    return past.to(z)


def with_decoder_context(ae: TinyAutoencoder) -> TinyAutoencoder:
    """A copy of `ae` whose decoder also takes the previous latent frame, decoding exactly as `ae` does
    until trained (the new input channels start at zero). Encoder and latent statistics are shared values."""
    if ae.config.decoder_context:
        return ae
    new = TinyAutoencoder(replace(ae.config, decoder_context=1))
    state = ae.state_dict()
    first = state["decoder.0.weight"]  # (w0, C, 3, 3)
    state["decoder.0.weight"] = torch.cat([first, torch.zeros_like(first)], dim=1)  # (w0, 2C, 3, 3)
    new.load_state_dict(state)
    return new.to(ae._param().device).train(ae.training)


class StreamEncoder:
    """Encode frames as they arrive: buffers a partial group of frames between calls.

    `push` takes frames (B, 3, T, H, W) in [-1, 1] with any T and returns the latent (B, C, F, h, w) of
    every group of `temporal_factor` frames completed so far, or None. Results equal `ae.encode` on the
    whole clip. Runs without autograd.
    """

    def __init__(self, ae: Autoencoder) -> None:
        self.ae = ae
        self._pending: Tensor | None = None  # (B, 3, T_pending, H, W), T_pending < tf

    def reset(self) -> None:
        """Drop any buffered frames."""
        self._pending = None

    def _append(self, frames: Tensor) -> Tensor:
        """Concatenate `frames` after the buffered ones along T; shapes other than T must match."""
        if self._pending is None:
            return frames
        if self._pending.shape[:2] != frames.shape[:2] or self._pending.shape[3:] != frames.shape[3:]:
            want = tuple(self._pending.shape[:2]) + ("T",) + tuple(self._pending.shape[3:])
            raise InputError(f"pushed frames {tuple(frames.shape)} do not match earlier frames {want}")
        return torch.cat([self._pending, frames.to(self._pending)], dim=2)

    def push(self, frames: Tensor) -> Tensor | None:
        """Add frames (B, 3, T, H, W); return latents (B, C, F, h, w) for completed groups or None."""
        x = self._append(check_frames(frames, self.ae, whole_groups=False))
        tf = self.ae.temporal_factor
        full = (x.shape[2] // tf) * tf
        self._pending = x[:, :, full:] if full < x.shape[2] else None
        if full == 0:
            return None
        with torch.no_grad():
            latent: Tensor = self.ae.encode(x[:, :, :full])
        return latent

    def flush(self) -> Tensor | None:
        """Encode a buffered partial group padded by repeating its last frame; None if nothing is buffered."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        missing = self.ae.temporal_factor - pending.shape[2]
        pad = pending[:, :, -1:].expand(-1, -1, missing, -1, -1)  # (B, 3, missing, H, W)
        with torch.no_grad():
            latent: Tensor = self.ae.encode(torch.cat([pending, pad], dim=2))
        return latent


class StreamDecoder:
    """Decode latent chunks (B, C, F, h, w) as they arrive into frames (B, 3, F * tf, H, W) in [-1, 1].

    Carries the last latent frame of each chunk to the next as its `past`, so the result equals `ae.decode`
    on the whole clip; `flush` returns None (nothing is held back). Runs without autograd.
    """

    def __init__(self, ae: Autoencoder) -> None:
        self.ae = ae
        self.past: Tensor | None = None  # (B, C, h, w): the last latent frame decoded

    def reset(self) -> None:
        """Forget the past: the next chunk starts a new stream."""
        self.past = None

    def decode(self, latent_chunk: Tensor) -> Tensor:
        """Latent (B, C, F, h, w) -> frames (B, 3, F * tf, h * sf, w * sf) in [-1, 1]."""
        with torch.no_grad():
            frames = self.ae.decode(latent_chunk, self.past)
        self.past = latent_chunk[:, :, -1]
        return frames

    def flush(self) -> Tensor | None:
        """Frames still held back at the end of the stream; always None here."""
        return None


def save_autoencoder(ae: TinyAutoencoder, folder: str | Path) -> Path:
    """Write `folder/config.json` and `folder/model.safetensors`; returns the folder."""
    return save_folder(ae, {"kind": TINY_KIND, **ae.config.to_dict()}, folder)


def load_autoencoder(folder: str | Path) -> TinyAutoencoder:
    """Load a `TinyAutoencoder` written by `save_autoencoder`, in eval mode on CPU."""
    data = read_config(folder, "autoencoder")
    kind = data.pop("kind", TINY_KIND)
    if kind != TINY_KIND:
        raise ModelLoadError(f"autoencoder config in {folder} has kind {kind!r}; expected {TINY_KIND!r}")
    model = TinyAutoencoder(AutoencoderConfig.from_dict(data))
    load_into(model, read_weights(folder, "autoencoder"), Path(folder) / WEIGHTS_FILE, "autoencoder")
    return model.eval()
