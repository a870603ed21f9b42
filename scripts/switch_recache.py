"""Prompt switches with KV re-cache against in-flight reconditioning, on a model (default: the built-in `tiny`).

For each setting, the eval suite's four held-out switch pairs (`evaluation.suite.SWITCHES`) with `--seeds` seeds
each: a stream runs 2 s under the first prompt, `set_prompt` switches it, and it runs 3 s more. Figures:

* latency: stream seconds from the switch until 3 frames in a row show the new color and shape (the suite's
  `switch_latency`, as `framecast eval` reports it); within 1 s, mean, slowest;
* after: from 1 s after the switch to the end, the share of frames showing the new color, the new shape, both,
  and the share still showing the old color;
* wall: milliseconds from `set_prompt` until the stream emits the first frame of the first chunk admitted after
  it (the stream's own compute: drain, re-cache and refill with re-cache), median over the switches.

    python scripts/switch_recache.py --seeds 6 --json switch_recache.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np

from framecast.evaluation.scoring import frame_hits
from framecast.evaluation.suite import SWITCHES, switch_latency
from framecast.pipeline import Pipeline
from framecast.world import prompt_for

SETTINGS = {  # name -> StreamConfig fields (`same`: a diagnostic, the re-cache runs under the OLD prompt)
    "neither": dict(switch_passes=0, recache=False),
    "in-flight (switch_passes 4)": dict(switch_passes=4, recache=False),
    "re-cache": dict(switch_passes=0, recache=True),
    "re-cache + in-flight": dict(switch_passes=4, recache=True),
    "re-cache under the old prompt": dict(switch_passes=0, recache=True, same=True),
}
BEFORE, AFTER, SETTLE = 2.0, 3.0, 1.0  # seconds


@dataclass
class Switch:
    latency: float
    after: np.ndarray  # (3,) new color, new shape, both
    old_color: float
    wall_ms: float


def one_switch(pipe: Pipeline, fields: dict, a: tuple, b: tuple, seed: int) -> Switch:
    fps, fpc = pipe.config.fps, pipe.frames_per_chunk
    at, total = round(BEFORE * fps), round((BEFORE + AFTER) * fps)
    fields = dict(fields)
    same = fields.pop("same", False)
    stream = pipe.stream(prompt_for(*a), seed, **fields)
    frames: list[np.ndarray] = []
    t0, first, wall = 0.0, 0, float("nan")
    for n, frame in enumerate(stream):  # as `Pipeline.frames(prompt_at=...)`, so as `framecast eval`
        if n == at:
            t0, first = time.perf_counter(), stream.state.next_chunk  # the first chunk admitted after it
            stream.set_prompt(prompt_for(*b))
            if same:  # only what the re-cache changes besides the prompt: the drain, the clean context
                stream.state.recache.pending = pipe.family.conditioner(prompt_for(*a))
        if n == first * fpc and n > at:
            wall = time.perf_counter() - t0
        frames.append(frame)
        if n + 1 == total:
            break
    video = np.stack(frames)
    tail = video[at + round(SETTLE * fps) :]
    hits = frame_hits(tail, b[0], b[1])
    return Switch(
        switch_latency(video, at, b[0], b[1], fps),
        np.array([hits[:, 0].mean(), hits[:, 1].mean(), hits.all(1).mean()]),
        float(frame_hits(tail, a[0], a[1])[:, 0].mean()),
        1000.0 * wall,
    )


def figures(runs: list[Switch]) -> dict[str, float]:
    lat = np.array([r.latency for r in runs])
    after = np.mean([r.after for r in runs], 0)
    finite = lat[np.isfinite(lat)]
    return {
        "switches": len(runs),
        "within_1s": float((lat <= 1.0).mean()),
        "latency_mean_s": float(finite.mean()) if len(finite) else float("inf"),
        "latency_max_s": float(lat.max()),
        "after_color": float(after[0]),
        "after_shape": float(after[1]),
        "after_both": float(after[2]),
        "after_old_color": float(np.mean([r.old_color for r in runs])),
        "wall_ms_median": float(np.median([r.wall_ms for r in runs])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seeds", type=int, default=6, help="streams per switch pair (seed 10 k + i, as the suite)")
    ap.add_argument("--batch-steps", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--settings", default=None, help="comma-separated indices into SETTINGS (default: all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    pipe = Pipeline.load(args.model)
    out = {}
    chosen = list(SETTINGS.items())
    if args.settings:
        chosen = [chosen[int(i)] for i in args.settings.split(",")]
    for name, fields in chosen:
        runs = [
            one_switch(pipe, dict(fields, batch_steps=args.batch_steps), a, b, 10 * k + i)
            for k in range(args.seeds)
            for i, (a, b) in enumerate(SWITCHES)
        ]
        out[name] = figures(runs)
        f = out[name]
        print(
            f"{name:<28} within 1 s {f['within_1s']:.2f}, mean {f['latency_mean_s']:.2f} s, slowest "
            f"{f['latency_max_s']:.2f} s | after: color {f['after_color']:.2f} shape {f['after_shape']:.2f} both "
            f"{f['after_both']:.2f} old color {f['after_old_color']:.2f} | wall {f['wall_ms_median']:.0f} ms",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "batch_steps": args.batch_steps, "figures": out}, fh, indent=2)


if __name__ == "__main__":
    main()
