"""The pipeline: a DiT, an autoencoder and a text encoder loaded together, and streams over them.

    pipe = Pipeline.load("tiny")                    # built-in name or a local model folder
    stream = pipe.stream("a red circle moving left", seed=0)
    for frame in stream: ...                        # uint8 (H, W, 3), endless
    stream.set_prompt("a blue square")              # from the next chunk (and the chunks in flight: switch_passes)
    frames = pipe.generate("a red circle", num_frames=64)   # (T, H, W, 3) uint8
    for frame in pipe.video_to_video("a blue square", "in.mp4"): ...   # follows the input (docs/v2v.md)

A model folder holds `framecast.json` (this file's `PipelineConfig`), `dit/` and `autoencoder/`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from framecast.engine.engine import Engine
from framecast.errors import InputError, ModelLoadError
from framecast.io.frames import frames_to_uint8, uint8_to_frames
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder, load_autoencoder, save_autoencoder
from framecast.models.checkpoint import load_dit, save_dit
from framecast.models.config import preset
from framecast.models.dit import CausalWanDiT
from framecast.models.text import CachedTextEncoder, TextEncoder, load_text_encoder
from framecast.models.weights import read_json
from framecast.stream.config import StreamConfig
from framecast.stream.live import Conditioner, Stream
from framecast.stream.state import Condition, StreamState
from framecast.v2v.controller import MotionConfig
from framecast.v2v.feed import InputFeed, V2VConfig
from framecast.v2v.sources import as_source

PIPELINE_FILE = "framecast.json"
WEIGHTS_DIR = Path(__file__).parent / "weights"
BUILTIN = ("tiny",)  # the built-in model, for text to video and video to video (docs/model-card.md)
ALIASES = {"tiny-v2v": "tiny"}  # earlier names: a separate video-to-video model until one model did both


@dataclass
class PipelineConfig:
    fps: float = 16.0
    text_encoder: str = "minilm"
    stream: dict[str, Any] = field(default_factory=dict)
    autoencoder: str = "autoencoder"  # its folder, relative to the model folder (models may share one)
    motion: dict[str, Any] = field(default_factory=dict)  # the model's video-to-video strengths (MotionConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ModelLoadError(f"unknown keys in {PIPELINE_FILE}: {', '.join(sorted(set(d) - known))}")
        motion = {f.name for f in dataclasses.fields(MotionConfig)}
        if set(d.get("motion", {})) - motion:
            raise ModelLoadError(f"unknown motion keys in {PIPELINE_FILE}: {sorted(set(d['motion']) - motion)}")
        return cls(**d)


class Pipeline:
    def __init__(
        self,
        dit: CausalWanDiT,
        autoencoder: TinyAutoencoder,
        text_encoder: TextEncoder,
        config: PipelineConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config or PipelineConfig()
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dit = dit.to(self.device, self.dtype).eval()
        self.autoencoder = autoencoder.to(self.device).eval()
        self.text_encoder = text_encoder
        self.engine = Engine(self.dit)
        self.conditioner = Conditioner(self._embed, self._cross)
        self._null_cond: Condition | None = None
        _check_compatible(self.dit, self.autoencoder, self.text_encoder)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model: str = "tiny",
        device: str = "cpu",
        random_weights: bool = False,
        text_encoder: TextEncoder | None = None,
    ) -> Pipeline:
        """A built-in model by name, or a local model folder. `random_weights` builds the named preset untrained."""
        model = ALIASES.get(model, model)
        if random_weights:
            return cls.random(model, device=device, text_encoder=text_encoder)
        folder = _resolve(model)
        if not (folder / PIPELINE_FILE).is_file():
            raise ModelLoadError(
                f"{folder / PIPELINE_FILE} not found (a model folder holds {PIPELINE_FILE}, dit/, autoencoder/)"
            )
        cfg = PipelineConfig.from_dict(read_json(folder / PIPELINE_FILE, "pipeline config"))
        dit, ae = load_dit(folder / "dit"), load_autoencoder(folder / cfg.autoencoder)
        enc = text_encoder or CachedTextEncoder(load_text_encoder(cfg.text_encoder))
        return cls(dit, ae, enc, cfg, device)

    @classmethod
    def random(
        cls, name: str = "tiny", device: str = "cpu", seed: int = 0, text_encoder: TextEncoder | None = None
    ) -> Pipeline:
        """The `name` preset with random weights (for speed tests and before trained weights exist)."""
        torch.manual_seed(seed)
        dit = CausalWanDiT(preset(name))
        ae = TinyAutoencoder(AutoencoderConfig(latent_channels=dit.config.in_channels))
        return cls(dit, ae, text_encoder or CachedTextEncoder(load_text_encoder("minilm")), PipelineConfig(), device)

    def save(self, folder: str | Path) -> Path:
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_dit(self.dit, out / "dit")
        save_autoencoder(self.autoencoder, out / "autoencoder")
        config = dataclasses.replace(self.config, autoencoder="autoencoder")
        (out / PIPELINE_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        return out

    # -- geometry ------------------------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of output frames in pixels."""
        c, sf = self.dit.config, self.autoencoder.spatial_factor
        return c.latent_height * sf, c.latent_width * sf

    @property
    def frames_per_chunk(self) -> int:
        return self.dit.config.chunk_frames * self.autoencoder.temporal_factor

    # -- streaming -----------------------------------------------------------------------------
    def stream_config(self, **overrides: Any) -> StreamConfig:
        return StreamConfig(**{**self.config.stream, **overrides})

    def stream(self, prompt: str, seed: int = 0, **overrides: Any) -> Stream:
        """A new endless stream; `overrides` are `StreamConfig` fields (steps, batch_steps, ...)."""
        cfg = self.stream_config(**overrides)
        null = self._null() if cfg.guided else None
        state = StreamState.create(self.dit.config, cfg, seed, self.dtype, self.device, null)
        return Stream(self.engine, state, _check_prompt(prompt), self.conditioner, self._decode)

    def motion_config(self, **overrides: Any) -> MotionConfig:
        """The motion-aware strength settings: `MotionConfig` defaults, then the model's own (`framecast.json`),
        then `overrides`."""
        return MotionConfig(**{**self.config.motion, **overrides})

    def video_stream(
        self, prompt: str, source: object, seed: int = 0, v2v: V2VConfig | None = None, **overrides: Any
    ) -> Stream:
        """A stream that follows `source` (a `FrameSource`, a video file path, a clip (T, H, W, 3) or an
        iterable of uint8 frames): each input chunk is encoded, noised to its strength and denoised under
        the prompt. Iterating it ends when a finite source does; `stream.feed.stats` says what happened."""
        stream = self.stream(prompt, seed, **overrides)
        v2v = v2v or V2VConfig(self.motion_config())
        stream.feed = InputFeed(as_source(source), self._encode, self.frame_size, self.frames_per_chunk, v2v)
        return stream

    def video_to_video(
        self,
        prompt: str,
        source: object,
        strength: float | None = None,
        seed: int = 0,
        v2v: V2VConfig | None = None,
        **overrides: Any,
    ) -> Iterator[np.ndarray]:
        """Yield one uint8 (H, W, 3) frame per input frame, in order: the input redrawn under the prompt.

        `strength` fixes the noise level of every chunk (the motion-aware controller off); None keeps the
        controller of `v2v` (by default on). Similar chunks skip the model as `v2v.similarity` says.
        """
        if strength is not None:
            base = v2v or V2VConfig(self.motion_config())
            v2v = dataclasses.replace(base, motion=dataclasses.replace(base.motion, enabled=False, fixed=strength))
        return iter(self.video_stream(prompt, source, seed, v2v, **overrides))

    def frames(
        self, prompt: str, num_frames: int, seed: int = 0, prompt_at: Iterable[tuple[int, str]] = (), **overrides: Any
    ) -> Iterator[np.ndarray]:
        """Yield `num_frames` uint8 (H, W, 3) frames; `prompt_at` switches prompts at frame indices."""
        if num_frames < 1:
            raise InputError(f"number of frames must be positive, got {num_frames}")
        stream, changes = self.stream(prompt, seed, **overrides), sorted(prompt_at)
        for n, frame in enumerate(stream):
            while changes and changes[0][0] <= n:
                stream.set_prompt(changes.pop(0)[1])
            yield frame
            if n + 1 == num_frames:
                return

    def generate(
        self, prompt: str, num_frames: int, seed: int = 0, prompt_at: Iterable[tuple[int, str]] = (), **overrides: Any
    ) -> np.ndarray:
        """Collect `num_frames` frames: (T, H, W, 3) uint8."""
        return np.stack(list(self.frames(prompt, num_frames, seed, prompt_at, **overrides)))

    # -- internals -----------------------------------------------------------------------------
    def _null(self) -> Condition:
        """The empty prompt's condition (the unconditional side of guidance), computed once."""
        if self._null_cond is None:
            self._null_cond = self._cross(self.text_encoder.encode([""])[0].to(self.device))
        return self._null_cond

    def _embed(self, text: str) -> Tensor:
        return self.text_encoder.encode([_check_prompt(text)])[0].to(self.device)  # (T, D)

    @torch.inference_mode()
    def _cross(self, embedding: Tensor) -> Condition:
        kv = self.dit.cross_kv(embedding[None])  # (L, 1, T, h, hd)
        return Condition.from_cross(kv)

    @torch.inference_mode()
    def _encode(self, frames: np.ndarray) -> Tensor:
        """Input frames uint8 (T, H, W, 3) at the model's size -> latent (1, C, T / tf, h, w) on the device."""
        return self.autoencoder.encode(uint8_to_frames(frames, self.device))

    @torch.inference_mode()
    def _decode(self, latent: Tensor, past: Tensor | None) -> list[np.ndarray]:
        """A finished chunk (C, cf, h, w) and the latent frame before it (C, h, w) -> uint8 frames."""
        before = None if past is None else past[None].float()
        frames = self.autoencoder.decode(latent[None].float(), before)  # (1, 3, T, H, W) in [-1, 1]
        return list(frames_to_uint8(frames))


def _check_prompt(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError("prompt must be a non-empty string")
    return text


def _check_compatible(dit: CausalWanDiT, ae: TinyAutoencoder, enc: TextEncoder) -> None:
    c = dit.config
    if ae.latent_channels != c.in_channels:
        raise ModelLoadError(f"autoencoder gives {ae.latent_channels} latent channels, DiT expects {c.in_channels}")
    if enc.dim != c.text_dim:
        raise ModelLoadError(f"text encoder gives {enc.dim}-d embeddings, DiT expects {c.text_dim}-d")


def _resolve(model: str) -> Path:
    if model in BUILTIN:
        folder = WEIGHTS_DIR / model
        if not (folder / PIPELINE_FILE).is_file():
            raise ModelLoadError(
                f"the built-in model {model!r} has no trained weights in this install ({folder}); "
                "pass --random-weights to run it untrained"
            )
        return folder
    folder = Path(model)
    if not folder.is_dir():
        names = ", ".join(BUILTIN + tuple(ALIASES))
        raise ModelLoadError(f"unknown model {model!r}: expected a built-in name ({names}) or a model folder")
    return folder
