"""The causal DiT family: a block-causal video DiT (the built-in model, Wan2.1-architecture checkpoints), a
video autoencoder and a text encoder, streamed chunk by chunk with a KV cache per stream.

Per-stream state is a `StreamState` (stream/state.py): KV rings, noise, the chunks in flight and the decoder's
carried latent frame. A pass of many streams is one forward of the DiT (`Denoiser`, `causal_batch`); decoding
is one autoencoder call over the chunks every stream finished, each with the latent frame decoded before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from framecast.errors import ModelLoadError
from framecast.family.contract import Schedule
from framecast.family.denoiser import Denoiser
from framecast.io.frames import frames_to_uint8, uint8_to_frames
from framecast.models.autoencoder import StreamingAutoencoder
from framecast.models.dit import CausalWanDiT
from framecast.models.text import TextEncoder
from framecast.stream import scheduler
from framecast.stream.config import StreamConfig
from framecast.stream.prompt import Conditioner, check_prompt
from framecast.stream.state import ChunkInput, Condition, StreamState


class CausalFamily:
    """One causal DiT, its autoencoder and text encoder, serving any number of streams (`ModelFamily`)."""

    def __init__(
        self,
        dit: CausalWanDiT,
        autoencoder: StreamingAutoencoder,
        text_encoder: TextEncoder,
        device: torch.device,
        dtype: torch.dtype | None = None,
    ) -> None:
        """`dtype`: the DiT's and the KV caches' (its norms, modulation and head stay float32); default bfloat16
        on CUDA, float32 elsewhere."""
        self.device = device
        self.dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        self.dit = dit.to(device, self.dtype).eval()
        autoencoder.to(device).eval()  # nn.Module: in place
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        self.denoiser = Denoiser(self.dit)
        self.network: nn.Module = self.dit
        self.conditioner: Conditioner[Any] = Conditioner(self._embed, self._cross)
        self._null: Condition | None = None
        _check_compatible(self.dit, self.autoencoder, self.text_encoder)

    # -- what a chunk is ------------------------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int]:
        c, sf = self.dit.config, self.autoencoder.spatial_factor
        return c.latent_height * sf, c.latent_width * sf

    @property
    def frames_per_chunk(self) -> int:
        return self.dit.config.chunk_frames * self.autoencoder.temporal_factor

    # -- per-stream state -----------------------------------------------------------------------------
    def schedule(self, cfg: StreamConfig) -> Schedule:
        """The causal schedule: a clean pass per chunk when `cfg.clean_pass`, a row of chunks in flight in the
        stream batch (`StreamConfig`'s schedule properties)."""
        return Schedule(cfg.passes_per_chunk, cfg.chunk_units, cfg.emit_delay, cfg.warm_chunks * cfg.passes_per_chunk)

    def new_state(self, cfg: StreamConfig, seed: int) -> StreamState:
        null = self.null_condition() if cfg.guided else None
        return StreamState.create(self.dit.config, cfg, seed, self.dtype, self.device, null)

    def memory_bytes(self, state: StreamState) -> int:
        """KV cache bytes, and what the stream's decoder carries (the Wan VAE's cache is large)."""
        return state.memory_bytes() + (0 if state.decoder is None else state.decoder.nbytes())

    def pass_units(self, state: StreamState) -> int:
        """Chunks in the stream's next pass (those in flight, and a new one where due), times its rows."""
        return (len(state.inflight) + scheduler.needs_chunk(state)) * state.cfg.rows

    def needs_chunk(self, state: StreamState) -> bool:
        return scheduler.needs_chunk(state)

    def admit(self, state: StreamState, cond: Condition, inp: ChunkInput | None = None) -> None:
        if inp is not None:
            scheduler.queue_input(state, inp)
        with torch._C._InferenceMode(True):  # the guard torch.inference_mode() enters
            scheduler.admit(state, cond)

    def recondition(self, state: StreamState, cond: Condition) -> None:
        scheduler.recondition(state, cond)

    # -- passes -----------------------------------------------------------------------------------------
    def denoise(self, states: Sequence[StreamState]) -> list[list[Tensor]]:
        return self.denoiser.run(states)

    @torch.inference_mode()
    def decode(self, states: Sequence[StreamState], latents: Sequence[Tensor]) -> list[np.ndarray]:
        """Chunks (C, cf, h, w) -> uint8 (T, H, W, 3) each, in one autoencoder call; each chunk decodes with the
        state its stream's decoder carries (the tiny autoencoder: the last latent frame; the Wan VAE: its
        causal-conv cache)."""
        if not latents:
            return []
        for st in states:
            if st.decoder is None:
                st.decoder = self.autoencoder.new_decoder_state()
        clips = self.autoencoder.decode_chunks(latents, [st.decoder for st in states])  # (3, T, H, W) in [-1, 1]
        return [frames_to_uint8(clip) for clip in clips]

    @torch.inference_mode()
    def encode(self, frames: np.ndarray) -> Tensor:
        """Input frames uint8 (T, H, W, 3) at the model's size -> latent (1, C, T / tf, h, w) on the device."""
        return self.autoencoder.encode(uint8_to_frames(frames, self.device))

    # -- conditioning -----------------------------------------------------------------------------------
    def null_condition(self) -> Condition:
        """The empty prompt's condition (the unconditional side of guidance), computed once."""
        if self._null is None:
            self._null = self._cross(self.text_encoder.encode([""])[0].to(self.device))
        return self._null

    def _embed(self, text: str) -> Tensor:
        return self.text_encoder.encode([check_prompt(text)])[0].to(self.device)  # (T, D)

    @torch.inference_mode()
    def _cross(self, embedding: Tensor) -> Condition:
        return Condition.from_cross(self.dit.cross_kv(embedding[None]))  # from (L, 1, T, h, hd)


def _check_compatible(dit: CausalWanDiT, ae: StreamingAutoencoder, enc: TextEncoder) -> None:
    c = dit.config
    if ae.latent_channels != c.in_channels:
        raise ModelLoadError(f"autoencoder gives {ae.latent_channels} latent channels, DiT expects {c.in_channels}")
    if enc.dim != c.text_dim:
        raise ModelLoadError(f"text encoder gives {enc.dim}-d embeddings, DiT expects {c.text_dim}-d")
