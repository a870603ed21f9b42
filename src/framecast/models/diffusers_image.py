"""A diffusers image-model folder (SD 1.5/2.1, SD-Turbo, SDXL, SDXL-Turbo, LCM), loaded offline into parts.

    parts = load_image_folder("sd-turbo/", tiny_vae="taesd/")   # a diffusers `save_pretrained` folder

The folder is a diffusers pipeline folder: `model_index.json`, `unet/`, `vae/`, `text_encoder/`,
`tokenizer/`, `scheduler/` (SDXL adds `text_encoder_2/`, `tokenizer_2/`). Weights load from safetensors
only (a component with only pickled `.bin` files is refused); nothing is downloaded. What framecast needs
of the scheduler is its training schedule, prediction type and step rule (`SchedulerFacts`); the stepping
itself is `framecast.sampling.ddpm`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from framecast.errors import MissingExtraError, ModelLoadError
from framecast.models.image_text import ClipPrompts
from framecast.models.lora import merge_lora, read_lora
from framecast.models.text import _no_progress_bar, _transformers
from framecast.models.weights import read_json
from framecast.sampling.ddpm import PREDICTIONS, Prediction, StepRule, alphas_cumprod

INDEX_FILE = "model_index.json"
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "LatentConsistencyModelPipeline")
SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
LCM_SCHEDULERS = ("LCMScheduler",)


@dataclass(frozen=True)
class SchedulerFacts:
    """What the image family needs of a folder's scheduler: the training schedule, the prediction type, the step
    rule ("lcm" for LCMScheduler, else the deterministic "ode" step) and its own timesteps for n steps."""

    name: str
    alphas: Tensor  # (train_steps,) float64 alpha-bar
    prediction: Prediction
    rule: StepRule
    timesteps: Callable[[int], list[int]]
    start_scale: Callable[[int], float]  # txt2img's start: this times unit noise (n steps), see `_start_scale`

    @property
    def train_steps(self) -> int:
        return len(self.alphas)


@dataclass
class ImageParts:
    """The components of one image model, on the CPU in float32 (the family moves them)."""

    kind: str  # "sd" or "sdxl"
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL or AutoencoderTiny
    prompts: ClipPrompts
    scheduler: SchedulerFacts
    folder: Path


def diffusers() -> Any:
    """The diffusers package, imported offline, or a clear error naming the extra."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import diffusers as d
    except ImportError:
        raise MissingExtraError("diffusers", "image") from None
    d.utils.logging.set_verbosity_error()  # its load-time advice is for its own pipelines, not framecast's
    return d


def is_image_folder(folder: Path) -> bool:
    """True when `folder` is a diffusers pipeline folder of a supported image pipeline."""
    index = folder / INDEX_FILE
    return index.is_file() and read_json(index, "pipeline index").get("_class_name") in SD_PIPELINES + SDXL_PIPELINES


def pipeline_kind(folder: Path) -> str:
    """ "sd" or "sdxl" from `model_index.json`; a clear error for anything else."""
    index = folder / INDEX_FILE
    if not index.is_file():
        raise ModelLoadError(f"{folder} is not a diffusers pipeline folder ({INDEX_FILE} not found)")
    name = read_json(index, "pipeline index").get("_class_name")
    if name in SD_PIPELINES:
        return "sd"
    if name in SDXL_PIPELINES:
        return "sdxl"
    known = ", ".join(SD_PIPELINES + SDXL_PIPELINES)
    raise ModelLoadError(f"{index} names pipeline {name!r}; framecast's image family runs: {known}")


def component(folder: Path, name: str, what: str) -> Path:
    """`folder/name`, which must hold `config.json` (or a tokenizer / scheduler file) and safetensors weights."""
    sub = folder / name
    if not sub.is_dir():
        raise ModelLoadError(f"{folder} has no {name}/ (expected the {what} there)")
    return sub


def weights_variant(sub: Path, stem: str) -> str | None:
    """None for `stem.safetensors` (or a sharded index), "fp16" for `stem.fp16.safetensors`; refuses pickles."""
    if (sub / f"{stem}.safetensors").is_file() or (sub / f"{stem}.safetensors.index.json").is_file():
        return None
    if (sub / f"{stem}.fp16.safetensors").is_file() or (sub / f"{stem}.safetensors.index.fp16.json").is_file():
        return "fp16"
    if any(sub.glob("*.bin")):
        raise ModelLoadError(f"{sub} has only pickled .bin weights; framecast loads safetensors only")
    raise ModelLoadError(f"{sub} has no {stem}.safetensors (expected the component's weights there)")


def _load(cls: Any, sub: Path, stem: str) -> Any:
    variant = weights_variant(sub, stem)
    if not (sub / "config.json").is_file():
        raise ModelLoadError(f"{sub} has no config.json")
    args = {"variant": variant, "use_safetensors": True, "local_files_only": True, "torch_dtype": torch.float32}
    try:
        with _no_progress_bar():
            model = cls.from_pretrained(sub, **args)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"could not load {sub}: {first}") from None
    model = model.eval()
    model.requires_grad_(False)
    return model


def load_scheduler(folder: Path, override: str | None = None) -> SchedulerFacts:
    """The folder's `scheduler/scheduler_config.json` as `SchedulerFacts` (its own timesteps from diffusers);
    `override` names another diffusers scheduler class run with that config (LCMScheduler for an LCM LoRA)."""
    path = component(folder, "scheduler", "scheduler config") / "scheduler_config.json"
    if not path.is_file():
        raise ModelLoadError(f"{path.parent} has no scheduler_config.json")
    cfg = read_json(path, "scheduler config")
    name = override or str(cfg.get("_class_name", ""))
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ModelLoadError(f"{path}: prediction_type {prediction!r} is not one of {', '.join(PREDICTIONS)}")
    cls = getattr(diffusers(), name, None)
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise ModelLoadError(f"{path}: unknown scheduler class {name!r}")
    alphas = alphas_cumprod(
        int(cfg.get("num_train_timesteps", 1000)),
        float(cfg.get("beta_start", 0.00085)),
        float(cfg.get("beta_end", 0.012)),
        str(cfg.get("beta_schedule", "scaled_linear")),
    )
    rule: StepRule = "lcm" if name in LCM_SCHEDULERS else "ode"
    return SchedulerFacts(name, alphas, prediction, rule, _timesteps_of(cls, cfg), _start_scale(cls, cfg, alphas))


def _timesteps_of(cls: Any, cfg: dict[str, Any]) -> Callable[[int], list[int]]:
    """The scheduler's own timesteps for n steps (what a diffusers pipeline would run), as integers."""

    def timesteps(n: int) -> list[int]:
        sched = _scheduler(cls, cfg)
        sched.set_timesteps(n)
        return [round(float(t)) for t in sched.timesteps]

    return timesteps


def _scheduler(cls: Any, cfg: dict[str, Any]) -> Any:
    """A diffusers scheduler from its config, quietly (its advice on old configs is for the folder's author)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_config(cfg)


def _start_scale(cls: Any, cfg: dict[str, Any], alphas: Tensor) -> Callable[[int], float]:
    """The scale of txt2img's starting noise in framecast's (variance-preserving) latents, as a diffusers pipeline
    starts: 1 for DDIM / LCM; for sigma-space schedulers (Euler and kin) `init_noise_sigma` * sqrt(a_t0), which
    is a little under 1 where diffusers takes sigma_max for sqrt(sigma_max^2 + 1) ("trailing", "linspace")."""

    def scale(n: int) -> float:
        sched = _scheduler(cls, cfg)
        sched.set_timesteps(n)
        sigma0 = float(sched.init_noise_sigma)
        if sigma0 == 1.0 or not hasattr(sched, "sigmas"):
            return 1.0
        return sigma0 * float(alphas[round(float(sched.timesteps[0]))].sqrt())

    return scale


def load_image_folder(
    folder: str | Path,
    tiny_vae: str | Path | None = None,
    loras: Sequence[tuple[str | Path, float]] = (),
    scheduler: str | None = None,
) -> ImageParts:
    """A diffusers SD / SDXL pipeline folder -> `ImageParts` (float32, CPU). `tiny_vae`: an AutoencoderTiny
    (TAESD / TAESDXL) folder used instead of the folder's VAE. `loras`: (LoRA file, strength) merged in order.
    `scheduler`: a diffusers scheduler class name to run instead of the folder's (with its config)."""
    root = Path(folder)
    if not root.is_dir():
        raise ModelLoadError(f"model folder not found: {root}")
    kind, d = pipeline_kind(root), diffusers()
    unet = _load(d.UNet2DConditionModel, component(root, "unet", "UNet"), "diffusion_pytorch_model")
    if tiny_vae is None:
        vae = _load(d.AutoencoderKL, component(root, "vae", "VAE"), "diffusion_pytorch_model")
    else:
        vae = _load(d.AutoencoderTiny, _tiny_folder(Path(tiny_vae)), "diffusion_pytorch_model")
    names = [("text_encoder", "tokenizer")] + ([("text_encoder_2", "tokenizer_2")] if kind == "sdxl" else [])
    encoders = [_text_encoder(root, enc, tok, kind) for enc, tok in names]
    prompts = ClipPrompts(encoders, sdxl=kind == "sdxl", zero_empty=_force_zeros(root, kind))
    _check_parts(root, unet, vae, prompts)
    for path, strength in loras:
        _merge(path, strength, {"unet": unet} | {n: m for (n, _), (_, m) in zip(names, encoders, strict=True)})
    return ImageParts(kind, unet, vae, prompts, load_scheduler(root, scheduler), root)


def _merge(path: str | Path, strength: float, models: dict[str, Any]) -> None:
    """One LoRA file into the parts it names (unet, text_encoder, text_encoder_2)."""
    for part, pairs in read_lora(path).items():
        if part not in models:
            raise ModelLoadError(f"{path}: the LoRA has weights for {part!r}, which this model does not have")
        merge_lora(models[part], pairs, strength, where=part)


def _tiny_folder(path: Path) -> Path:
    if not path.is_dir():
        raise ModelLoadError(f"tiny VAE folder not found: {path} (expected a diffusers AutoencoderTiny folder)")
    return path


def _text_encoder(root: Path, enc: str, tok: str, kind: str) -> tuple[Any, nn.Module]:
    """(tokenizer, CLIP text model) of one encoder slot; SDXL's second returns projected pooled embeddings."""
    transformers = _transformers()
    tok_dir = component(root, tok, "tokenizer")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"could not load the tokenizer in {tok_dir}: {str(err).splitlines()[0]}") from None
    projected = kind == "sdxl" and enc == "text_encoder_2"
    cls = transformers.CLIPTextModelWithProjection if projected else transformers.CLIPTextModel
    return tokenizer, _load(cls, component(root, enc, "text encoder"), "model")


def _force_zeros(root: Path, kind: str) -> bool:
    """SDXL folders say whether an empty negative prompt is the zero embedding (diffusers' default: yes)."""
    index = read_json(root / INDEX_FILE, "pipeline index")
    return kind == "sdxl" and bool(index.get("force_zeros_for_empty_prompt", True))


def _check_parts(root: Path, unet: Any, vae: Any, prompts: ClipPrompts) -> None:
    u, v = unet.config, vae.config
    if v["latent_channels"] != u["in_channels"]:
        got, want = v["latent_channels"], u["in_channels"]
        raise ModelLoadError(f"{root}: the VAE gives {got} latent channels, the UNet takes {want}")
    if prompts.dim != u["cross_attention_dim"]:
        raise ModelLoadError(
            f"{root}: the text encoders give {prompts.dim}-d states, the UNet attends to {u['cross_attention_dim']}-d"
        )


def vae_scale(vae: Any) -> int:
    """Pixels per latent pixel of a diffusers VAE (8 for SD's AutoencoderKL and TAESD)."""
    cfg = vae.config
    if "upsampling_scaling_factor" in cfg:  # AutoencoderTiny
        return int(cfg["upsampling_scaling_factor"] ** (len(cfg["decoder_block_out_channels"]) - 1))
    return int(2 ** (len(cfg["block_out_channels"]) - 1))
