"""The viewer eval of a model with the old `framecast eval` figures beside it: run, JSON and the printed table.

`run_viewer_eval(pipe, viewer_settings, eval_settings)` streams the viewer cases through the model
(`viewer.run_viewer`) and, unless `eval_settings` is None, runs the old suite (`suite.run_eval`: held-out
adherence on 2 s clips after the first chunk, temporal, drift and prompt switches) so both stand side by side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from framecast.evaluation.suite import EvalResult, EvalSettings, Progress, run_eval
from framecast.evaluation.viewer import OnClip, ViewerCase, ViewerResult, ViewerSettings, run_viewer
from framecast.pipeline import Pipeline

# figure -> (label, goal, old suite's (group, key) or None); a goal below 1.5 is a floor, else a ceiling
FIGURES: tuple[tuple[str, str, float | None, tuple[str, str] | None], ...] = (
    ("exact", "frames with exactly the prompted objects", 0.95, None),
    ("exact_first", "  in the first 1 s", None, None),
    ("exact_last", "  in the last 1 s", None, None),
    ("extra", "frames with an extra object", None, None),
    ("missing", "frames missing a prompted object", None, None),
    ("ghost", "frames with a ghost", None, None),
    ("fringe", "frames with an off-color fringe", None, None),
    ("speck", "frames with a stray speck", None, None),
    ("clean", "clean frames (exact, nothing else)", None, None),
    ("exact_clips", "clips exact in 95% of frames", None, None),
    ("background_clips", "background right (clips)", 0.95, None),
    ("background", "background right (frames)", None, None),
    ("color", "color (frames)", 0.95, ("adherence", "color")),
    ("shape", "shape (frames)", 0.9, ("adherence", "shape")),
    ("motion", "motion (1 s windows)", 0.9, ("adherence", "motion")),
    ("step_inside", "object step inside chunks (px)", None, None),
    ("step_seam", "object step across seams (px)", None, None),
    ("step_ratio", "seam / inside: object steps", 1.5, None),
    ("change_ratio", "seam / inside: frame change", 1.5, ("temporal", "seam_ratio")),
)
GROUP_COLUMNS = ("exact", "ghost", "fringe", "background_clips", "color", "shape", "motion", "step_ratio", "clips")


@dataclass
class ViewerEvalResult:
    viewer: ViewerResult
    old: EvalResult | None = None
    wording_gap: dict[str, float] = field(default_factory=dict)  # canonical - paraphrase, in points

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (old figures as `framecast eval --json` writes them)."""
        return {"viewer": asdict(self.viewer), "wording_gap": self.wording_gap,
                "old": None if self.old is None else self.old.to_json()}


def wording_gap(v: ViewerResult) -> dict[str, float]:
    """Per figure with a goal, canonical minus paraphrase in points (empty unless both wordings ran)."""
    w = v.by_wording
    if set(w) != {"canonical", "paraphrase"}:
        return {}
    keys = [k for k, _, goal, _ in FIGURES if goal is not None and goal <= 1.0]
    return {k: 100 * (w["canonical"][k] - w["paraphrase"][k]) for k in keys}


def run_viewer_eval(
    pipe: Pipeline,
    vs: ViewerSettings,
    old: EvalSettings | None,
    progress: Progress = lambda _: None,
    on_clip: OnClip | None = None,
) -> ViewerEvalResult:
    """The viewer eval of `pipe` (and the old suite unless `old` is None), streams from the first frame."""
    config = pipe.stream_config(**vs.stream)

    def generate(case: ViewerCase, n: int) -> np.ndarray:
        return pipe.generate(case.prompt, n, seed=case.seed, config=config)

    v = run_viewer(generate, vs, pipe.config.fps, pipe.frames_per_chunk, pipe.frame_size, progress, on_clip)
    v.settings["stream_config"] = asdict(config)
    return ViewerEvalResult(v, None if old is None else run_eval(pipe, old, progress), wording_gap(v))


def _old(r: EvalResult | None, where: tuple[str, str] | None) -> str:
    if r is None or where is None:
        return "-"
    value = getattr(r, where[0]).get(where[1])
    return "-" if value is None else f"{value:.3f}"


def _goal(goal: float | None) -> str:
    return "" if goal is None else (f">= {goal:g}" if goal <= 1.0 else f"<= {goal:g}")


def _main_table(r: ViewerEvalResult) -> list[str]:
    w = r.viewer.by_wording
    names = [n for n in ("canonical", "paraphrase") if n in w]
    head = f"{'figure':<40} {'viewer':>8} " + " ".join(f"{n:>10}" for n in names) + f" {'old eval':>9} {'goal':>8}"
    lines = [head, "-" * len(head)]
    for key, label, goal, where in FIGURES:
        cols = " ".join(f"{w[n][key]:>10.3f}" for n in names)
        lines.append(f"{label:<40} {r.viewer.overall[key]:>8.3f} {cols} {_old(r.old, where):>9} {_goal(goal):>8}")
    if r.wording_gap:
        worst = max(r.wording_gap, key=lambda k: abs(r.wording_gap[k]))
        label = f"largest wording gap, points ({worst})"
        lines.append(f"{label:<40} {r.wording_gap[worst]:>8.1f}{'<= 5':>{len(head) - 49}}")
    return lines


def _old_only(r: EvalResult | None) -> list[str]:
    if r is None:
        return []
    d, s = r.drift, r.switch
    drift = f"drift: {d['drop_points']:.1f} points lost in {d['seconds']:g} s (goal <= 5)"
    within = s["within_1s"] * s["switches"]
    mean = "never" if s["mean_s"] is None or not np.isfinite(s["mean_s"]) else f"mean {s['mean_s']:.2f} s"
    switch = f"prompt switches: {within:.0f} of {s['switches']:.0f} within 1 s, {mean}, slowest {s['max_s']:.2f} s"
    return ["", "old eval, unchanged: " + drift + "; " + switch]


def _group_table(title: str, groups: dict[str, dict[str, float]]) -> list[str]:
    head = f"{title:<22}" + " ".join(f"{c:>16}" for c in GROUP_COLUMNS)
    rows = [f"{name:<22}" + " ".join(f"{g[c]:>16.3f}" for c in GROUP_COLUMNS) for name, g in groups.items()]
    return ["", head, "-" * len(head), *rows]


def format_viewer_table(r: ViewerEvalResult) -> str:
    """The viewer figures (overall and per wording) beside the old eval's, then per shape, motion and objects."""
    v = r.viewer
    s = v.settings
    intro = (f"viewer eval: {s['cases']} clips of {s['seconds']:g} s from the first frame "
             f"({s['seeds']} seeds, wordings {', '.join(s['wordings'])})")
    lines = [intro, "", *_main_table(r), *_old_only(r.old)]
    groups_ = (("by shape", v.by_shape), ("by motion", v.by_motion), ("by objects", v.by_objects),
               ("by background", v.by_background), ("by wording", v.by_wording))
    for title, groups in groups_:
        lines += _group_table(title, groups)
    return "\n".join(lines)
