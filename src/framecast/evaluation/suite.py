"""`framecast eval`: the quality figures of a model on the procedural world, as one `EvalResult`.

* Adherence on held-out (color, shape, motion) triples that training never saw, one clip per triple and
  seed, with the canonical prompt and with a paraphrased caption.
* Temporal consistency: mean frame-to-frame change inside chunks and across chunk seams (flicker), next to
  the same figure for the world's own rendered clips.
* Drift: share of frames showing the prompted color and shape in the first and the last window of a long stream.
* Prompt-switch latency: stream time from a `set_prompt` until the detector sees the new color and shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from framecast.evaluation.scoring import ClipScore, frame_hits, score_clip, seam_flicker
from framecast.pipeline import Pipeline
from framecast.stream.config import StreamConfig
from framecast.world import HELDOUT, caption, prompt_for, render, sample_scene

SWITCHES = (
    (("red", "circle", "right"), ("blue", "square", "right")),
    (("yellow", "star", "still"), ("purple", "triangle", "still")),
    (("green", "square", "up"), ("orange", "circle", "up")),
    (("white", "triangle", "bounce"), ("red", "star", "bounce")),
)
DRIFT_PROMPTS = (("orange", "circle", "right"), ("blue", "star", "bounce"))


@dataclass
class EvalSettings:
    clip_seconds: float = 2.0
    seeds: int = 2
    drift_seconds: float = 300.0
    drift_window: float = 10.0
    switch_before: float = 2.0
    switch_after: float = 3.0
    switch_seeds: int = 1  # streams per switch pair (seed 10 k + i for the k-th of pair i)
    stream: dict[str, Any] = field(default_factory=dict)  # StreamConfig overrides (steps, guidance, ...)
    triples: int | None = None  # evaluate only the first N held-out triples (None: all 20)


@dataclass
class EvalResult:
    adherence: dict[str, float] = field(default_factory=dict)
    by_shape: dict[str, float] = field(default_factory=dict)  # adherence's shape score per prompted shape
    temporal: dict[str, float] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    switch: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: an infinite latency (the switch never showed) becomes null."""
        finite = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v  # noqa: E731
        return {k: {n: finite(v) for n, v in d.items()} for k, d in asdict(self).items()}


Progress = Callable[[str], None]


def _config(pipe: Pipeline, s: EvalSettings) -> StreamConfig:
    """The model's stream settings with the eval's overrides, checked once."""
    return pipe.stream_config(**s.stream)


def _prompts(triple: tuple[str, str, str], seed: int) -> str:
    """Canonical prompt for seed 0, a paraphrased caption of a held-out scene otherwise."""
    color, shape, motion = triple
    if seed == 0:
        return prompt_for(color, shape, motion)
    scene = sample_scene(seed, "heldout", num_objects=1, color=color, shape=shape, motion=motion)
    return caption(scene, seed)


def adherence(
    pipe: Pipeline, s: EvalSettings, progress: Progress
) -> tuple[dict[str, float], dict[str, float], list[np.ndarray]]:
    """Accuracy of color, shape and motion on held-out triples, the shape score per prompted shape, the clips."""
    n = max(8, round(s.clip_seconds * pipe.config.fps))
    scores: list[ClipScore] = []
    shapes: dict[str, list[float]] = {}  # prompted shape -> the shape scores of its clips
    clips = []
    for triple in sorted(HELDOUT)[: s.triples]:
        for seed in range(s.seeds):
            progress(f"adherence {triple} seed {seed}")
            frames = pipe.generate(_prompts(triple, seed), n, seed=seed, config=_config(pipe, s))
            clips.append(frames)
            scores.append(score_clip(frames[pipe.frames_per_chunk :], *triple))
            shapes.setdefault(triple[1], []).append(scores[-1].shape)
    mean = lambda key: float(np.mean([getattr(c, key) for c in scores]))  # noqa: E731
    figures = {"color": mean("color"), "shape": mean("shape"), "motion": mean("motion"), "clips": len(scores)}
    return figures, {k: float(np.mean(v)) for k, v in sorted(shapes.items())}, clips


def temporal(pipe: Pipeline, clips: list[np.ndarray]) -> dict[str, float]:
    """Frame-to-frame change inside chunks and across seams, generated and rendered (reference)."""
    fpc = pipe.frames_per_chunk
    gen = np.array([seam_flicker(c, fpc) for c in clips])
    h, w = pipe.frame_size
    ref = np.array([seam_flicker(render(sample_scene(i, height=h, width=w), 0, len(clips[0])), fpc) for i in range(8)])
    return {
        "change_inside": float(gen[:, 0].mean()),
        "change_seam": float(gen[:, 1].mean()),
        "seam_ratio": float(gen[:, 1].mean() / max(gen[:, 0].mean(), 1e-6)),
        "world_change": float(ref.mean()),
    }


def drift(pipe: Pipeline, s: EvalSettings, progress: Progress) -> dict[str, float]:
    """Hit rates of color and shape in the first and the last `drift_window` seconds of long streams."""
    fps = pipe.config.fps
    total, win = round(s.drift_seconds * fps), round(s.drift_window * fps)
    first, last = [], []
    for i, (color, shape, motion) in enumerate(DRIFT_PROMPTS):
        progress(f"drift stream {i + 1}/{len(DRIFT_PROMPTS)} ({s.drift_seconds:g} s)")
        head, tail = [], []
        frames = pipe.frames(prompt_for(color, shape, motion), total, seed=i, config=_config(pipe, s))
        for n, frame in enumerate(frames):
            if n < win:
                head.append(frame)
            elif n >= total - win:
                tail.append(frame)
        first.append(frame_hits(np.stack(head), color, shape).mean(0))
        last.append(frame_hits(np.stack(tail), color, shape).mean(0))
    f, la = np.mean(first, 0), np.mean(last, 0)
    return {
        "first_color": float(f[0]),
        "first_shape": float(f[1]),
        "last_color": float(la[0]),
        "last_shape": float(la[1]),
        "drop_points": float(100 * (f.mean() - la.mean())),
        "seconds": s.drift_seconds,
    }


def switch_latency(frames: np.ndarray, at: int, color: str, shape: str, fps: float, stable: int = 3) -> float:
    """Seconds from frame `at` until `stable` consecutive frames show the new color and shape (inf: never)."""
    hits = np.asarray(frame_hits(frames[at:], color, shape).all(axis=1), dtype=bool)  # (T - at,)
    for i in range(len(hits) - stable + 1):
        if hits[i : i + stable].all():
            return i / fps
    return float("inf")


def switches(pipe: Pipeline, s: EvalSettings, progress: Progress) -> dict[str, float]:
    fps = pipe.config.fps
    at, total = round(s.switch_before * fps), round((s.switch_before + s.switch_after) * fps)
    lat = []
    runs = [(k, i, pair) for k in range(s.switch_seeds) for i, pair in enumerate(SWITCHES)]
    for n, (k, i, (a, b)) in enumerate(runs):
        progress(f"prompt switch {n + 1}/{len(runs)}")
        seed = 10 * k + i
        change = [(at, prompt_for(*b))]
        frames = pipe.generate(prompt_for(*a), total, seed=seed, prompt_at=change, config=_config(pipe, s))
        lat.append(switch_latency(frames, at, b[0], b[1], fps))
    finite = [x for x in lat if np.isfinite(x)]
    return {
        "mean_s": float(np.mean(finite)) if finite else float("inf"),
        "max_s": float(max(lat)),
        "within_1s": float(np.mean([x <= 1.0 for x in lat])),
        "switches": len(lat),
    }


def task_count(s: EvalSettings) -> int:
    """How many times `run_eval` reports progress: adherence clips, drift streams and prompt switches."""
    return len(sorted(HELDOUT)[: s.triples]) * s.seeds + len(DRIFT_PROMPTS) + len(SWITCHES) * s.switch_seeds


def run_eval(pipe: Pipeline, s: EvalSettings | None = None, progress: Progress = lambda _: None) -> EvalResult:
    s = s or EvalSettings()
    adh, by_shape, clips = adherence(pipe, s, progress)
    settings = {**asdict(s), "stream_config": asdict(_config(pipe, s))}  # what the streams ran with
    return EvalResult(
        adh, by_shape, temporal(pipe, clips), drift(pipe, s, progress), switches(pipe, s, progress), settings
    )


def format_table(r: EvalResult) -> str:
    rows = [("held-out adherence", k, v) for k, v in r.adherence.items()]
    rows += [("by shape", k, v) for k, v in r.by_shape.items()]
    rows += [("temporal", k, v) for k, v in r.temporal.items()]
    rows += [("drift", k, v) for k, v in r.drift.items()]
    rows += [("prompt switch", k, v) for k, v in r.switch.items()]
    lines = [f"{'group':<20} {'figure':<16} {'value':>10}", "-" * 48]
    lines += [f"{g:<20} {k:<16} {v:>10.3f}" for g, k, v in rows]
    return "\n".join(lines)
