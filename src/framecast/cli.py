"""Command line: thin commands over the library. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framecast.errors import FramecastError, InputError

if TYPE_CHECKING:
    import numpy as np

    from framecast.engine.live import Stream
    from framecast.evaluation.suite import EvalSettings
    from framecast.family.wan import WanOptions
    from framecast.pipeline import Pipeline
    from framecast.stream.config import StreamConfig
    from framecast.v2v import MotionConfig, SimilarityConfig, V2VConfig, VideoFileSource


def _prompt_at(text: str) -> tuple[float, str]:
    """Parse `SECONDS:PROMPT`."""
    seconds, sep, prompt = text.partition(":")
    try:
        at = float(seconds)
    except ValueError:
        at = -1.0
    if not sep or not prompt.strip() or not at >= 0:
        raise InputError(f"--prompt-at expects SECONDS:PROMPT with SECONDS >= 0, got {text!r}")
    return at, prompt


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="built-in model name or a local model folder (default: tiny)")
    p.add_argument("--random-weights", action="store_true", help="use the named preset with untrained random weights")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="a causal checkpoint file over the model folder's DiT (generator_ema/generator/state_dict/"
                        "model/bare weights, .pt or .safetensors; a LoRA in it is merged)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="the DiT's and the caches' dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="a published checkpoint's sampling setup (framecast models lists them; default: the one the "
                        "checkpoint's file name identifies, else the model's own settings)")
    _image_args(p.add_argument_group("diffusers image models (a --model folder with model_index.json)"))
    _wan_args(p.add_argument_group("Wan2.1 folders (docs/models.md)"))


def _image_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--size", default=None, metavar="WxH",
                   help="frame size: image models multiples of 8 (default: the UNet's), Wan2.1 folders multiples of "
                        "16 (default: 832x480)")
    g.add_argument("--t-index", default=None, metavar="I,J,..",
                   help="timesteps as StreamDiffusion's t-index list over a 50-step grid, e.g. 0,16,32,45 "
                        "(sets --steps; default: the folder scheduler's own timesteps)")
    g.add_argument("--cfg-type", default=None, choices=("full", "self", "initialize"),
                   help="with --guidance: a negative row per frame (full) or residual CFG (default: self)")
    g.add_argument("--delta", type=float, default=None, help="residual CFG's weight of the residual noise (1)")
    g.add_argument("--negative-prompt", default=None, help="the negative side of guidance (default: empty)")
    g.add_argument("--noise", default=None, choices=("fixed", "fresh"),
                   help="one noise per stream, reused for every frame (fixed, default) or new noise per frame")
    g.add_argument("--feedback", type=float, default=None,
                   help="video to video: weight of the last output latent blended into each input (0)")
    g.add_argument("--tiny-vae", default=None, metavar="DIR", help="an AutoencoderTiny (TAESD) folder to use")
    g.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="a LoRA .safetensors merged at load (repeatable; strength default 1)")
    g.add_argument("--scheduler", default=None, metavar="CLASS",
                   help="a diffusers scheduler class to run instead of the folder's, e.g. LCMScheduler (LCM LoRA)")


def _wan_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--chunk-frames", type=int, default=None, metavar="N",
                   help="latent frames per chunk (default: 3, or the recipe's)")
    g.add_argument("--tiny-decoder", default=None, metavar="FILE", help="a TAEHV file (taew2_1.pth) to decode with")


def _wan_options(a: argparse.Namespace, size: tuple[int, int] | None) -> WanOptions | None:
    """WanOptions from --size (height, width), --chunk-frames and --tiny-decoder; None when none is given."""
    from framecast.family.wan import WanOptions

    given = {"chunk_frames": getattr(a, "chunk_frames", None), "tiny_decoder": getattr(a, "tiny_decoder", None)}
    fields: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if size is not None:
        fields["height"], fields["width"] = size
    return WanOptions(**fields) if fields else None


def _image_settings(a: argparse.Namespace) -> dict[str, Any]:
    """ImageSettings fields set on the command line."""
    named: dict[str, Any] = {
        "cfg_type": a.cfg_type, "delta": a.delta, "negative_prompt": a.negative_prompt, "noise": a.noise,
        "feedback": a.feedback,
        "size": None if a.size is None else _size(a.size)[::-1],
        "t_index": None if a.t_index is None else _int_list(a.t_index, "--t-index"),
    }  # fmt: skip
    return {k: v for k, v in named.items() if v is not None}


def _lora(text: str) -> tuple[str, float]:
    """`FILE[:STRENGTH]` -> (file, strength)."""
    path, sep, strength = text.rpartition(":")
    if not sep or not path:
        return text, 1.0
    try:
        return path, float(strength)
    except ValueError:
        return text, 1.0  # a colon in the path itself


def _size(text: str) -> tuple[int, int]:
    """`WxH` -> (width, height)."""
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit()) or not (int(w) > 0 and int(h) > 0):
        raise InputError(f"--size expects WIDTHxHEIGHT in pixels, e.g. 512x512, got {text!r}")
    return int(w), int(h)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{flag} expects comma-separated integers, e.g. 0,16,32,45, got {text!r}") from None


def _load(a: argparse.Namespace) -> Pipeline:
    """The model the command line names (--model, --random-weights, --device, --checkpoint, --dtype)."""
    from framecast.family.wan import is_wan_folder
    from framecast.models.diffusers_image import is_image_folder
    from framecast.pipeline import Pipeline

    image = _image_settings(a) if hasattr(a, "tiny_vae") else {}
    tiny_vae, lora, scheduler = getattr(a, "tiny_vae", None), getattr(a, "lora", []), getattr(a, "scheduler", None)
    if is_image_folder(Path(_model(a))) and not a.random_weights:
        from framecast.family.image_settings import ImageSettings

        if a.checkpoint is not None or a.recipe is not None:
            raise InputError("--checkpoint and --recipe are for causal DiT folders, not image-model folders")
        loras = [_lora(text) for text in lora]
        settings = ImageSettings(**image)
        return Pipeline.load_image(
            _model(a), settings, tiny_vae, device=a.device, dtype=a.dtype, loras=loras, scheduler=scheduler
        )
    wan = None
    if is_wan_folder(_model(a)) and not a.random_weights:
        wan = _wan_options(a, image.pop("size", None))
    elif getattr(a, "chunk_frames", None) is not None or getattr(a, "tiny_decoder", None) is not None:
        raise InputError(f"--chunk-frames, --tiny-decoder: for Wan2.1 folders, not {_model(a)!r}")
    named = {"tiny_vae": tiny_vae, "lora": lora, "scheduler": scheduler}
    extras = [*image, *(k for k, v in named.items() if v)]
    if extras:
        flags = ", ".join("--" + k.replace("_", "-") for k in extras)
        raise InputError(f"{flags}: for diffusers image-model folders (model_index.json), not {_model(a)!r}")
    return Pipeline.load(
        _model(a), device=a.device, random_weights=a.random_weights, checkpoint=a.checkpoint, dtype=a.dtype,
        recipe=a.recipe, wan=wan,
    )


def _model(a: argparse.Namespace) -> str:
    """--model, or the built-in model (one model for text to video and video to video)."""
    return "tiny" if a.model is None else str(a.model)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="framecast", description="Real-time streaming video diffusion.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt")
    g.add_argument("-o", "--output", default="out.mp4", help="output .mp4 path (default: out.mp4)")
    g.add_argument("--seconds", type=float, default=None, help="duration in seconds (default: 4, or the whole --input)")
    g.add_argument("--fps", type=float, default=None, help="frames per second (default: the model's)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps per chunk, 1-4 (default: the model's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--prompt-at",
        action="append",
        default=[],
        metavar="SECONDS:PROMPT",
        help="switch to PROMPT at SECONDS (repeatable)",
    )
    g.add_argument("--sequential", action="store_true", help="one chunk at a time instead of the stream batch")
    _sampling_args(g)
    _v2v_args(g)
    _model_args(g)
    b = sub.add_parser("bench", help="measure speed of a model on this machine")
    b.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default: 5)")
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--guidance", type=float, default=None,
                   help="measure guided streams at this scale (image models: as --cfg-type says)")
    b.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    _model_args(b)
    _train_args(sub.add_parser("train", help="train the built-in model on the procedural world"))
    e = sub.add_parser("eval", help="quality figures of a model on the procedural world")
    e.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    e.add_argument("--steps", type=int, default=None, help="denoising steps per chunk, 1-4 (default: the model's)")
    e.add_argument("--seeds", type=int, default=2, help="clips per held-out combination (default: 2)")
    e.add_argument("--drift-seconds", type=float, default=300.0, help="length of the drift streams (default: 300)")
    e.add_argument("--switch-seeds", type=int, default=1,
                   help="streams per prompt-switch pair, each with its own seed (default: 1)")
    _eval_viewer_args(e)
    _sampling_args(e)
    _model_args(e)
    _eval_v2v_args(sub.add_parser("eval-v2v", help="video-to-video figures of a model on the procedural world"))
    _serve_args(sub.add_parser("serve", help="serve the browser UI and live streams"))
    _bench_serve_args(sub.add_parser("bench-serve", help="load-test the live server on loopback"))
    _replicas_args(sub.add_parser("replicas", help="serve N local replicas behind nginx on one port"))
    sub.add_parser("models", help="list the built-in model, the DiT presets and the sampling recipes")
    _plan_args(sub.add_parser("plan", help="memory of a model and its streams, and how many fit on a GPU"))
    return ap


def _sampling_args(p: argparse.ArgumentParser) -> None:
    model = "(default: the model's)"
    p.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale, 1 = off {model}")
    p.add_argument("--context-noise", type=float, default=None, help=f"noise of finished chunks in the cache {model}")
    p.add_argument("--switch-passes", type=int, default=None, metavar="N",
                   help=f"a prompt change also reaches chunks in flight with fewer than N passes, 0 = off {model}")
    p.add_argument("--sampler", choices=("euler", "renoise"), default=None,
                   help=f"step between noise levels: euler, or renoise (x0 noised afresh, as the distilled "
                        f"checkpoints sample) {model}")
    p.add_argument("--recache", action=argparse.BooleanOptionalAction, default=None,
                   help=f"on a prompt change, recompute the cached chunks' keys/values under the new prompt {model}")


def _sampling_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """StreamConfig fields set on the command line (--steps, --guidance, --context-noise, --switch-passes,
    --sampler, --recache)."""
    named = {
        "steps": a.steps,
        "guidance": a.guidance,
        "context_noise": a.context_noise,
        "switch_passes": a.switch_passes,
        "sampler": a.sampler,
        "recache": a.recache,
    }
    return {k: v for k, v in named.items() if v is not None}


def _v2v_args(g: argparse.ArgumentParser) -> None:
    g.add_argument("--input", type=Path, default=None, help="video to video: follow this video file (docs/v2v.md)")
    g.add_argument("--strength", type=float, default=None,
                   help="noise level of every input chunk in (0, 1]; turns the motion-aware controller off")
    g.add_argument("--motion-aware", action=argparse.BooleanOptionalAction, default=None,
                   help="strength from the input's motion (default: on unless --strength is given)")
    g.add_argument("--strength-range", default=None, metavar="LOW:HIGH",
                   help="bounds of the motion-aware strength (default: the model's; tiny 0.85:0.95)")
    g.add_argument("--skip-similar", action=argparse.BooleanOptionalAction, default=True,
                   help="nearly identical input chunks re-emit the last output instead of running the model")
    g.add_argument("--skip-threshold", type=float, default=None, metavar="D",
                   help="mean difference (pixels in [-1, 1]) under which an input chunk may skip (default: 0.01)")
    g.add_argument("--max-skips", type=int, default=None, help="most chunks in a row that skip (default: 2)")
    g.add_argument("--stochastic-skip", action="store_true",
                   help="skip with probability 1 - difference / threshold (StreamDiffusion's filter)")


def _v2v_config(a: argparse.Namespace, base: MotionConfig | None = None) -> V2VConfig:
    """The video-to-video settings of `generate` over the model's strengths `base`, checked."""
    from framecast.v2v import MotionConfig, V2VConfig

    if a.input is None:
        if a.strength is not None or a.motion_aware is not None or a.strength_range is not None:
            raise InputError("--strength, --motion-aware and --strength-range need --input")
        return V2VConfig()
    if a.strength is not None and a.motion_aware:
        raise InputError("--strength fixes the strength of every chunk; leave out --motion-aware or --strength")
    base = base or MotionConfig()
    low, high = base.low, base.high
    if a.strength_range is not None:
        low, high = _range(a.strength_range)
    motion = dataclasses.replace(
        base,
        enabled=a.strength is None and a.motion_aware is not False,
        low=low,
        high=high,
        fixed=base.fixed if a.strength is None else a.strength,
    )
    return V2VConfig(motion, _similarity(a))


def _similarity(a: argparse.Namespace) -> SimilarityConfig:
    from framecast.v2v import SimilarityConfig

    given = {"threshold": a.skip_threshold, "max_skips": a.max_skips}
    fields = {k: v for k, v in given.items() if v is not None}
    return SimilarityConfig(enabled=a.skip_similar, stochastic=a.stochastic_skip, **fields)


def _range(text: str, flag: str = "--strength-range") -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        return float(low), float(high)
    except ValueError:
        raise InputError(f"{flag} expects LOW:HIGH, e.g. 0.5:0.65, got {text!r}") from None


def _train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--out", type=Path, required=True, help="run folder; the model lands in OUT/model")
    t.add_argument("--ae-steps", type=int, default=2500, help="autoencoder steps (default: 2500)")
    t.add_argument("--decoder-steps", type=int, default=0,
                   help="decoder-only fine-tune after the autoencoder, encoder frozen (default: 0, none)")
    t.add_argument("--dit-steps", type=int, default=10000, help="DiT steps (default: 10000)")
    t.add_argument("--samples", type=int, default=8000, help="clips in the latent dataset (default: 8000)")
    t.add_argument("--batch", type=int, default=16, help="DiT batch size (default: 16)")
    t.add_argument("--recycle", type=float, default=0.0,
                   help="share of DiT samples whose clean context is the model's own estimate (default: 0)")
    t.add_argument("--rollout", type=float, default=0.0,
                   help="share of DiT samples from a stream's start whose first chunks the model draws (default: 0)")
    t.add_argument("--edit-samples", type=int, default=0,
                   help="edit pairs (a clip and the clip restyled) that teach video to video (default: 0, none)")
    t.add_argument("--edit-batch", type=int, default=4, help="edit pairs per DiT step besides --batch (default: 4)")
    t.add_argument("--edit-strength", default=None, metavar="LOW:HIGH",
                   help="video-to-video strengths the edit pairs start from, in (0, 1] (default: 0.5:0.95)")
    t.add_argument("--structure", action="store_true",
                   help="give the DiT a structure input (the encoded input frames, docs/v2v.md); a run that "
                        "resumes a DiT without one grows it")
    t.add_argument("--refiner", type=int, default=0, metavar="CHANNELS",
                   help="give the DiT a convolutional refiner at latent resolution this wide (a multiple of 8; "
                        "docs/v2v.md); a run that resumes a DiT without one grows it (default: 0, none)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--stop-after", choices=("autoencoder", "latents", "dit"), default="dit")
    t.add_argument("--fresh", action="store_true", help="ignore checkpoints in OUT and start over")


def _generate(a: argparse.Namespace) -> None:
    from framecast.io.video import check_output_path

    check_output_path(Path(a.output))  # before the model loads: a bad path costs nothing
    if a.seconds is not None and not a.seconds > 0:
        raise InputError(f"--seconds must be positive, got {a.seconds}")
    if a.fps is not None and not a.fps > 0:
        raise InputError(f"--fps must be positive, got {a.fps}")
    changes = [_prompt_at(x) for x in a.prompt_at]
    _v2v_config(a)  # checked before the model loads
    source = _open_input(a) if a.input is not None else None  # a bad input file costs nothing either
    from framecast.engine import parallel
    from framecast.pipeline import Pipeline

    env = parallel.torchrun_env()  # launched by torchrun: this process is one stage of the DiT (docs/parallel.md)
    if env is not None:
        a.device = parallel.init(env, a.device)
    pipe = _load(a)
    v2v = _v2v_config(a, pipe.motion_config())
    cfg = pipe.stream_config(batch_steps=not a.sequential, **_sampling_overrides(a))  # checked before any file opens
    write = _write
    if env is not None:
        pipe = Pipeline.from_family(parallel.staged(pipe.family, env, cfg), pipe.config)
        write = _write if env.rank == env.world - 1 else _drain  # the last stage decodes; the others' are blanks
    if source is None:
        fps = a.fps or pipe.config.fps
        total = max(1, round((a.seconds or 4.0) * fps))
        frames = pipe.frames(a.prompt, total, a.seed, [(round(s * fps), p) for s, p in changes], cfg)
        write(a.output, frames, fps, pipe.frame_size, total)
    else:
        fps = a.fps or source.fps or pipe.config.fps
        stream = pipe.video_stream(a.prompt, source, a.seed, v2v, cfg)
        write(a.output, _switching(stream, [(round(s * fps), p) for s, p in changes]), fps, pipe.frame_size, None)
        print(_v2v_report(stream, cfg, pipe.frames_per_chunk), file=sys.stderr)
    parallel.shutdown()


def _drain(output: str, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int], total: int | None) -> None:
    """A pipeline stage before the last: step through the stream with the others, writing nothing."""
    for _ in frames:
        pass


def _open_input(a: argparse.Namespace) -> VideoFileSource:
    from framecast.v2v import VideoFileSource

    source = VideoFileSource(a.input)
    if a.seconds is not None:
        source.max_frames = max(1, round(a.seconds * (source.fps or 1.0)))
    return source


def _switching(stream: Stream, changes: list[tuple[int, str]]) -> Iterator[np.ndarray]:
    """The stream's frames, switching prompts at the given frame indices."""
    for n, frame in enumerate(stream):
        while changes and changes[0][0] <= n:
            stream.set_prompt(changes.pop(0)[1])
        yield frame


def _write(output: str, frames: Iterable[np.ndarray], fps: float, size: tuple[int, int], total: int | None) -> None:
    from tqdm import tqdm

    from framecast.io.video import VideoWriter

    height, width = size
    with VideoWriter(output, fps, width, height) as out, tqdm(total=total, unit="frame", desc="generate") as bar:
        for frame in frames:
            out.write(frame)
            bar.update(1)
    print(f"wrote {out.frames_written} frames ({width}x{height}, {fps:g} fps) to {output}", file=sys.stderr)


def _v2v_report(stream: Stream, cfg: StreamConfig, frames_per_chunk: int) -> str:
    from framecast.v2v.feed import content_lag_bound, latency_bound

    assert stream.feed is not None
    st, sim = stream.feed.stats, stream.feed.cfg.similarity
    skips = sim.max_skips if sim.enabled else 0
    return (
        f"input: {st.frames_in} frames in {st.chunks_in} chunks, {st.model_chunks} through the model, "
        f"{st.skipped} similar ones re-emitted, {st.dropped} dropped; lag: output frame i came out with input "
        f"frame i + {st.max_latency_frames} read at most (bound {latency_bound(cfg, frames_per_chunk)}), "
        f"showed input frame i - {st.max_content_lag_frames} at most "
        f"(bound {content_lag_bound(cfg, frames_per_chunk, skips)}); last strength {st.strength:g}"
    )


def _bench(a: argparse.Namespace) -> None:
    from framecast.bench import format_table, run_bench

    if a.json is not None and not a.json.parent.resolve().is_dir():
        raise InputError(f"cannot write {a.json}: folder {a.json.parent} does not exist")
    pipe = _load(a)
    if a.guidance is not None:  # the model's stream settings, guided
        pipe.config = dataclasses.replace(pipe.config, stream=pipe.stream_config(guidance=a.guidance))
    model, seconds = _model(a), a.seconds
    result = run_bench(model=model, random_weights=a.random_weights, seconds=seconds, steps=a.steps, pipeline=pipe)
    print(format_table(result))
    if a.json is not None:
        a.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _train(a: argparse.Namespace) -> None:
    import logging

    from framecast.train.run import run_config, train_all

    for name in ("ae_steps", "dit_steps", "samples", "batch"):
        if getattr(a, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    for name in ("recycle", "rollout"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise InputError(f"--{name} must be between 0 and 1, got {getattr(a, name)}")
    if a.edit_samples < 0 or a.edit_batch < 1:
        raise InputError(f"--edit-samples must be 0 or more, --edit-batch positive: {a.edit_samples}, {a.edit_batch}")
    strengths = None if a.edit_strength is None else _range(a.edit_strength, "--edit-strength")
    if strengths is not None and not 0.0 < strengths[0] <= strengths[1] <= 1.0:
        raise InputError(f"--edit-strength needs 0 < LOW <= HIGH <= 1, got {a.edit_strength}")
    try:
        a.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the run folder {a.out}: {err.strerror}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if a.decoder_steps < 0:
        raise InputError(f"--decoder-steps must be 0 or more, got {a.decoder_steps}")
    cfg = run_config(
        a.ae_steps, a.dit_steps, a.samples, a.batch, a.seed, a.threads, a.decoder_steps, a.recycle,
        a.edit_samples, a.edit_batch, a.rollout, strengths, a.structure, a.refiner,
    )
    folder = train_all(a.out, cfg, resume_run=not a.fresh, stop_after=a.stop_after)
    print(f"framecast: {a.stop_after} stage done in {folder}", file=sys.stderr)


def _eval_viewer_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("--viewer", action="store_true",
                   help="also score what a viewer sees, frame by frame over whole streams, in canonical and "
                        "paraphrased prompts, beside the old figures (docs/world.md)")
    e.add_argument("--seconds", type=float, default=10.0, help="length of the viewer eval's streams (default: 10)")
    e.add_argument("--wording", choices=("both", "canonical", "paraphrase"), default="both",
                   help="prompt wordings of the viewer eval (default: both)")
    e.add_argument("--triples", type=int, default=None, help="only the first N held-out triples (default: all 20)")
    e.add_argument("--old", action=argparse.BooleanOptionalAction, default=True,
                   help="with --viewer, also run the old figures: adherence, temporal, drift, switches (default: on)")
    e.add_argument("--sheet", type=Path, default=None, metavar="PNG",
                   help="with --viewer, write a contact sheet of 4 clips (a frame every 0.5 s) to this PNG")


def _check_eval_args(a: argparse.Namespace) -> None:
    for path in (a.json, a.sheet):
        if path is not None and not path.parent.resolve().is_dir():
            raise InputError(f"cannot write {path}: folder {path.parent} does not exist")
    if a.seeds < 1 or a.switch_seeds < 1 or not a.drift_seconds >= 20:
        raise InputError("--seeds and --switch-seeds must be positive and --drift-seconds at least 20")
    if not a.seconds >= 1 or (a.triples is not None and a.triples < 1):
        raise InputError("--seconds must be at least 1 and --triples positive")
    if not a.viewer and (a.sheet is not None or not a.old):
        raise InputError("--sheet and --no-old need --viewer")


def _eval(a: argparse.Namespace) -> None:
    from tqdm import tqdm

    from framecast.evaluation.suite import EvalSettings, format_table, run_eval

    _check_eval_args(a)
    pipe = _load(a)
    settings = EvalSettings(seeds=a.seeds, drift_seconds=a.drift_seconds, switch_seeds=a.switch_seeds,
                            stream=_sampling_overrides(a), triples=a.triples)
    pipe.stream_config(**settings.stream)  # validate before the long run
    if a.viewer:
        _eval_viewer(a, pipe, settings)
        return
    with tqdm(desc="eval", unit="task") as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        result = run_eval(pipe, settings, progress)
    print(format_table(result))
    if a.json is not None:
        a.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _eval_viewer(a: argparse.Namespace, pipe: Pipeline, old: EvalSettings) -> None:
    """`framecast eval --viewer`: the viewer eval, the old figures beside it, a table, JSON and a contact sheet."""
    from tqdm import tqdm

    from framecast.evaluation.sheet import ClipKeeper, contact_sheet, spread, write_png
    from framecast.evaluation.suite import task_count
    from framecast.evaluation.viewer import ViewerSettings, viewer_cases
    from framecast.evaluation.viewer_report import format_viewer_table, run_viewer_eval

    wordings = ("canonical", "paraphrase") if a.wording == "both" else (a.wording,)
    vs = ViewerSettings(a.seconds, a.seeds, wordings, a.triples, stream=old.stream)
    cases = len(viewer_cases(vs))
    keeper = ClipKeeper(set(spread(cases, 4)) if a.sheet is not None else set())
    with tqdm(desc="eval --viewer", unit="task", total=cases + (task_count(old) if a.old else 0)) as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        result = run_viewer_eval(pipe, vs, old if a.old else None, progress, keeper)
    print(format_viewer_table(result))
    if a.json is not None:
        a.json.write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
    if a.sheet is not None:
        every = max(1, round(pipe.config.fps / 2))
        clips = [keeper.clips[i] for i in sorted(keeper.clips)]
        write_png(a.sheet, contact_sheet(clips, every, -(-len(clips[0]) // every)))
        rows = "; ".join(keeper.prompts[i] for i in sorted(keeper.clips))
        print(f"wrote a contact sheet to {a.sheet}: a frame every {every} frames; rows: {rows}", file=sys.stderr)


def _eval_v2v_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    e.add_argument("--clips", type=int, default=10, help="world clips, one moving object each (default: 10)")
    e.add_argument("--seconds", type=float, default=3.0, help="length of each clip (default: 3)")
    e.add_argument("--strength", type=float, default=None, help="fixed strength (default: motion-aware)")
    e.add_argument("--steps", type=int, default=None, help="denoising steps per chunk, 1-4 (default: the model's)")
    e.add_argument("--skip-similar", action=argparse.BooleanOptionalAction, default=True,
                   help="let similar input chunks skip the model (default: on)")
    e.add_argument("--live-seconds", type=float, default=4.0, help="length of the real-time run, 0 for none")
    e.add_argument("--seed", type=int, default=0)
    _sampling_args(e)
    _model_args(e)


def _eval_v2v(a: argparse.Namespace) -> None:
    from framecast.evaluation.v2v import V2VEvalSettings, format_table, run_v2v_eval

    if a.json is not None and not a.json.parent.resolve().is_dir():
        raise InputError(f"cannot write {a.json}: folder {a.json.parent} does not exist")
    if a.clips < 1 or not a.seconds > 0 or not a.live_seconds >= 0:
        raise InputError("--clips and --seconds must be positive, --live-seconds 0 or more")
    settings = V2VEvalSettings(
        a.clips, a.seconds, a.strength, a.steps, a.skip_similar, a.live_seconds, a.seed, _sampling_overrides(a)
    )
    settings.v2v()  # validate the strength before the model loads
    pipe = _load(a)
    pipe.stream_config(**settings.overrides())
    settings.motion = pipe.motion_config()
    result = run_v2v_eval(pipe, settings, lambda m: print(f"eval-v2v: {m}", file=sys.stderr))
    print(format_table(result))
    if a.json is not None:
        a.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _serve_args(s: argparse.ArgumentParser) -> None:
    import os

    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    s.add_argument("--max-sessions", type=int, default=8, help="most connected sessions (default: 8)")
    s.add_argument("--fps", type=float, default=None, help="default target fps of a session (default: the model's)")
    s.add_argument("--max-fps", type=float, default=60.0, help="highest fps a client may ask for (default: 60)")
    s.add_argument("--no-admission", action="store_true", help="admit sessions whatever the predicted load")
    s.add_argument("--allow-origin", action="append", default=None, metavar="ORIGIN",
                   help="also accept pages of this origin (http://HOST:PORT) and requests to its host; repeatable "
                        "(default: loopback names only)")
    s.add_argument("--token", default=os.environ.get("FRAMECAST_TOKEN"),
                   help="access token for /ws, /upload and /rtc/offer (viewers open /?token=TOKEN); required with a "
                        "non-loopback --host (default: $FRAMECAST_TOKEN, else none)")
    _model_args(s)


def _serve(a: argparse.Namespace) -> None:
    from framecast.server import ServerSettings
    from framecast.server.run import serve

    settings = ServerSettings(host=a.host, port=a.port, max_sessions=a.max_sessions, fps=a.fps, max_fps=a.max_fps,
                              admission=not a.no_admission, allow_origins=tuple(a.allow_origin or ()), token=a.token)
    pipe = _load(a)
    query = "/?token=..." if a.token else ""
    print(f"framecast: serving on http://{a.host}:{a.port}{query} (Ctrl-C to stop)", file=sys.stderr)
    serve(pipe, settings)


def _bench_serve_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--sessions", type=int, default=4, help="concurrent sessions of the second phase (default: 4)")
    b.add_argument("--seconds", type=float, default=20.0, help="measured time of each phase (default: 20)")
    b.add_argument("--fps", type=float, default=None, help="target fps of paced sessions (default: the model's)")
    b.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    b.add_argument("--mode", choices=("paced", "max", "both"), default="both",
                   help="paced: sessions at --fps with admission; max: as fast as the engine goes (default: both)")
    b.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    _model_args(b)


def _bench_serve(a: argparse.Namespace) -> None:
    from framecast.server import ServerSettings  # noqa: F401  (checks the server extra first)
    from framecast.server.bench import format_table, run_serve_bench

    if not 1 <= a.sessions <= 64 or not 1 <= a.seconds <= 600:
        raise InputError("--sessions must be in 1..64 and --seconds in 1..600")
    if a.json is not None and not a.json.parent.resolve().is_dir():
        raise InputError(f"cannot write {a.json}: folder {a.json.parent} does not exist")
    pipe = _load(a)
    pipe.stream_config(**({"steps": a.steps} if a.steps is not None else {}))  # validate
    modes = ("paced", "max") if a.mode == "both" else (a.mode,)
    result = run_serve_bench(pipe, a.sessions, a.seconds, a.fps, a.steps, modes, _model(a), a.random_weights)
    print(format_table(result))
    if a.json is not None:
        a.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def _models(a: argparse.Namespace) -> None:
    from framecast.pipeline import BUILTIN
    from framecast.recipes import format_models

    print(format_models(", ".join(BUILTIN)))


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="a DiT preset (tiny, wan-1.3b, wan-14b) or a model folder")
    p.add_argument("--size", default=None, metavar="WxH", help="frame size in pixels (default: the model's)")
    p.add_argument("--frames-per-block", type=int, default=None, metavar="N",
                   help="latent frames per chunk (default: the recipe's, else the model's)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"),
                   help="the DiT's and the caches' dtype (default: bfloat16)")
    p.add_argument("--gpu-memory", default="80GB", help="memory to fit streams in, e.g. 80GB, 141GiB (default: 80GB)")
    p.add_argument("--recipe", default=None, metavar="NAME", help="a sampling recipe (framecast models lists them)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the recipe's/model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (>1 adds a row and a cache)")
    p.add_argument("--sequential", action="store_true", help="one chunk at a time instead of the stream batch")


def _plan(a: argparse.Namespace) -> None:
    from framecast.pipeline import parse_dtype
    from framecast.planner import format_plan, parse_memory, plan
    from framecast.planner_model import plan_spec, resolve

    memory = parse_memory(a.gpu_memory)
    if a.frames_per_block is not None and a.frames_per_block < 1:
        raise InputError(f"--frames-per-block must be positive, got {a.frames_per_block}")
    fields = {"steps": a.steps, "guidance": a.guidance, "batch_steps": False if a.sequential else None}
    parts, recipe = resolve(a.model, a.recipe)
    dtype = parse_dtype(a.dtype)
    assert dtype is not None
    size = None if a.size is None else _size(a.size)
    chosen = {k: v for k, v in fields.items() if v is not None}
    spec = plan_spec(parts, dtype, size, a.frames_per_block, recipe, **chosen)
    d = spec.dit
    title = (
        f"{a.model}{f' ({recipe.name})' if recipe else ''}: {d.latent_width * 8}x{d.latent_height * 8} px, "
        f"{d.chunk_frames} latent frame(s)/chunk, {a.dtype}, {spec.stream.steps} steps, "
        f"{'stream batch' if spec.stream.batch_steps else 'sequential'}, {spec.stream.rows} row(s)/pass"
    )
    print(format_plan(plan(spec), memory, title))


def _replicas_args(r: argparse.ArgumentParser) -> None:
    _serve_args(r)  # --host and --port are nginx's; every other option goes to each replica
    r.add_argument("--replicas", type=int, default=2, help="number of `framecast serve` processes (default: 2)")
    r.add_argument("--first-port", type=int, default=None,
                   help="loopback port of the first replica, the next ones follow (default: --port + 1)")
    r.add_argument("--devices", default=None, metavar="DEV,DEV,..",
                   help="one torch device per replica, e.g. cuda:0,cuda:1 (default: --device for all)")
    r.add_argument("--print-config", action="store_true",
                   help="print nginx's framecast configuration (an http-level include) and exit")
    r.add_argument("--backends", default=None, metavar="HOST:PORT,..",
                   help="with --print-config: replicas already running elsewhere (default: the local ones)")


def _serve_argv(a: argparse.Namespace) -> list[str]:
    """The `framecast serve` options of `a` that differ from serve's defaults (host, port, device excepted)."""
    s = argparse.ArgumentParser()
    _serve_args(s)
    argv: list[str] = []
    for act in s._actions:
        value = getattr(a, act.dest, act.default)
        if not act.option_strings or act.dest in ("help", "host", "port", "device") or value == act.default:
            continue
        flag = act.option_strings[-1]
        if act.nargs == 0:  # store_true
            argv.append(flag)
        else:
            argv += [x for v in (value if isinstance(value, list) else [value]) for x in (flag, str(v))]
    return argv


def _backend(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"--backends expects HOST:PORT,HOST:PORT,..., got {text!r}")
    return host.strip("[]"), int(port)


def _replicas(a: argparse.Namespace) -> None:
    from framecast.server import ServerSettings  # noqa: F401  (checks the server extra first)
    from framecast.server.nginx import render_http
    from framecast.server.replicas import LOOPBACK, run_replicas

    first = a.port + 1 if a.first_port is None else a.first_port
    if a.print_config:
        backends = [(LOOPBACK, first + i) for i in range(a.replicas)]
        if a.backends:
            backends = [_backend(b) for b in a.backends.split(",")]
        print(render_http(backends, a.host, a.port, "/var/log/nginx/framecast.access.log"), end="")
        return
    devices = [a.device] * a.replicas if a.devices is None else a.devices.split(",")
    run_replicas(a.replicas, a.host, a.port, first, devices, _serve_argv(a))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {
            "generate": _generate,
            "bench": _bench,
            "train": _train,
            "eval": _eval,
            "eval-v2v": _eval_v2v,
            "serve": _serve,
            "bench-serve": _bench_serve,
            "replicas": _replicas,
            "models": _models,
            "plan": _plan,
        }[args.command](args)
    except FramecastError as e:
        print(f"framecast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("framecast: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
