"""The pipeline: a model family (a DiT, an autoencoder and a text encoder) loaded together, the driver over it,
and streams.

    pipe = Pipeline.load("tiny")                    # built-in name or a local model folder
    stream = pipe.stream("a red circle moving left", seed=0)
    for frame in stream: ...                        # uint8 (H, W, 3), endless
    stream.set_prompt("a blue square")              # from the next chunk (and the chunks in flight: switch_passes)
    frames = pipe.generate("a red circle", num_frames=64)   # (T, H, W, 3) uint8
    for frame in pipe.video_to_video("a blue square", "in.mp4"): ...   # follows the input (docs/v2v.md)

A model folder holds `framecast.json` (this file's `PipelineConfig`), `dit/` and `autoencoder/`. Stream
settings are a typed `StreamConfig`: the model's own, overridden once by `stream_config(**fields)` or by a
`config=` handed in whole.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from framecast.engine.driver import Driver
from framecast.engine.live import Stream
from framecast.errors import InputError, ModelLoadError
from framecast.family.causal import CausalFamily
from framecast.family.contract import ModelFamily
from framecast.family.image import ImageFamily
from framecast.family.image_settings import ImageSettings
from framecast.family.wan import WanOptions, is_wan_folder, load_wan
from framecast.models.autoencoder import (
    AutoencoderConfig,
    StreamingAutoencoder,
    TinyAutoencoder,
    load_autoencoder,
    save_autoencoder,
)
from framecast.models.checkpoint import load_dit, save_dit
from framecast.models.config import preset
from framecast.models.diffusers_image import is_image_folder, load_image_folder
from framecast.models.dit import CausalWanDiT
from framecast.models.text import CachedTextEncoder, TextEncoder, load_text_encoder
from framecast.models.wan_weights import load_wan_dit
from framecast.models.weights import read_json
from framecast.recipes import Recipe, apply_recipe, choose_recipe, recipe_wan_options
from framecast.stream.config import StreamConfig
from framecast.v2v.controller import MotionConfig
from framecast.v2v.feed import InputFeed, V2VConfig
from framecast.v2v.sources import as_source

PIPELINE_FILE = "framecast.json"
WEIGHTS_DIR = Path(__file__).parent / "weights"
BUILTIN = ("tiny",)  # the built-in model, for text to video and video to video (docs/model-card.md)
ALIASES = {"tiny-v2v": "tiny"}  # earlier names: a separate video-to-video model until one model did both
T = TypeVar("T")


@dataclass
class PipelineConfig:
    """A model folder's `framecast.json`: its frame rate, text encoder, autoencoder folder, and its own stream and
    video-to-video settings (fields left out of the file keep the dataclasses' defaults)."""

    fps: float = 16.0
    text_encoder: str = "minilm"
    stream: StreamConfig = field(default_factory=StreamConfig)
    autoencoder: str = "autoencoder"  # its folder, relative to the model folder (models may share one)
    motion: MotionConfig = field(default_factory=MotionConfig)  # the model's video-to-video strengths

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        _check_keys(cls, d, "")
        typed = {"stream": StreamConfig, "motion": MotionConfig}
        fields = {k: _typed(typed[k], v, k) if k in typed else v for k, v in d.items()}
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_keys(kind: type, d: object, section: str) -> None:
    where = f"{section} keys" if section else "keys"
    if not isinstance(d, dict):
        what = section or "the file"
        raise ModelLoadError(f"{what} in {PIPELINE_FILE} must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(kind)}
    if unknown:
        raise ModelLoadError(f"unknown {where} in {PIPELINE_FILE}: {', '.join(sorted(unknown))}")


def _typed(kind: type[T], d: object, section: str) -> T:
    """A settings dataclass from a section of `framecast.json`, checked (unknown keys, values out of range)."""
    _check_keys(kind, d, section)
    try:
        return kind(**d)  # type: ignore[arg-type]
    except InputError as e:
        raise ModelLoadError(f"{section} settings in {PIPELINE_FILE}: {e}") from None


def with_fields(base: T, section: str, **fields: Any) -> T:
    """`base` (a settings dataclass) with `fields` replaced, validated once; unknown names are a clear error."""
    known = {f.name for f in dataclasses.fields(base)}  # type: ignore[arg-type]
    unknown = set(fields) - known
    if unknown:
        names, known_names = ", ".join(sorted(unknown)), ", ".join(sorted(known))
        raise InputError(f"unknown {section} settings: {names} (known: {known_names})")
    return dataclasses.replace(base, **fields)  # type: ignore[type-var]


class Pipeline:
    """A model family, its settings and the driver over it: what every front end streams through."""

    recipe: Recipe | None = None  # the sampling recipe `load` applied, if any

    def __init__(
        self,
        dit: CausalWanDiT,
        autoencoder: StreamingAutoencoder,
        text_encoder: TextEncoder,
        config: PipelineConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ) -> None:
        family = CausalFamily(dit, autoencoder, text_encoder, torch.device(device), parse_dtype(dtype))
        self._attach(family, config)
        self.dit, self.autoencoder, self.text_encoder = family.dit, family.autoencoder, text_encoder

    @classmethod
    def from_family(cls, family: ModelFamily, config: PipelineConfig | None = None) -> Pipeline:
        """A pipeline over any model family (`family.contract`): the driver, the server, the CLI's streaming
        and `bench` work through it as they do for the built-in causal DiT."""
        pipe = cls.__new__(cls)
        pipe._attach(family, config)
        return pipe

    def _attach(self, family: ModelFamily, config: PipelineConfig | None) -> None:
        self.config = config or PipelineConfig()
        self.family = family
        self.driver = Driver(family)
        self.device, self.dtype = family.device, family.dtype
        self.conditioner = family.conditioner

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model: str = "tiny",
        device: str = "cpu",
        random_weights: bool = False,
        text_encoder: TextEncoder | None = None,
        checkpoint: str | Path | None = None,
        dtype: str | torch.dtype | None = None,
        wan: WanOptions | None = None,
        recipe: str | None = None,
    ) -> Pipeline:
        """A built-in model by name, a framecast model folder or a Wan2.1 folder (docs/models.md: the original or
        the diffusers layout; `wan`: its frame size and chunk, default 480 x 832, 3 latent frames).
        `random_weights` builds the named preset untrained.

        `checkpoint`: a causal checkpoint file applied over the folder's DiT (`models.wan_weights`: a torch file
        with `generator_ema`, `generator`, `state_dict`, `model` or bare weights, `model.` prefixes, a
        `generator_lora` merged at load; or a `.safetensors` file). `dtype`: float32, bfloat16 or float16.
        `recipe`: a published checkpoint's sampling setup by name (`framecast.recipes`, `framecast models`): its
        stream settings and, for a Wan folder, its latent frames per chunk; None: the recipe the folder or the
        checkpoint's file name identifies, if any, else the folder's own settings.
        """
        model = ALIASES.get(model, model)
        chosen = choose_recipe(model, checkpoint, recipe)
        wan = recipe_wan_options(chosen, wan)
        pipe = cls._load(model, device, random_weights, text_encoder, checkpoint, dtype, wan)
        return pipe if chosen is None else pipe._use_recipe(chosen)

    def _use_recipe(self, chosen: Recipe) -> Pipeline:
        if not isinstance(self.family, CausalFamily):
            raise InputError(f"recipe {chosen.name!r} is for causal DiT models, not {type(self.family).__name__}")
        stream = apply_recipe(chosen, self.config.stream, self.family.dit.config.chunk_frames)
        self.config, self.recipe = dataclasses.replace(self.config, stream=stream), chosen
        return self

    @classmethod
    def _load(
        cls,
        model: str,
        device: str,
        random_weights: bool,
        text_encoder: TextEncoder | None,
        checkpoint: str | Path | None,
        dtype: str | torch.dtype | None,
        wan: WanOptions | None,
    ) -> Pipeline:
        """`load` without a recipe."""
        if random_weights:
            if checkpoint is not None:
                raise InputError("a checkpoint goes over a model folder's weights, not over --random-weights")
            return cls.random(model, device=device, text_encoder=text_encoder, dtype=dtype)
        folder = _resolve(model)
        if is_image_folder(folder):  # a diffusers SD / SDXL folder: the per-frame image family
            if checkpoint is not None:
                raise InputError("--checkpoint is for causal DiT folders; an image model's weights are its folder's")
            return cls.load_image(folder, device=device, dtype=dtype)
        if not (folder / PIPELINE_FILE).is_file():
            if not is_wan_folder(folder):
                raise ModelLoadError(_not_a_model_folder(folder))
            dit, vae, enc = load_wan(folder, checkpoint, wan, device, parse_dtype(dtype), text_encoder)
            return cls(dit, vae, enc, PipelineConfig(text_encoder="umt5"), device, dtype)
        cfg = PipelineConfig.from_dict(read_json(folder / PIPELINE_FILE, "pipeline config"))
        dit = load_dit(folder / "dit") if checkpoint is None else load_wan_dit(folder / "dit", checkpoint)
        ae = load_autoencoder(folder / cfg.autoencoder)
        enc = text_encoder or CachedTextEncoder(load_text_encoder(cfg.text_encoder))
        return cls(dit, ae, enc, cfg, device, dtype)

    @classmethod
    def random(
        cls,
        name: str = "tiny",
        device: str = "cpu",
        seed: int = 0,
        text_encoder: TextEncoder | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> Pipeline:
        """The `name` preset with random weights (for speed tests and before trained weights exist)."""
        torch.manual_seed(seed)
        dit = CausalWanDiT(preset(name))
        ae = TinyAutoencoder(AutoencoderConfig(latent_channels=dit.config.in_channels))
        enc = text_encoder or CachedTextEncoder(load_text_encoder("minilm"))
        return cls(dit, ae, enc, PipelineConfig(), device, dtype)

    @classmethod
    def load_image(
        cls,
        folder: str | Path,
        settings: ImageSettings | None = None,
        tiny_vae: str | Path | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        fps: float = 24.0,
        loras: Sequence[tuple[str | Path, float]] = (),
        scheduler: str | None = None,
    ) -> Pipeline:
        """A diffusers image-model folder (SD 1.5/2.1, SD-Turbo, SDXL, LCM) as a per-frame stream
        (`family.image`, docs/models.md): `settings` its size, timesteps and guidance; `tiny_vae` an
        AutoencoderTiny folder to decode and encode with; `loras` (file, strength) pairs merged at load (an LCM
        LoRA: with `scheduler="LCMScheduler"`, the diffusers scheduler class run instead of the folder's). Default
        steps: the t-index list's length, else 4 for
        an LCM scheduler and 1 otherwise (Turbo models)."""
        parts = load_image_folder(folder, tiny_vae, loras, scheduler)
        settings = settings or ImageSettings()
        fam = ImageFamily(parts, settings, torch.device(device), parse_dtype(dtype))
        steps = len(settings.t_index) if settings.t_index else 4 if parts.scheduler.rule == "lcm" else 1
        return cls.from_family(fam, PipelineConfig(fps=fps, text_encoder="clip", stream=StreamConfig(steps=steps)))

    def save(self, folder: str | Path) -> Path:
        if not isinstance(self.family, CausalFamily):
            raise InputError(f"saving a model folder is for the causal DiT family, not {type(self.family).__name__}")
        if not isinstance(self.autoencoder, TinyAutoencoder):
            raise InputError("saving a model folder is for framecast's own models; a Wan2.1 folder loads as it is")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_dit(self.dit, out / "dit")
        save_autoencoder(self.autoencoder, out / "autoencoder")
        config = dataclasses.replace(self.config, autoencoder="autoencoder")
        (out / PIPELINE_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        return out

    # -- geometry ------------------------------------------------------------------------------
    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of output frames in pixels."""
        return self.family.frame_size

    @property
    def frames_per_chunk(self) -> int:
        return self.family.frames_per_chunk

    # -- streaming -----------------------------------------------------------------------------
    def stream_config(self, **fields: Any) -> StreamConfig:
        """The model's stream settings with `fields` (any `StreamConfig` field) replaced, checked once."""
        return with_fields(self.config.stream, "stream", **fields)

    def motion_config(self, **fields: Any) -> MotionConfig:
        """The model's motion-aware strength settings (`framecast.json`) with `fields` replaced."""
        return with_fields(self.config.motion, "motion", **fields)

    def stream(self, prompt: str, seed: int = 0, config: StreamConfig | None = None, **fields: Any) -> Stream:
        """A new endless stream under `config` (default: the model's), with `fields` (StreamConfig fields:
        steps, batch_steps, ...) replaced."""
        cfg = self.stream_config(**fields) if config is None else with_fields(config, "stream", **fields)
        return Stream(self.driver, cfg, prompt, seed)

    def video_stream(
        self,
        prompt: str,
        source: object,
        seed: int = 0,
        v2v: V2VConfig | None = None,
        config: StreamConfig | None = None,
        input_end: Literal["stop", "prompt"] = "stop",
        **fields: Any,
    ) -> Stream:
        """A stream that follows `source` (a `FrameSource`, a video file path, a clip (T, H, W, 3) or an
        iterable of uint8 frames): each input chunk is encoded, noised to its strength and denoised under
        the prompt. Iterating it ends when a finite source does (`input_end="prompt"`: the stream goes on from
        the prompt alone instead); `stream.input_stats` says what happened."""
        stream = self.stream(prompt, seed, config, **fields)
        v2v = v2v or V2VConfig(self.config.motion)
        fam = self.family
        stream.feed = InputFeed(as_source(source), fam.encode, fam.frame_size, fam.frames_per_chunk, v2v)
        stream.input_end = input_end
        return stream

    def video_to_video(
        self,
        prompt: str,
        source: object,
        strength: float | None = None,
        seed: int = 0,
        v2v: V2VConfig | None = None,
        **fields: Any,
    ) -> Iterator[np.ndarray]:
        """Yield one uint8 (H, W, 3) frame per input frame, in order: the input redrawn under the prompt.

        `strength` fixes the noise level of every chunk (the motion-aware controller off); None keeps the
        controller of `v2v` (by default on). Similar chunks skip the model as `v2v.similarity` says.
        """
        if strength is not None:
            base = v2v or V2VConfig(self.config.motion)
            v2v = dataclasses.replace(base, motion=dataclasses.replace(base.motion, enabled=False, fixed=strength))
        return iter(self.video_stream(prompt, source, seed, v2v, None, "stop", **fields))

    def frames(
        self,
        prompt: str,
        num_frames: int,
        seed: int = 0,
        prompt_at: Iterable[tuple[int, str]] = (),
        config: StreamConfig | None = None,
        **fields: Any,
    ) -> Iterator[np.ndarray]:
        """Yield `num_frames` uint8 (H, W, 3) frames; `prompt_at` switches prompts at frame indices."""
        if num_frames < 1:
            raise InputError(f"number of frames must be positive, got {num_frames}")
        stream, changes = self.stream(prompt, seed, config, **fields), sorted(prompt_at)
        for n, frame in enumerate(stream):
            while changes and changes[0][0] <= n:
                stream.set_prompt(changes.pop(0)[1])
            yield frame
            if n + 1 == num_frames:
                return

    def generate(
        self,
        prompt: str,
        num_frames: int,
        seed: int = 0,
        prompt_at: Iterable[tuple[int, str]] = (),
        config: StreamConfig | None = None,
        **fields: Any,
    ) -> np.ndarray:
        """Collect `num_frames` frames: (T, H, W, 3) uint8."""
        return np.stack(list(self.frames(prompt, num_frames, seed, prompt_at, config, **fields)))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype by name (float32, bfloat16, float16), a torch.dtype, or None (the device's default)."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InputError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")


def _not_a_model_folder(folder: Path) -> str:
    """What a folder that is neither a framecast model folder nor a Wan2.1 folder lacks, said plainly."""
    return (
        f"{folder / PIPELINE_FILE} not found: a framecast model folder holds {PIPELINE_FILE}, dit/, autoencoder/; "
        "a Wan2.1 folder holds config.json + diffusion_pytorch_model*.safetensors (original) or transformer/ "
        "(diffusers), see docs/models.md"
    )


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
