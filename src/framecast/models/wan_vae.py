"""The Wan2.1 VAE (diffusers' `AutoencoderKLWan`) as framecast's streaming autoencoder.

Pixel layout: frames (B, 3, T, H, W) in [-1, 1]; latent layout: (B, C, F, h, w), normalised with the VAE's
`latents_mean` / `latents_std` ((z - mean) / std, as WanPipeline and Self-Forcing feed the DiT), h = H / 8.

The Wan VAE is causal in time: a clip of T = 1 + 4k frames encodes to 1 + k latent frames (the first frame
alone, then groups of 4), and F latent frames decode to 1 + 4 (F - 1) frames. Every causal 3D conv reads the
last two frames of its input from the call before; diffusers keeps those in a list it clears at each call
(`_feat_map`). Here that list is a `ConvCache` owned by each stream and carried from chunk to chunk, so a
stream's chunks decode (and encode) to exactly what one offline call over the whole video gives:

    vae = WanVAE(diffusers_vae)
    state = vae.new_decoder_state()                          # one per stream
    frames = vae.decode_chunks([chunk], [state])[0]         # (3, T, H, W); the first chunk gives 4 F - 3 frames

Several streams decode in one call of the decoder per latent frame: their caches are stacked along the batch
(streams whose caches have the same shapes: `ConvCache.phase`) and split again after. Memory: a decoder cache
holds two frames of every causal conv's input: 3.5 GiB per stream at 480 x 832 in float32 (`nbytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from framecast.errors import InputError, ModelLoadError
from framecast.models.autoencoder import check_frames

Feature = Tensor | str | None  # a cache entry: None (no frame yet), "Rep" (diffusers' first-frame mark), frames
Run = Callable[[Tensor, list[Feature], bool], Tensor]  # (x, cache list mutated in place, first call) -> output


def diffusers_wan() -> Any:
    """diffusers' Wan VAE module, or a one-line error naming the extra to install."""
    try:
        from diffusers.models.autoencoders import autoencoder_kl_wan
    except ImportError as err:
        raise ModelLoadError("the Wan VAE needs diffusers; install it with: pip install 'framecast[wan]'") from err
    return autoencoder_kl_wan


@dataclass
class ConvCache:
    """One stream's causal-conv feature cache for one half of the VAE (encoder or decoder).

    feats: one entry per causal conv, in the order the network calls them: None before the conv saw a frame,
           "Rep" for a temporal upsampler that saw only the first latent frame, else the last (up to 2) frames
           of its input (1, C, t, h, w).
    calls: calls of the half so far (decoder: one latent frame each; encoder: the first frame, then 4 frames).
    """

    feats: list[Feature]
    calls: int = 0

    @property
    def phase(self) -> int:
        """0 before the first call, 1 after it, 2 after more: caches in one phase have the same shapes."""
        return min(self.calls, 2)

    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.feats if isinstance(f, Tensor))


def _stack(caches: Sequence[ConvCache]) -> list[Feature]:
    """The caches of streams in one phase as one batch: tensors concatenated along the batch, marks as they are."""
    out: list[Feature] = []
    for entries in zip(*(c.feats for c in caches), strict=True):
        first = entries[0]
        if isinstance(first, Tensor):
            out.append(torch.cat(entries))  # type: ignore[arg-type]
        else:
            assert all(e is first or e == first for e in entries), "caches of one phase differ"
            out.append(first)
    return out


def _split(feats: list[Feature], k: int) -> list[Feature]:
    """Row k of a batched cache (views)."""
    return [f[k : k + 1] if isinstance(f, Tensor) else f for f in feats]


def run_streams(run: Run, pieces: Sequence[Sequence[Tensor]], caches: Sequence[ConvCache]) -> list[list[Tensor]]:
    """Run every item's pieces (C, t, h, w) through `run` in order, carrying each item's own cache.

    At each step the items whose caches are in the same phase, with pieces of the same shape, go through one
    batched call. Items must be distinct streams (distinct caches). Returns each item's outputs (C', t', h', w').
    """
    assert len({id(c) for c in caches}) == len(caches), "one stream twice in one batch"
    outs: list[list[Tensor]] = [[] for _ in pieces]
    for step in range(max((len(p) for p in pieces), default=0)):
        groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for i, p in enumerate(pieces):
            if step < len(p):
                groups.setdefault((caches[i].phase, tuple(p[step].shape)), []).append(i)
        for (phase, _), rows in groups.items():
            x = torch.stack([pieces[i][step] for i in rows])  # (n, C, t, h, w)
            feats = caches[rows[0]].feats if len(rows) == 1 else _stack([caches[i] for i in rows])
            y = run(x, feats, phase == 0)  # `feats` now holds the cache after this call
            for k, i in enumerate(rows):
                outs[i].append(y[k])
                caches[i].feats = feats if len(rows) == 1 else _split(feats, k)
                caches[i].calls += 1
    return outs


def in_rounds(states: Sequence[object]) -> list[list[int]]:
    """Indices of a list in which an object may appear more than once, in rounds where each appears once, in order
    (a stream's second chunk in one call decodes after its first)."""
    rounds: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, s in enumerate(states):
        r = seen.get(id(s), -1) + 1
        seen[id(s)] = r
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    return rounds


class WanVAE(nn.Module):
    """diffusers' `AutoencoderKLWan` (Wan2.1: `is_residual` False, no patching) with streaming encode and decode.

    `encode`: frames (B, 3, 1 + 4k, H, W) in [-1, 1] -> latent (B, C, 1 + k, H / 8, W / 8), normalised (the mean
    of the posterior). `decode`: latent (B, C, F, h, w) -> frames (B, 3, 1 + 4 (F - 1), 8 h, 8 w) in [-1, 1].
    Both are the streaming calls with fresh caches; `decode_chunks` / `encode_chunks` carry caches per stream.
    """

    vae: Any  # diffusers' AutoencoderKLWan
    latent_mean: Tensor  # (C, 1, 1, 1)
    latent_std: Tensor

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        cfg: Any = vae.config
        if cfg.is_residual or cfg.patch_size is not None:
            raise ModelLoadError("this is a Wan2.2 VAE (is_residual or patch_size set); framecast runs Wan2.1's")
        self.vae = vae
        conv = diffusers_wan().WanCausalConv3d
        self._convs = {n: sum(isinstance(m, conv) for m in getattr(vae, n).modules()) for n in ("encoder", "decoder")}
        self._factors = (int(cfg.scale_factor_temporal), int(cfg.scale_factor_spatial), int(cfg.z_dim))
        z = self._factors[2]
        self.register_buffer("latent_mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(z, 1, 1, 1))
        self.register_buffer("latent_std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(z, 1, 1, 1))

    @property
    def temporal_factor(self) -> int:
        return self._factors[0]

    @property
    def spatial_factor(self) -> int:
        return self._factors[1]

    @property
    def latent_channels(self) -> int:
        return self._factors[2]

    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def new_decoder_state(self) -> ConvCache:
        """A stream's decoder state (`StreamState.decoder`): the decoder's causal-conv cache, empty."""
        return ConvCache([None] * self._convs["decoder"])

    def new_encoder_state(self) -> ConvCache:
        return ConvCache([None] * self._convs["encoder"])

    # -- decoding -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode_chunks(self, latents: Sequence[Tensor], states: Sequence[ConvCache]) -> list[Tensor]:
        """Latent chunks (C, F, h, w), each with its stream's state (a stream may appear more than once, in order)
        -> frames (3, T, H, W) in [-1, 1] float32 each: T = 4 F, or 4 F - 3 for a stream's first chunk."""
        out: list[Tensor] = [torch.empty(0)] * len(latents)
        for rnd in in_rounds(states):
            frames = self._decode([latents[i] for i in rnd], [states[i] for i in rnd])
            for i, f in zip(rnd, frames, strict=True):
                out[i] = f
        return out

    def _decode(self, latents: Sequence[Tensor], caches: Sequence[ConvCache]) -> list[Tensor]:
        z = torch.stack([self._check_latent(lat) for lat in latents])  # (N, C, F, h, w)
        x = self.vae.post_quant_conv(z * self.latent_std + self.latent_mean)
        pieces = [[x[i, :, j : j + 1] for j in range(x.shape[2])] for i in range(x.shape[0])]  # (C, 1, h, w) each

        def run(piece: Tensor, feats: list[Feature], first: bool) -> Tensor:
            return self.vae.decoder(piece, feat_cache=feats, feat_idx=[0], first_chunk=first)

        outs = run_streams(run, pieces, caches)
        return [torch.cat(o, dim=1).clamp(-1, 1).float() for o in outs]  # (3, T, H, W)

    def _check_latent(self, latent: Tensor) -> Tensor:
        if not isinstance(latent, Tensor) or latent.dim() != 4 or latent.shape[0] != self.latent_channels:
            got = tuple(latent.shape) if isinstance(latent, Tensor) else type(latent).__name__
            raise InputError(f"a latent chunk must be (C={self.latent_channels}, F, h, w), got {got}")
        return latent.to(self.latent_mean.device, self._dtype())

    @torch.no_grad()
    def decode(self, latent: Tensor, past: Tensor | None = None) -> Tensor:
        """Latent (B, C, F, h, w) -> frames (B, 3, 1 + 4 (F - 1), H, W): the whole clip from a stream's start."""
        if past is not None:
            raise InputError("the Wan VAE carries a feature cache, not a past latent frame: use decode_chunks")
        if not isinstance(latent, Tensor) or latent.dim() != 5:
            raise InputError("latent must be a 5-D tensor (B, C, F, h, w)")
        return torch.stack(self._decode(list(latent), [self.new_decoder_state() for _ in latent]))

    # -- encoding -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_chunks(self, frames: Sequence[Tensor], caches: Sequence[ConvCache]) -> list[Tensor]:
        """Frame chunks (3, T, H, W) in [-1, 1], each with its stream's encoder cache -> latents (C, F, h, w).

        A stream's first chunk holds 1 + 4 k frames (k + 1 latent frames), later chunks 4 k frames (k)."""
        tf = self.temporal_factor
        pieces = []
        for x, cache in zip(frames, caches, strict=True):
            t = x.shape[1] if isinstance(x, Tensor) and x.dim() == 4 else -1
            lead = 1 if cache.calls == 0 else 0
            check_frames(x[None] if t > 0 else x, self, whole_groups=False)
            if t < lead or (t - lead) % tf:
                where = "a stream's first chunk" if lead else "a chunk after the first"
                want = "1 + 4 k" if lead else "4 k"
                raise InputError(f"{where} must hold {want} frames for the Wan VAE, got {t}")
            x = x.to(self.latent_mean.device, self._dtype())
            pieces.append([x[:, :lead]] * lead + [x[:, s : s + tf] for s in range(lead, t, tf)])

        def run(piece: Tensor, feats: list[Feature], first: bool) -> Tensor:
            return self.vae.encoder(piece, feat_cache=feats, feat_idx=[0])

        outs = run_streams(run, pieces, caches)
        return [self._moments(torch.cat(o, dim=1)) for o in outs]

    def _moments(self, h: Tensor) -> Tensor:
        """Encoder output (2C, F, h, w) -> the posterior's mean, normalised (C, F, h, w) float32."""
        mu = self.vae.quant_conv(h[None])[0, : self.latent_channels]
        return ((mu - self.latent_mean) / self.latent_std).float()

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Frames (B, 3, 1 + 4 k, H, W) in [-1, 1] -> latent (B, C, 1 + k, h, w): a clip from a stream's start.

        A clip of 4 k frames (a video-to-video chunk, encoded on its own) gives k latent frames the same way: its
        first frame alone, then groups of four, its last three frames left out."""
        x = check_frames(frames, self, whole_groups=False)
        tf = self.temporal_factor
        if x.shape[2] % tf == 0:
            x = x[:, :, : x.shape[2] - tf + 1]
        return torch.stack(self.encode_chunks(list(x), [self.new_encoder_state() for _ in x]))
