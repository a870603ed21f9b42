"""Sampling recipes: how each published Wan2.1 causal checkpoint was meant to be sampled, by name.

A recipe is the sampling setup a checkpoint's own repository runs it with (timesteps and shift, latent frames per
chunk, what the KV cache holds, guidance), mapped onto framecast's `StreamConfig` and the chunk of `WanOptions`.
`Pipeline.load(..., recipe=NAME)` and `--recipe NAME` choose one; without a name, the files choose where they
identify one (`choose_recipe`: a `_framecast_recipe` key in the folder's DiT config.json, or the checkpoint's file or
folder name); otherwise the folder's own settings stay. docs/models.md ("Recipes") cites the file of every value.

Mapping rules (the anchors' code, read for each value):
- timesteps: a list with `warp_denoising_step: true` is warped by the scheduler's shift; framecast's default
  grid (`steps` levels evenly spaced from 1000, warped by `shift`) is exactly that warp of 1000/750/500/250, so
  those recipes keep `timesteps` empty and `--steps` still works. A list with `warp_denoising_step: false` is
  used as listed (`timesteps`, shift 1): the anchors' scheduler shift only rounds its noise levels to a
  1000-step grid there (by under 0.0013).
- cache: their KV cache counts the chunk being denoised; framecast's ring holds past chunks only, so
  `window_chunks` = (cache frames - sink frames - chunk frames) / chunk frames.
- guidance: the distilled checkpoints run without classifier-free guidance (the `guidance_scale` in their configs
  is the teacher's, for training).
- sampler: every one of them steps between its timesteps by predicting x0 and re-noising it to the next timestep
  with fresh noise (`sampler="renoise"`), not by an Euler step.
- recache: LongLive re-caches its window under the new prompt on a prompt switch (`recache=True`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framecast.errors import InputError, ModelLoadError
from framecast.family.wan import WanOptions
from framecast.models.weights import read_json
from framecast.stream.config import StreamConfig

HINT_KEY = "_framecast_recipe"  # in a Wan folder's DiT config.json (Wan's own loader ignores `_` keys)


@dataclass(frozen=True)
class Recipe:
    """One checkpoint family's sampling setup.

    stream:  the `StreamConfig` fields the recipe sets (the rest keep the model's own).
    dit:     the DiT preset its checkpoints are for (`wan-1.3b`, `wan-14b`).
    files:   what it expects on disk, besides the base Wan2.1 folder.
    match:   fragments of a checkpoint's file or folder name (lower case, `-` as `_`) that identify it.
    source:  repository@commit and the files its values come from.
    differs: what framecast does differently from the anchor's own code.
    """

    name: str
    title: str
    chunk_frames: int
    stream: dict[str, Any] = field(default_factory=dict)
    dit: str = "wan-1.3b"
    files: str = ""
    match: tuple[str, ...] = ()
    source: str = ""
    differs: str = ""

    def stream_config(self, base: StreamConfig | None = None) -> StreamConfig:
        """`base` (default: framecast's defaults) with the recipe's fields."""
        return dataclasses.replace(base or StreamConfig(), **self.stream)


_SF = "guandeh17/Self-Forcing@33593df"
_EVEN = dict(steps=4, shift=5.0, timesteps=())  # warped 1000/750/500/250 at shift 5 = the even grid at shift 5
_FRESH = dict(sampler="renoise")  # x0 re-noised with fresh noise between steps, as every anchor samples

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "self-forcing", "Self-Forcing (DMD), Wan2.1-T2V-1.3B", 3,
            dict(_EVEN, **_FRESH, window_chunks=6, sink_chunks=0, clean_pass=True, context_noise=0.0, guidance=1.0),
            files="Wan2.1-T2V-1.3B/ + self_forcing_dmd.pt (generator_ema, else generator)",
            match=("self_forcing", "selfforcing"),
            source=f"{_SF}: configs/self_forcing_dmd.yaml (denoising_step_list, warp_denoising_step, timestep_shift, "
            "num_frame_per_block), configs/default_config.yaml (context_noise 0), wan/modules/causal_model.py "
            "(local_attn_size -1: 32760 tokens = 21 latent frames, sink_size 0), pipeline/causal_inference.py "
            "(a t = 0 pass writes the cache)",
            differs="the anchor stops at 21 latent frames, framecast rolls the window",
        ),
        Recipe(
            "causvid", "CausVid (DMD), Wan2.1-T2V-1.3B", 3,
            dict(_FRESH, steps=3, shift=1.0, timesteps=(1000.0, 757.0, 522.0), window_chunks=6, sink_chunks=0,
                 clean_pass=True, context_noise=0.0, guidance=1.0),
            files="Wan2.1-T2V-1.3B/ + autoregressive_checkpoint/model.pt (generator)",
            match=("causvid", "autoregressive_checkpoint"),
            source="tianweiy/CausVid@ca21150: configs/wan_causal_dmd.yaml (denoising_step_list 1000/757/522/0, "
            "warp_denoising_step false, num_frame_per_block 3), causvid/models/wan/causal_inference.py (the "
            "trailing 0 dropped, KV cache 32760 tokens = 21 latent frames, a t = 0 pass writes the cache), "
            "minimal_inference/autoregressive_inference.py (model.pt, key generator)",
            differs="the anchor stops at 21 latent frames, framecast rolls the window",
        ),
        Recipe(
            "streamdiffusionv2", "StreamDiffusionV2 (video to video), Wan2.1-T2V-1.3B or 14B", 1,
            dict(_FRESH, steps=2, shift=1.0, timesteps=(700.0, 500.0, 400.0, 200.0), window_chunks=2, sink_chunks=3,
                 clean_pass=False, context_noise=0.0, guidance=1.0),
            files="Wan2.1-T2V-1.3B/ + wan_causal_dmd_v2v/model.pt (14B: wan_causal_dmd_v2v_14b/model.pt); "
            "optional taew2_1.pth",
            match=("wan_causal_dmd_v2v", "streamdiffusionv2", "streamv2v"),
            source="chenfengxu714/StreamDiffusionV2@c5a0f20: configs/wan_causal_dmd_v2v.yaml "
            "(denoising_step_list 700/500/400/200/0, warp_denoising_step false, num_frame_per_block 1, "
            "num_kv_cache 6, num_sink_tokens 3), streamv2v/inference.py (--step 2: the first 2 listed), "
            "streamv2v/inference_common.py (first N of the list), models/wan/causal_stream_inference.py (cache "
            "= num_kv_cache latent frames incl. the sinks and the frame being denoised; no t = 0 pass)",
            differs="the anchor refreshes its sinks when a frame is unlike them (adapt_sink_threshold 0.2) and "
            "sets the first timestep from the input's motion; framecast keeps the first frames as sinks",
        ),
        Recipe(
            "longlive", "LongLive 1.0, Wan2.1-T2V-1.3B", 3,
            dict(_EVEN, **_FRESH, window_chunks=2, sink_chunks=1, clean_pass=True, context_noise=0.0, guidance=1.0,
                 recache=True),
            files="Wan2.1-T2V-1.3B/ + longlive_base.pt and lora.pt (LoRA rank 256, alpha 256)",
            match=("longlive",),
            source="NVlabs/LongLive@c484b60 (LongLive 1.0; later commits are LongLive 2.0 on Wan2.2-5B): "
            "configs/longlive_inference.yaml and configs/longlive_interactive_inference.yaml (denoising_step_list, "
            "warp_denoising_step, timestep_shift 5, num_frame_per_block 3, local_attn_size 12, sink_size 3, "
            "global_sink, context_noise 0), pipeline/causal_inference.py (cache = local_attn_size latent frames "
            "incl. sink and current block), pipeline/interactive_causal_inference.py (re-cache on a switch)",
            differs="on a prompt switch the anchor re-runs its last 12 latent frames at t = 0 under the new prompt "
            "(with global_sink its cache is not cleared first), framecast the final passes of its sink and window "
            "chunks (recache); the anchor re-caches at once, framecast once the chunks in flight are finished",
        ),
        Recipe(
            "reward-forcing", "Reward Forcing, Wan2.1-T2V-1.3B", 3,
            dict(_EVEN, **_FRESH, window_chunks=1, sink_chunks=1, clean_pass=True, context_noise=0.0, guidance=1.0),
            files="Wan2.1-T2V-1.3B/ + Reward-Forcing-T2V-1.3B/rewardforcing.pt",
            match=("rewardforcing", "reward_forcing"),
            source="YepicAI/Reward-Forcing@944b3ca (a fork of JaydenLu666/Reward-Forcing): configs/reward_forcing.yaml "
            "(denoising_step_list, warp_denoising_step, timestep_shift 5, num_frame_per_block 3, local_attn_size 9, "
            "sink_size 3), configs/default_config.yaml (context_noise 0), wan/modules/causal_model.py (EMA sink, "
            "compression_alpha 0.999)",
            differs="the anchor blends evicted frames into its sink (EMA, alpha 0.999); framecast's sink stays the "
            "first chunk",
        ),
        Recipe(
            "causal-forcing", "Causal Forcing, chunk-wise, Wan2.1-T2V-1.3B", 3,
            dict(_EVEN, **_FRESH, window_chunks=6, sink_chunks=0, clean_pass=True, context_noise=0.0, guidance=1.0),
            files="Wan2.1-T2V-1.3B/ + chunkwise/causal_forcing.pt",
            match=("causal_forcing",),
            source="thu-ml/Causal-Forcing@1fc7bbc: configs/causal_forcing_dmd_chunkwise.yaml (denoising_step_list, "
            "warp_denoising_step, timestep_shift 5, num_frame_per_block 3; no local_attn_size: 21 latent frames), "
            "configs/default_config.yaml (context_noise 0)",
            differs="the anchor stops at 21 latent frames, framecast rolls the window",
        ),
        Recipe(
            "causal-forcing-framewise", "Causal Forcing (and ++), frame-wise, Wan2.1-T2V-1.3B", 1,
            dict(_EVEN, **_FRESH, window_chunks=20, sink_chunks=0, clean_pass=True, context_noise=0.0, guidance=1.0),
            files="Wan2.1-T2V-1.3B/ + framewise/causal_forcing.pt (--steps 2 / 1: causal-forcing++/"
            "framewise-2step.pt / framewise-1step.pt)",
            match=("causal_forcing_framewise",),
            source="thu-ml/Causal-Forcing@1fc7bbc: configs/causal_forcing_dmd_framewise.yaml (num_frame_per_block 1, "
            "1000/750/500/250 warped at shift 5), configs/causal_forcing_dmd_framewise_2step.yaml (1000/500) and "
            "_1step.yaml (1000): the even grid at 2 and 1 steps",
            differs="Causal Forcing++ runs its first chunk with 4 steps (denoising_step_list_first_chunk); framecast "
            "runs every chunk with `steps`",
        ),
        Recipe(
            "krea-14b", "Krea Realtime 14B, Wan2.1-T2V-14B", 3,
            dict(_FRESH, steps=4, shift=1.0, timesteps=(1000.0, 937.0, 833.0, 625.0), window_chunks=1, sink_chunks=0,
                 clean_pass=True, context_noise=0.0, guidance=1.0),
            dit="wan-14b",
            files="Wan2.1-T2V-14B/ + krea-realtime-video-14b.safetensors",
            match=("krea",),
            source="krea-ai/realtime-video@acf4b7b: configs/self_forcing_server_14b.yaml (denoising_step_list "
            "1000/937/833/625/0, warp_denoising_step false, num_frame_per_block 3), release_server.py "
            "(kv_cache_num_frames 3: the context is 3 latent frames, recomputed from clean latents each block)",
            differs="the anchor's 3 context frames are the first latent frame and the last two, recomputed every "
            "block; framecast keeps the last chunk (3 frames) in its ring",
        ),
    )
}  # fmt: skip


def recipe(name: str) -> Recipe:
    """A recipe by name; an unknown name is a one-line error that lists the known ones."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def _norm(text: str) -> str:
    return re.sub(r"[-\s]+", "_", text.lower())


def from_checkpoint(checkpoint: str | Path) -> Recipe | None:
    """The recipe a checkpoint's file name identifies (else its folder's name with it), or None. Causal Forcing
    names its variants by folder: `framewise/causal_forcing.pt` is frame-wise, `chunkwise/...` chunk-wise."""
    p = Path(checkpoint)
    name, whole = _norm(p.name), _norm(f"{p.parent.name}/{p.name}")
    found = _matching(name) or _matching(whole)
    if found and found[0].name == "causal-forcing" and "framewise" in whole:
        return RECIPES["causal-forcing-framewise"]
    return found[0] if found else None


def _matching(text: str) -> list[Recipe]:
    return [r for r in RECIPES.values() if any(m in text for m in r.match)]


def from_folder(folder: str | Path) -> Recipe | None:
    """The recipe a Wan folder names in its DiT config.json (`"_framecast_recipe": "longlive"`), or None."""
    for cfg in (Path(folder) / "config.json", Path(folder) / "transformer" / "config.json"):
        if cfg.is_file():
            name = read_json(cfg, "DiT config").get(HINT_KEY)
            if name is not None:
                if not isinstance(name, str):
                    raise ModelLoadError(f"{cfg}: {HINT_KEY} must be a recipe name, got {name!r}")
                return recipe(name)
    return None


def choose_recipe(model: str | Path, checkpoint: str | Path | None, name: str | None) -> Recipe | None:
    """`name` when given, else what the folder or the checkpoint identifies, else None (the folder's settings)."""
    if name is not None:
        return recipe(name)
    found = from_folder(model) if Path(model).is_dir() else None
    if found is None and checkpoint is not None:
        found = from_checkpoint(checkpoint)
    return found


def recipe_wan_options(chosen: Recipe | None, wan: WanOptions | None) -> WanOptions | None:
    """The Wan folder options under a recipe: its latent frames per chunk (the rest as given)."""
    if chosen is None:
        return wan
    return dataclasses.replace(wan or WanOptions(), chunk_frames=chosen.chunk_frames)


def apply_recipe(chosen: Recipe, base: StreamConfig, chunk_frames: int) -> StreamConfig:
    """`base` under the recipe, for a DiT with `chunk_frames` latent frames per chunk (it must be the recipe's)."""
    if chunk_frames != chosen.chunk_frames:
        raise InputError(
            f"recipe {chosen.name!r} runs {chosen.chunk_frames} latent frame(s) per chunk; this model's DiT runs "
            f"{chunk_frames}"
        )
    return chosen.stream_config(base)


def describe(r: Recipe) -> str:
    """One recipe in two lines: its schedule and cache, and what it expects on disk."""
    s = r.stream_config()
    steps = f"timesteps {'/'.join(f'{t:g}' for t in s.timesteps[: s.steps])}" if s.timesteps else f"{s.steps} steps"
    cache = f"{s.sink_chunks} sink + {s.window_chunks} window chunk(s)"
    clean = "t=0 pass writes the cache" if s.clean_pass else "last step's keys cached"
    clean += ", KV re-cache on a prompt switch" if s.recache else ""
    return (
        f"{r.name:<25}{r.title}\n{'':<25}{steps}, shift {s.shift:g}, {s.sampler} sampler, {r.chunk_frames} latent "
        f"frame(s)/chunk, {cache}, {clean}\n{'':<25}on disk: {r.files}"
    )


def format_models(builtin: str) -> str:
    """`framecast models`: the built-in model, the DiT presets and the recipes."""
    from framecast.models.config import PRESETS

    lines = [f"built-in model: {builtin}", f"DiT presets (--random-weights, framecast plan): {', '.join(PRESETS)}"]
    lines += ["", "recipes (--recipe NAME; chosen from a checkpoint's file name when it identifies one):"]
    lines += [describe(r) for r in RECIPES.values()]
    return "\n".join(lines)
