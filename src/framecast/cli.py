"""Command line: thin commands over the library. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from framecast.errors import FramecastError, InputError


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
    p.add_argument("--model", default="tiny", help="built-in model name or a local model folder (default: tiny)")
    p.add_argument("--random-weights", action="store_true", help="use the named preset with untrained random weights")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="framecast", description="Real-time streaming video diffusion.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt")
    g.add_argument("-o", "--output", default="out.mp4", help="output .mp4 path (default: out.mp4)")
    g.add_argument("--seconds", type=float, default=4.0, help="duration in seconds (default: 4)")
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
    _model_args(g)
    b = sub.add_parser("bench", help="measure speed of a model on this machine")
    b.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default: 5)")
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    _model_args(b)
    return ap


def _generate(a: argparse.Namespace) -> None:
    from tqdm import tqdm

    from framecast.io.video import VideoWriter, check_output_path
    from framecast.pipeline import Pipeline

    check_output_path(Path(a.output))  # before the model loads: a bad path costs nothing
    if not a.seconds > 0:
        raise InputError(f"--seconds must be positive, got {a.seconds}")
    changes = [_prompt_at(x) for x in a.prompt_at]
    pipe = Pipeline.load(a.model, device=a.device, random_weights=a.random_weights)
    fps = a.fps or pipe.config.fps
    if not fps > 0:
        raise InputError(f"--fps must be positive, got {fps}")
    overrides = {"batch_steps": not a.sequential, **({"steps": a.steps} if a.steps is not None else {})}
    pipe.stream_config(**overrides)  # validate before any file is opened
    total = max(1, round(a.seconds * fps))
    schedule = [(round(s * fps), p) for s, p in changes]
    height, width = pipe.frame_size
    with VideoWriter(a.output, fps, width, height) as out, tqdm(total=total, unit="frame", desc="generate") as bar:
        for frame in pipe.frames(a.prompt, total, a.seed, schedule, **overrides):
            out.write(frame)
            bar.update(1)
    print(f"wrote {total} frames ({width}x{height}, {fps:g} fps) to {a.output}", file=sys.stderr)


def _bench(a: argparse.Namespace) -> None:
    from framecast.bench import format_table, run_bench

    if a.json is not None and not a.json.parent.resolve().is_dir():
        raise InputError(f"cannot write {a.json}: folder {a.json.parent} does not exist")
    result = run_bench(
        model=a.model, random_weights=a.random_weights, device=a.device, seconds=a.seconds, steps=a.steps
    )
    print(format_table(result))
    if a.json is not None:
        a.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"generate": _generate, "bench": _bench}[args.command](args)
    except FramecastError as e:
        print(f"framecast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("framecast: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
