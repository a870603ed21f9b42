"""The built-in model's quality goals, measured as `framecast eval` and `framecast eval-v2v` measure them.

Slow (about 2 minutes on a 2-core CPU): opt in with `pytest -m slow`. No timing is asserted, only what the
world's detector reads from the frames; the figures behind the bounds are in docs/model-card.md and docs/v2v.md.
"""

from __future__ import annotations

import pytest

from framecast.evaluation.suite import EvalSettings, adherence, switches
from framecast.evaluation.v2v import V2VEvalSettings, run_v2v_eval
from framecast.pipeline import WEIGHTS_DIR, Pipeline

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (WEIGHTS_DIR / "tiny" / "framecast.json").is_file(), reason="no built-in weights"),
]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.load("tiny")


def test_text_to_video_follows_held_out_prompts(pipe: Pipeline) -> None:
    figures, by_shape, _ = adherence(pipe, EvalSettings(), lambda _: None)  # 40 clips (measured 1.0 / 0.9 / 0.925)
    assert figures["color"] >= 0.9 and figures["shape"] >= 0.8 and figures["motion"] >= 0.8
    assert min(by_shape.values()) >= 0.7  # no shape left behind (measured 0.9 each)


def test_prompt_switches_show_within_a_second(pipe: Pipeline) -> None:
    result = switches(pipe, EvalSettings(switch_seeds=3), lambda _: None)  # 12 switches (measured all, max 0.92 s)
    assert result["switches"] == 12 and result["within_1s"] >= 11 / 12


def test_video_to_video_follows_the_input_and_the_prompt(pipe: Pipeline) -> None:
    settings = V2VEvalSettings(live_seconds=0.0, motion=pipe.motion_config())  # 10 clips, as `eval-v2v` runs them
    result = run_v2v_eval(pipe, settings, lambda _: None)  # measured 0.998, 1.0, 1.0
    assert result.follow["position_corr"] >= 0.9
    assert result.prompt["color"] >= 0.8 and result.prompt["shape"] >= 0.8


@pytest.mark.xfail(
    strict=True,
    reason="issue 21: the shipped model does not meet the viewer eval's goals yet "
    "(docs/model-card.md, 'As a viewer sees it'); a model that does turns this into a failure to update",
)
def test_a_viewer_sees_the_prompted_objects_in_both_wordings(pipe: Pipeline) -> None:
    """The viewer eval's goals (issue 21) on 10 s streams of the 20 held-out triples, 2 seeds, both wordings
    (about 9 minutes on a 2-core CPU)."""
    from framecast.evaluation.viewer import ViewerSettings
    from framecast.evaluation.viewer_report import run_viewer_eval

    r = run_viewer_eval(pipe, ViewerSettings(), None)
    o = r.viewer.overall
    assert o["exact"] >= 0.95 and o["background_clips"] >= 0.95
    assert o["color"] >= 0.95 and o["shape"] >= 0.9 and o["motion"] >= 0.9
    assert o["step_ratio"] <= 1.5 and o["change_ratio"] <= 1.5
    assert all(gap <= 5.0 for gap in r.wording_gap.values()), r.wording_gap
