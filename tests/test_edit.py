"""Edit pairs (train/edit.py): restyled scenes keep their layout, the editor's path is exact, the loss trains."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.sampling.flow import euler_step, sdedit_sigmas
from framecast.train.dit import EDIT_KEYS, edit_loss, new_model, take
from framecast.train.edit import EditDataConfig, build_edit_latents, edit_levels, edit_path, edit_sample, restyled
from framecast.train.loop import step_rng
from framecast.world import detect_objects, sample_scene
from framecast.world.vocab import allowed_on, is_heldout
from tests.conftest import RandomTextEncoder
from tests.test_train import DIT_CFG, built


@pytest.mark.parametrize("seed", range(12))
def test_restyled_scene_keeps_places_and_changes_the_look(seed: int) -> None:
    scene = sample_scene(seed, "train", height=64, width=64)
    new = restyled(scene, np.random.default_rng(seed))
    assert new.background == scene.background
    for a, b in zip(scene.objects, new.objects, strict=True):
        assert (a.x, a.y, a.vx, a.vy, a.size, a.motion, a.bounds) == (b.x, b.y, b.vx, b.vy, b.size, b.motion, b.bounds)
        assert b.color != a.color and b.shape != a.shape
        assert not is_heldout(b.color, b.shape, b.motion)
        assert allowed_on(b.color, new.background.top, new.background.bottom)
    assert len({o.color for o in new.objects}) == len(new.objects)


def test_edit_sample_frames_share_places_not_colors() -> None:
    sample, source = edit_sample(np.random.default_rng(3), 4, 4, 10, 64, 64)
    assert sample.frames.shape == source.shape == (20, 64, 64, 3)
    assert len(set(sample.captions)) == 1 and sample.group_start[0] == 0
    for i in (0, 7, 19):
        a, b = detect_objects(source[i]), detect_objects(sample.frames[i])
        assert len(a) == len(b) >= 1
        for da in a:
            db = min(b, key=lambda d: (d.x - da.x) ** 2 + (d.y - da.y) ** 2)
            assert abs(db.x - da.x) < 2.5 and abs(db.y - da.y) < 2.5 and db.color != da.color


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
@pytest.mark.parametrize("strength", [0.5, 0.8, 1.0])
def test_euler_steps_of_the_editor_stay_on_its_path_and_land_on_the_target(steps: int, strength: float) -> None:
    torch.manual_seed(steps)
    source, target, noise = torch.randn(3, 2, 4, 3, 8, 8)
    s = torch.tensor(strength)
    sig = sdedit_sigmas(steps, 3.0, strength)
    x, v = edit_path(source, target, noise, s, sig[0])
    torch.testing.assert_close(x, (1 - s) * source + s * noise)  # the SDEdit start
    for a, b in zip(sig[:-1], sig[1:], strict=True):
        x = euler_step(x, v, a, b)
        on_path, v = edit_path(source, target, noise, s, b)
        torch.testing.assert_close(x, on_path, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x, target, rtol=1e-5, atol=1e-5)


def test_editor_velocity_is_flow_matching_when_the_look_agrees() -> None:
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 2, 4, 3, 8, 8)
    sigma = torch.rand(2, 1, 3, 1, 1) * 0.7 + 0.05
    x, v = edit_path(x0, x0, noise, torch.tensor(0.8), sigma)
    torch.testing.assert_close(x, (1 - sigma) * x0 + sigma * noise)
    torch.testing.assert_close(v, noise - x0, rtol=1e-4, atol=1e-4)
    _, v0 = edit_path(x0, x0, noise, torch.tensor(0.8), torch.zeros(2, 1, 3, 1, 1))
    assert (v0 == 0).all()  # clean context groups: nothing to learn


@pytest.mark.parametrize("seed", range(20))
def test_edit_levels_come_from_the_chunk_schedule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    strength = float(rng.uniform(0.5, 0.95))
    levels, weight = edit_levels(rng, 6, strength, 3.0, 0.7, 0.35)
    allowed = np.concatenate([sdedit_sigmas(k, 3.0, strength).numpy() for k in range(1, 5)])
    assert levels.shape == weight.shape == (6,) and (levels > 0).any() and levels.max() <= strength + 1e-6
    assert all(np.isclose(allowed, v, atol=1e-6).any() for v in levels)
    assert weight.sum() >= 1 and (levels[weight > 0] > 0).all()  # loss only where there is noise


def test_fresh_edit_samples_train_the_first_chunk_alone() -> None:
    rng = np.random.default_rng(0)
    drawn = [edit_levels(rng, 6, 0.8, 3.0, 0.7, 1.0) for _ in range(20)]
    assert all(w.tolist() == [1, 0, 0, 0, 0, 0] and 0 < lv[0] <= 0.8 + 1e-6 for lv, w in drawn)
    assert not any(w[0] for _, w in (edit_levels(rng, 6, 0.8, 3.0, 1.0, 0.0) for _ in range(20)))


def _edits(tmp: Path) -> dict[str, torch.Tensor]:
    return built(tmp, build_edit_latents, EditDataConfig(samples=8, shard=4, window=4, max_gap=5, height=32, width=32))


def test_edit_dataset_layout_and_the_edit_loss_trains(tmp_path: Path) -> None:
    data = _edits(tmp_path)
    assert data["latents"].shape == data["source"].shape == (8, 5, 4, 8, 8)
    assert (data["latents"] - data["source"]).abs().mean() > 1e-3  # the looks differ
    batch = take(data, step_rng(0, 0), 6, EDIT_KEYS)
    assert batch["source"].shape == (6, 5, 4, 8, 8)
    model = new_model(DIT_CFG, 0)
    cfg = replace(DIT_CFG, edit_batch=6)

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same noise and levels every call
        return edit_loss(model, batch, step_rng(5, 5), cfg)[0]

    before = loss().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.8 * before


def test_no_edit_pairs_build_nothing(tmp_path: Path) -> None:
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=4, spatial_factor=4, temporal_factor=2, width=8))
    assert build_edit_latents(tmp_path / "e", EditDataConfig(), ae, RandomTextEncoder(dim=12, seq_len=3)) == []
    assert not (tmp_path / "e").exists()


def test_train_command_rejects_bad_edit_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from framecast.cli import main

    assert main(["train", "--out", str(tmp_path / "r"), "--edit-samples", "100", "--edit-batch", "0"]) == 2
    assert "--edit-batch" in capsys.readouterr().err and not (tmp_path / "r").exists()
