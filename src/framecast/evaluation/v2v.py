"""`framecast eval-v2v`: how well video to video follows its input and its prompt, on the procedural world.

Each clip is a world scene with one moving object (left, right, up, down, bounce). It runs through
`Pipeline.video_to_video` with a prompt that names another color and another shape (same motion and
background), and the world's detector reads both clips:

* follow:  correlation of the input and output object centres over the clip (x and y pooled, centred, wrapped
           tracks unwrapped): 1 when the output object moves exactly as the input one.
* prompt:  color and shape of the output object against the prompt (majority over the clip, and per frame).
* lag:     what the stream measured (input frames read beyond output frame i when it came out; how much
           older the input frame it shows is) with their bounds, and the shift between the input and output
           tracks that correlates best, measured from the pixels.
* by_shape: the prompt's shape score for the clips that ask for each shape (the hard ones stand out).
* reference: the prompt figures of the ideal output (the input scene restyled as the prompt asks) after a
           round trip through the model's autoencoder: the most a denoiser could score through that decoder.
* live:    one clip pushed in real time (the model's fps) into a `LiveSource`: frames out per second, input
           frames dropped, wall-clock latency from an input chunk's arrival to its output.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from framecast.evaluation.scoring import frame_hits, score_clip
from framecast.io.frames import frames_to_uint8, uint8_to_frames
from framecast.pipeline import Pipeline
from framecast.stream.config import StreamConfig
from framecast.v2v import LiveSource, MotionConfig, SimilarityConfig, V2VConfig
from framecast.v2v.feed import content_lag_bound, latency_bound
from framecast.world import COLORS, SHAPES, allowed_on, prompt_for, render, sample_scene, track
from framecast.world.scene import Scene

MOVING = ("left", "right", "up", "down", "bounce")
MIN_FOUND = 0.5  # a track found in fewer frames counts as not following (correlation 0)


@dataclass
class V2VEvalSettings:
    clips: int = 10
    seconds: float = 3.0
    strength: float | None = None  # a fixed strength; None: the motion-aware controller
    steps: int | None = None
    skip_similar: bool = True
    live_seconds: float = 4.0  # 0: no live run
    seed: int = 0
    stream: dict[str, Any] = field(default_factory=dict)  # more StreamConfig overrides (guidance, ...)
    motion: MotionConfig = field(default_factory=MotionConfig)  # the controller (`Pipeline.motion_config`)

    def v2v(self) -> V2VConfig:
        motion = self.motion if self.strength is None else replace(self.motion, enabled=False, fixed=self.strength)
        return V2VConfig(motion, SimilarityConfig(enabled=self.skip_similar))

    def overrides(self) -> dict[str, Any]:
        """The StreamConfig fields these settings set."""
        return {**self.stream, **({} if self.steps is None else {"steps": self.steps})}

    def config(self, pipe: Pipeline) -> StreamConfig:
        """The model's stream settings with these overrides, checked once."""
        return pipe.stream_config(**self.overrides())


@dataclass
class V2VEvalResult:
    follow: dict[str, float] = field(default_factory=dict)
    prompt: dict[str, float] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    by_shape: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    live: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    clips: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: NaN and infinities become null."""
        return _finite(asdict(self))


Progress = Callable[[str], None]


@dataclass(frozen=True)
class Case:
    """One clip: the input scene and what the prompt asks for instead."""

    scene: Scene
    color: str  # prompted
    shape: str
    prompt: str

    @property
    def source(self) -> tuple[str, str, str]:
        o = self.scene.objects[0]
        return o.color, o.shape, o.motion

    @property
    def target(self) -> Scene:
        """The ideal output's scene: the input's, its object in the prompt's color and shape."""
        o = self.scene.objects[0]
        return replace(self.scene, objects=(replace(o, color=self.color, shape=self.shape),))


def cases(n: int, seed: int, height: int, width: int) -> list[Case]:
    """n one-object scenes, every moving motion in turn; each prompt changes the color and the shape."""
    out = []
    for i in range(n):
        scene = sample_scene(seed + i, "train", 1, height, width, motion=MOVING[i % len(MOVING)])
        obj, bg = scene.objects[0], scene.background
        colors = [c for c in COLORS if c != obj.color and allowed_on(c, bg.top, bg.bottom)]
        color = colors[(seed + i) % len(colors)]
        shape = SHAPES[(SHAPES.index(obj.shape) + 1 + i % (len(SHAPES) - 1)) % len(SHAPES)]
        out.append(Case(scene, color, shape, prompt_for(color, shape, obj.motion, bg)))
    return out


def unwrap(track_xy: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """A track (T, 2) with NaN gaps filled linearly and wraps around the frame undone; None if found in
    fewer than `MIN_FOUND` of the frames."""
    ok = np.isfinite(track_xy).all(axis=1)
    if ok.mean() < MIN_FOUND:
        return None
    t, out = np.arange(len(track_xy)), np.empty_like(track_xy)
    for axis, size in ((0, width), (1, height)):
        filled = np.interp(t, t[ok], track_xy[ok, axis])
        out[:, axis] = np.unwrap(filled, period=size)
    return out


def position_correlation(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Pooled correlation of two tracks (T, 2): x and y centred separately, then one correlation over both
    (so an axis the object does not move along adds nothing). 0 when a track is missing or flat."""
    if a is None or b is None:
        return 0.0
    da, db = a - a.mean(axis=0), b - b.mean(axis=0)
    denom = float(np.sqrt((da * da).sum() * (db * db).sum()))
    return float((da * db).sum() / denom) if denom > 1e-9 else 0.0


def best_shift(a: np.ndarray | None, b: np.ndarray | None, max_shift: int) -> tuple[int, float]:
    """The shift d in [-max_shift, max_shift] for which output b[i] correlates best with input a[i - d]."""
    if a is None or b is None:
        return 0, 0.0
    n, scores = len(a), {}
    for d in range(-max_shift, max_shift + 1):
        lo, hi = max(0, d), min(n, n + d)
        if hi - lo >= n // 2:
            scores[d] = position_correlation(a[lo - d : hi - d], b[lo:hi])
    d = max(scores, key=lambda k: (scores[k], -abs(k)))
    return d, scores[d]


def run_clip(pipe: Pipeline, case: Case, s: V2VEvalSettings, frames: int) -> dict[str, Any]:
    """One clip through video to video, read back by the detector."""
    clip = render(case.scene, 0, frames)
    stream = pipe.video_stream(case.prompt, clip, s.seed, s.v2v(), s.config(pipe))
    out = np.stack(list(stream))
    assert stream.feed is not None
    h, w = pipe.frame_size
    color, shape, motion = case.source
    out_track = track(out)  # the main object of the output, whatever its color
    a, b = unwrap(track(clip, color=color), h, w), unwrap(out_track, h, w)
    per = pipe.frames_per_chunk
    score = score_clip(out[per:], case.color, case.shape, motion)
    hits = frame_hits(out[per:], case.color, case.shape).mean(axis=0)
    shift, shift_corr = best_shift(a, b, 2 * per)
    st = stream.feed.stats
    return {
        "input": f"{color} {shape} {motion}",
        "prompt": case.prompt,
        "prompt_shape": case.shape,
        "corr": position_correlation(a, b),
        "found": float(np.isfinite(out_track).all(axis=1).mean()),
        "color": float(score.color),
        "shape": float(score.shape),
        "motion": float(score.motion),
        "color_frames": float(hits[0]),
        "shape_frames": float(hits[1]),
        "shift": float(shift),
        "shift_corr": shift_corr,
        "latency_frames": float(st.max_latency_frames),
        "content_lag_frames": float(st.max_content_lag_frames),
        "skipped": float(st.skipped),
        "strength": st.mean_strength,
        **{f"ref_{k}": v for k, v in reference_scores(pipe, case, frames).items()},
    }


@torch.inference_mode()
def reference_scores(pipe: Pipeline, case: Case, frames: int) -> dict[str, float]:
    """Prompt figures of the ideal output (`case.target`) encoded and decoded by the pipeline's autoencoder."""
    ideal = render(case.target, 0, frames)  # (T, H, W, 3)
    ae = pipe.autoencoder
    decoded = frames_to_uint8(ae.decode(ae.encode(uint8_to_frames(ideal, pipe.device))))  # (T, H, W, 3)
    color, shape, motion = case.color, case.shape, case.source[2]
    score = score_clip(decoded[pipe.frames_per_chunk :], color, shape, motion)
    return {"color": float(score.color), "shape": float(score.shape), "motion": float(score.motion)}


def live_run(pipe: Pipeline, s: V2VEvalSettings) -> dict[str, float]:
    """A clip pushed at the model's frame rate into a live source while the stream follows it."""
    fps, per = pipe.config.fps, pipe.frames_per_chunk
    h, w = pipe.frame_size
    case = cases(1, s.seed + 1000, h, w)[0]
    clip = render(case.scene, 0, max(per, round(s.live_seconds * fps)))
    source = LiveSource(capacity=2 * per, fps=fps)
    stream = pipe.video_stream(case.prompt, source, s.seed, s.v2v(), s.config(pipe))

    def produce() -> None:
        t0 = time.monotonic()
        for i, frame in enumerate(clip):
            time.sleep(max(0.0, t0 + i / fps - time.monotonic()))
            source.push(frame)
        source.end()

    producer = threading.Thread(target=produce, name="v2v-live-input", daemon=True)
    t0 = time.monotonic()
    producer.start()
    frames = sum(1 for _ in stream)
    wall = time.monotonic() - t0
    producer.join()
    assert stream.feed is not None
    st = stream.feed.stats
    return {
        "input_fps": fps,
        "output_fps": frames / wall,
        "frames_pushed": float(source.pushed),
        "frames_out": float(frames),
        "dropped": float(source.dropped),
        "dropped_share": source.dropped / max(source.pushed, 1),
        "latency_s_mean": st.mean_latency_s,
        "latency_s_max": st.max_latency_s,
        "buffer_frames": float(source.capacity),
    }


def run_v2v_eval(
    pipe: Pipeline, s: V2VEvalSettings | None = None, progress: Progress = lambda _: None
) -> V2VEvalResult:
    """Every figure of the module docstring; `clips` keeps the per-clip numbers."""
    s = s or V2VEvalSettings()
    h, w = pipe.frame_size
    frames = max(2 * pipe.frames_per_chunk, round(s.seconds * pipe.config.fps))
    rows = []
    for i, case in enumerate(cases(s.clips, s.seed, h, w)):
        progress(f"clip {i + 1}/{s.clips}: {case.prompt}")
        rows.append(run_clip(pipe, case, s, frames))
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    cfg, per = s.config(pipe), pipe.frames_per_chunk
    skips = s.v2v().similarity.max_skips if s.skip_similar else 0
    result = V2VEvalResult(
        follow={"position_corr": mean("corr"), "min_corr": min(r["corr"] for r in rows), "found": mean("found")},
        prompt={k: mean(k) for k in ("color", "shape", "motion", "color_frames", "shape_frames")},
        by_shape={k: float(np.mean(v)) for k, v in _by_shape(rows).items()},
        reference={k: mean(f"ref_{k}") for k in ("color", "shape", "motion")},
        lag={
            "latency_frames_max": max(r["latency_frames"] for r in rows),
            "latency_bound": float(latency_bound(cfg, per)),
            "content_lag_frames_max": max(r["content_lag_frames"] for r in rows),
            "content_lag_bound": float(content_lag_bound(cfg, per, skips)),
            "best_shift_frames": mean("shift"),
            "skipped_chunks": mean("skipped"),
            "mean_strength": mean("strength"),
        },
        settings={**asdict(s), "frames": frames, "fps": pipe.config.fps},
        clips=rows,
    )
    if s.live_seconds > 0:
        progress("live run")
        result.live = live_run(pipe, s)
    return result


def _by_shape(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Shape scores of the clips grouped by the shape their prompt asks for, in the world's order."""
    out: dict[str, list[float]] = {}
    for shape in SHAPES:
        scores = [r["shape"] for r in rows if r["prompt_shape"] == shape]
        if scores:
            out[shape] = scores
    return out


def format_table(r: V2VEvalResult) -> str:
    groups = (
        ("follow", r.follow), ("prompt", r.prompt), ("by_shape", r.by_shape), ("lag", r.lag),
        ("reference", r.reference), ("live", r.live),
    )  # fmt: skip
    rows = [(g, k, v) for g, d in groups for k, v in d.items()]
    lines = [f"{'group':<10} {'figure':<24} {'value':>10}", "-" * 46]
    lines += [f"{g:<10} {k:<24} {v:>10.3f}" for g, k, v in rows]
    return "\n".join(lines)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
