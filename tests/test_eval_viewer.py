"""`framecast eval --viewer`: the frame reader counts objects and reads backgrounds of the world's own renders,
the eval scores the world as a perfect model, and it sees what a bad model does (copies, ghosts, stutter)."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.evaluation.sheet import ClipKeeper, contact_sheet, spread, write_png
from framecast.evaluation.viewer import ViewerCase, ViewerSettings, run_viewer, viewer_cases
from framecast.evaluation.viewer_report import format_viewer_table, run_viewer_eval
from framecast.world import render, sample_scene
from framecast.world.readback import read_frame


def _rendered(case: ViewerCase, n: int) -> np.ndarray:
    return render(case.scene, 0, n)


def test_reader_counts_objects_and_reads_backgrounds_of_world_renders() -> None:
    rng = np.random.default_rng(7)
    right, clean, total, kinds, pairs = 0, 0, 400, set(), 0
    for i in range(total):
        scene = sample_scene(int(rng.integers(2**31)), "heldout" if i % 4 == 3 else "train")
        r = read_frame(render(scene, int(rng.integers(1000)), 1)[0])
        right += len(r.objects) == len(scene.objects) and r.background == scene.background
        clean += r.ghosts == r.specks == r.fringe == 0
        kinds.add(scene.background.kind)
        pairs += len(scene.objects) == 2
    assert right >= 0.99 * total and clean >= 0.99 * total
    assert kinds == {"solid", "gradient"} and 100 < pairs < 300  # two-object scenes and gradients were read


def test_reader_at_other_frame_sizes() -> None:
    for size in (32, 128):
        for seed in range(12):
            scene = sample_scene(seed, height=size, width=size)
            r = read_frame(render(scene, 37 * seed, 1)[0])
            assert len(r.objects) == len(scene.objects) and r.background == scene.background


def test_the_world_itself_scores_perfectly() -> None:
    s = ViewerSettings(seconds=2.0, seeds=2, triples=6)
    v = run_viewer(_rendered, s, fps=24.0, frames_per_chunk=4)
    o = v.overall
    assert o["clips"] == 24 and set(v.by_wording) == {"canonical", "paraphrase"} and "2 objects" in v.by_objects
    assert o["exact"] == o["clean"] == o["background_clips"] == o["color"] == o["exact_first"] == o["exact_last"] == 1.0
    assert set(v.by_shape) >= {"circle", "circle, canonical", "circle, paraphrase"}
    assert o["shape"] >= 0.98 and o["motion"] >= 0.98
    assert o["ghost"] == o["fringe"] == o["speck"] == o["extra"] == o["missing"] == 0.0
    assert 0.8 < o["step_ratio"] < 1.25 and 0.8 < o["change_ratio"] < 1.25
    assert v.by_wording["canonical"]["exact"] == v.by_wording["paraphrase"]["exact"]


def _with_copy(case: ViewerCase, n: int) -> np.ndarray:
    """The scene with a copy of its first object 20 px across its motion: one object too many."""
    obj = case.scene.objects[0]
    dx, dy = (20.0, 0.0) if obj.motion in ("up", "down", "still", "bounce") else (0.0, 20.0)
    x0, y0, x1, y1 = obj.bounds
    copy = dataclasses.replace(obj, x=obj.x + dx, y=obj.y + dy, bounds=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))
    return render(dataclasses.replace(case.scene, objects=(obj, copy)), 0, n)


def _stuttering(case: ViewerCase, n: int) -> np.ndarray:
    """Each chunk of 4 frames shows its first frame 4 times: objects move only at chunk seams."""
    return render(case.scene, 0, n)[(np.arange(n) // 4) * 4]


def _with_ghost(case: ViewerCase, n: int) -> np.ndarray:
    """A 3 x 3 speck of another color right behind (beside) the first object in every frame."""
    frames = render(case.scene, 0, n).copy()
    for f in frames:
        box = read_frame(f).objects[0].bbox
        x, y = min(box[2] + 1, 60), min(box[1] + 2, 60)
        f[y : y + 3, x : x + 3] = 128
    return frames


def test_the_eval_sees_copies_stutter_and_ghosts() -> None:
    s = ViewerSettings(seconds=1.5, seeds=1, wordings=("canonical",), triples=5)
    copies = run_viewer(_with_copy, s, 24.0, 4).overall
    assert copies["exact"] <= 0.2 and copies["extra"] >= 0.8 and copies["color"] == 1.0
    stutter = run_viewer(_stuttering, s, 24.0, 4).overall
    assert stutter["step_ratio"] > 3 and stutter["step_inside"] < 0.2 and stutter["exact"] == 1.0
    ghosts = run_viewer(_with_ghost, s, 24.0, 4).overall
    assert ghosts["ghost"] >= 0.8 and ghosts["clean"] <= 0.2 and ghosts["exact"] == 1.0


def test_cases_cover_triples_seeds_and_wordings() -> None:
    cases = viewer_cases(ViewerSettings(seeds=2, triples=3))
    assert len(cases) == 12 and {c.wording for c in cases} == {"canonical", "paraphrase"}
    assert [len(c.scene.objects) for c in cases[:4]] == [1, 1, 2, 2]
    assert cases[0].scene == cases[1].scene and cases[0].prompt != cases[1].prompt  # one scene, two wordings
    assert "background" in cases[0].prompt or "gradient" in cases[0].prompt  # the canonical prompt names it


def test_contact_sheet_and_png(tmp_path: Path) -> None:
    clips = [render(sample_scene(i), 0, 24) for i in range(3)]
    keeper = ClipKeeper(set(spread(10, 3)))
    assert keeper.picks == {0, 4, 9} or keeper.picks == {0, 5, 9}
    sheet = contact_sheet(clips, 12, 2, zoom=2)
    assert sheet.shape == (3 * 130 + 2, 2 * 130 + 2, 3)
    np.testing.assert_array_equal(sheet[2:130, 2:130], clips[0][0].repeat(2, 0).repeat(2, 1))
    write_png(tmp_path / "s.png", sheet)
    data = (tmp_path / "s.png").read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 3)
    assert (width, height) == sheet.shape[1::-1]
    np.testing.assert_array_equal(rows[:, 1:].reshape(sheet.shape), sheet)


def test_viewer_eval_runs_on_a_tiny_random_model() -> None:
    from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
    from framecast.models.dit import CausalWanDiT
    from framecast.pipeline import Pipeline
    from tests.conftest import RandomTextEncoder, tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(latent_height=4, latent_width=4, chunk_frames=1)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=cfg.in_channels, width=8, spatial_factor=8))
    pipe = Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(cfg.text_dim))
    keeper = ClipKeeper({0, 1})
    r = run_viewer_eval(pipe, ViewerSettings(seconds=1.0, seeds=1, triples=1), None, on_clip=keeper)
    assert r.viewer.overall["clips"] == 2 and set(keeper.clips) == {0, 1} and keeper.clips[0].shape[1:] == (32, 32, 3)
    assert set(r.wording_gap) == {"exact", "background_clips", "color", "shape", "motion"}
    json.dumps(r.to_json(), allow_nan=False)
    table = format_viewer_table(r)
    assert "frames with exactly the prompted objects" in table and "by motion" in table


def test_eval_viewer_cli_rejects_bad_arguments_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_pipeline import _fails

    _fails(["eval", "--random-weights", "--viewer", "--seconds", "0"], capsys, "--seconds")
    _fails(["eval", "--random-weights", "--sheet", "x.png"], capsys, "--sheet")
    _fails(["eval", "--random-weights", "--viewer", "--sheet", "/nonexistent/x.png"], capsys, "cannot write")
