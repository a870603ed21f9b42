"""`framecast eval --viewer`: the figures a viewer sees, frame by frame over whole streams from the first frame.

Cases: every held-out (color, shape, motion) triple x `seeds` x wordings. The scene of triple j and seed k
(`case_scene`) has that triple as its first object, a solid background when j + k is even and a gradient
otherwise; odd seeds add a second (training) object when `pairs` is on. Its background is named in both
wordings: in the canonical caption
("a red circle moving left on a blue background") and in a held-out paraphrase
(`framecast.world.paraphrase`, words training never saw). Both wordings stream with the same seed, so they
differ in the words only. Each clip is read by `viewer_score.read_clip`; the figures are means over clips
of per-clip frame shares (color and shape of the held-out object, motion of it per window of
`window_seconds`; exact also in the first and the last window), grouped overall, per wording, and per
shape, motion, number of objects and background kind (each also per wording).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from framecast.errors import InputError
from framecast.evaluation.viewer_score import ClipReading, read_clip
from framecast.world import HELDOUT, Scene, canonical_caption, sample_scene
from framecast.world.paraphrase import paraphrase

WORDINGS = ("canonical", "paraphrase")
FLAG_RATES = ("exact", "extra", "missing", "ghost", "fringe", "speck", "clean", "background")
# per clip: frame shares of the flags, of the held-out object's color and shape, its motion per window, and
# exact in the first and the last window (errors that grow)
RATES: tuple[str, ...] = (*FLAG_RATES, "color", "shape", "motion", "exact_first", "exact_last")


@dataclass
class ViewerSettings:
    seconds: float = 10.0
    seeds: int = 2
    wordings: tuple[str, ...] = WORDINGS
    triples: int | None = None  # only the first N held-out triples (None: all 20)
    pairs: bool = True  # odd seeds prompt two objects
    window_seconds: float = 1.0  # motion is classified per window of this length
    stream: dict[str, Any] = field(default_factory=dict)  # StreamConfig overrides (steps, guidance, ...)


@dataclass(frozen=True)
class ViewerCase:
    """One clip to generate: `scene` (what the prompt describes) in one wording, streamed with `seed`."""

    scene: Scene
    wording: str
    prompt: str
    seed: int


@dataclass
class ClipFigures:
    """Per clip: the prompt and its frame shares (`RATES`), centroid steps and frame change (inside, seam)."""

    prompt: str
    wording: str
    triple: tuple[str, str, str]
    objects: int
    background: str  # "solid" or "gradient"
    rates: dict[str, float]
    steps: tuple[float, int, float, int]
    change: tuple[float, float]


@dataclass
class ViewerResult:
    overall: dict[str, float] = field(default_factory=dict)
    by_wording: dict[str, dict[str, float]] = field(default_factory=dict)
    by_shape: dict[str, dict[str, float]] = field(default_factory=dict)
    by_motion: dict[str, dict[str, float]] = field(default_factory=dict)
    by_objects: dict[str, dict[str, float]] = field(default_factory=dict)
    by_background: dict[str, dict[str, float]] = field(default_factory=dict)
    clips: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


Generate = Callable[[ViewerCase, int], np.ndarray]  # (case, frames) -> uint8 (T, H, W, 3)
Progress = Callable[[str], None]
OnClip = Callable[[int, ViewerCase, np.ndarray], None]


def case_scene(triple: tuple[str, str, str], index: int, seed: int, objects: int, size: tuple[int, int]) -> Scene:
    """The scene of held-out triple number `index` and `seed`: a solid background when index + seed is even,
    else a gradient (the first scene seed 1000 a + 20 seed + index, a = 0, 1, ..., that has one)."""
    kind = "solid" if (index + seed) % 2 == 0 else "gradient"
    color, shape, motion = triple
    for attempt in range(100):
        scene_seed = 1000 * attempt + 20 * seed + index
        scene = sample_scene(scene_seed, "heldout", objects, *size, color=color, shape=shape, motion=motion)
        if scene.background.kind == kind:
            return scene
    raise InputError(f"no {kind} background found for {triple}")  # 100 tries at 1 in 2: never


def viewer_cases(s: ViewerSettings, height: int = 64, width: int = 64) -> list[ViewerCase]:
    """The eval's clips: held-out triples x seeds x wordings (see the module docstring)."""
    cases = []
    for index, triple in enumerate(sorted(HELDOUT)[: s.triples]):
        for seed in range(s.seeds):
            scene = case_scene(triple, index, seed, 2 if s.pairs and seed % 2 else 1, (height, width))
            words = {"canonical": canonical_caption(scene), "paraphrase": paraphrase(scene, seed)}
            cases += [ViewerCase(scene, w, words[w], seed) for w in s.wordings]
    return cases


def clip_figures(case: ViewerCase, r: ClipReading, window: int) -> ClipFigures:
    """Frame shares of a read clip; color, shape and motion are the held-out (first) object's; exact also in
    the first and the last `window` frames."""
    rates = {k: float(v.mean()) for k, v in r.flags.items()}
    exact = r.flags["exact"]
    rates |= {"exact_first": float(exact[:window].mean()), "exact_last": float(exact[-window:].mean())}
    rates |= {"color": float(r.color[0].mean()), "shape": float(r.shape[0].mean())}
    rates["motion"] = float(r.motion[0].mean()) if r.motion.shape[1] else 0.0
    scene = case.scene
    return ClipFigures(case.prompt, case.wording, clip_triple(case), len(scene.objects), scene.background.kind, rates,
                       r.steps, r.change)


def summarize(clips: list[ClipFigures]) -> dict[str, float]:
    """Means of the clips' rates, background per clip (right in at least half its frames), clips exact in 95%
    of frames, and the seam ratios of centroid steps and frame change."""
    out = {k: float(np.mean([c.rates[k] for c in clips])) for k in RATES}
    out["background_clips"] = float(np.mean([c.rates["background"] >= 0.5 for c in clips]))
    out["exact_clips"] = float(np.mean([c.rates["exact"] >= 0.95 for c in clips]))
    inside, n_in, seam, n_seam = (sum(c.steps[i] for c in clips) for i in range(4))
    out["step_inside"], out["step_seam"] = inside / max(n_in, 1), seam / max(n_seam, 1)
    out["step_ratio"] = out["step_seam"] / max(out["step_inside"], 1e-6)
    out["change_inside"] = float(np.mean([c.change[0] for c in clips]))
    out["change_seam"] = float(np.mean([c.change[1] for c in clips]))
    out["change_ratio"] = out["change_seam"] / max(out["change_inside"], 1e-6)
    out["clips"] = float(len(clips))
    return out


def _grouped(clips: list[ClipFigures], key: Callable[[ClipFigures], str]) -> dict[str, dict[str, float]]:
    """Figures per group; with several wordings also per group and wording ("circle", "circle, canonical", ...)."""
    groups: dict[str, list[ClipFigures]] = {}
    several = len({c.wording for c in clips}) > 1
    for c in clips:
        groups.setdefault(key(c), []).append(c)
        if several and key(c) != c.wording:
            groups.setdefault(f"{key(c)}, {c.wording}", []).append(c)
    return {k: summarize(v) for k, v in sorted(groups.items())}


def aggregate(clips: list[ClipFigures], settings: dict[str, Any]) -> ViewerResult:
    """The eval's figures from its clips: overall and per wording, shape, motion, number of objects, background."""
    return ViewerResult(
        overall=summarize(clips),
        by_wording=_grouped(clips, lambda c: c.wording),
        by_shape=_grouped(clips, lambda c: c.triple[1]),
        by_motion=_grouped(clips, lambda c: c.triple[2]),
        by_objects=_grouped(clips, lambda c: f"{c.objects} object{'s' if c.objects > 1 else ''}"),
        by_background=_grouped(clips, lambda c: c.background),
        clips=[asdict(c) for c in clips],
        settings=settings,
    )


def run_viewer(
    generate: Generate,
    s: ViewerSettings,
    fps: float,
    frames_per_chunk: int,
    size: tuple[int, int] = (64, 64),
    progress: Progress = lambda _: None,
    on_clip: OnClip | None = None,
) -> ViewerResult:
    """Generate every case's clip (`seconds` long from the first frame), read it frame by frame, aggregate."""
    n, window = max(2, round(s.seconds * fps)), max(2, round(s.window_seconds * fps))
    clips = []
    for i, case in enumerate(cases := viewer_cases(s, *size)):
        progress(f"viewer {case.wording} {'/'.join(clip_triple(case))} seed {case.seed}")
        frames = generate(case, n)
        if on_clip is not None:
            on_clip(i, case, frames)
        reading = read_clip(frames, case.scene.objects, case.scene.background, frames_per_chunk, window)
        clips.append(clip_figures(case, reading, window))
    settings = {**asdict(s), "fps": fps, "frames_per_chunk": frames_per_chunk, "cases": len(cases)}
    return aggregate(clips, settings)


def clip_triple(case: ViewerCase) -> tuple[str, str, str]:
    """The held-out (first) object's (color, shape, motion)."""
    o = case.scene.objects[0]
    return o.color, o.shape, o.motion
