"""Training on tiny configurations: losses go down, resume equals an uninterrupted run, data has the right layout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.sampling.flow import sigmas
from framecast.train.autoencoder import AETrainConfig, reconstruction_loss, train_autoencoder
from framecast.train.checkpoint import lr_at
from framecast.train.data import clip_sample, frame_groups
from framecast.train.dit import (
    DiTTrainConfig,
    attention_mask,
    drop_text,
    flow_loss,
    new_model,
    per_group_cross,
    recycle_context,
    rollout_context,
    stream_levels,
    take,
    warmup_levels,
)
from framecast.train.latents import LatentDataConfig, build_latents, load_latents, object_cells
from framecast.train.loop import LoopConfig, new_state, resume, step_rng, train
from tests.conftest import RandomTextEncoder, tiny_config

AE_CFG = AETrainConfig(
    model=AutoencoderConfig(
        latent_channels=4, spatial_factor=4, temporal_factor=2, width=8, max_width=16, res_blocks=1
    ),
    loop=LoopConfig(steps=8, lr=3e-3, warmup=1, checkpoint_every=4),
    batch=4,
    height=32,
    width=32,
)
DIT_CFG = DiTTrainConfig(
    model=tiny_config(in_channels=4, out_channels=4, chunk_frames=1, latent_height=8, latent_width=8),
    loop=LoopConfig(steps=6, lr=3e-3, warmup=1, checkpoint_every=3),
    batch=4,
    window_chunks=3,
)


def test_autoencoder_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    ae = TinyAutoencoder(AE_CFG.model)
    x = frame_groups(step_rng(0, 0), 8, 2, 32, 32)  # a fixed batch
    cfg = replace(AE_CFG, latent_noise=0.0)
    before = reconstruction_loss(ae, x, cfg)[0].item()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad()
        reconstruction_loss(ae, x, cfg)[0].backward()
        opt.step()
    assert reconstruction_loss(ae, x, cfg)[0].item() < 0.7 * before


def built(tmp: Path, build: Any, cfg: Any) -> dict[str, torch.Tensor]:
    """A dataset of `build` (build_latents or build_edit_latents) with a tiny random autoencoder, loaded."""
    torch.manual_seed(0)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=4, spatial_factor=4, temporal_factor=2, width=8))
    return load_latents(build(tmp, cfg, ae, RandomTextEncoder(dim=12, seq_len=3)))


def _latents(tmp: Path) -> dict[str, torch.Tensor]:
    return built(tmp, build_latents, LatentDataConfig(samples=8, shard=4, window=4, max_gap=5, height=32, width=32))


def test_latent_dataset_layout_and_resume(tmp_path: Path) -> None:
    data = _latents(tmp_path)
    assert data["latents"].shape == (8, 5, 4, 8, 8)  # (N, G, C, h, w): sink + 4 window groups
    assert data["positions"].shape == (8, 5) and (data["positions"][:, 0] == 0).all()
    assert (data["positions"][:, 2:] - data["positions"][:, 1:-1] == 1).all()  # the window is contiguous
    assert data["objects"].shape == (8, 5, 8, 8) and 0 < data["objects"].mean() < 0.5
    U = data["captions"].shape[0]  # one row per distinct caption of each shard
    assert data["captions"].shape == (U, 3, 12) and U <= 8 * 5
    assert data["caption_index"].shape == (8, 5) and int(data["caption_index"].max()) == U - 1
    assert (data["caption_index"][4:].min() >= data["caption_index"][:4].max())  # the second shard's rows follow
    batch = take(data, np.random.default_rng(0), 3)
    assert batch["objects"].shape == (3, 5, 8, 8) and batch["text_index"].shape == (3, 5)
    assert batch["text"].shape == (int(batch["text_index"].max()) + 1, 3, 12)
    stamp = (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns
    again = _latents(tmp_path)  # existing shards are kept
    assert (tmp_path / "shard_00000.safetensors").stat().st_mtime_ns == stamp
    assert torch.equal(again["latents"], data["latents"])


def test_dit_steps_lower_the_loss(tmp_path: Path) -> None:
    data = take(_latents(tmp_path), np.random.default_rng(0), 8)
    model = new_model(DIT_CFG, 0)
    fixed = lambda: flow_loss(model, data, step_rng(5, 5), DIT_CFG)[0]  # noqa: E731 - same levels every call
    torch.manual_seed(1)
    before = fixed().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        torch.manual_seed(1)
        opt.zero_grad()
        flow_loss(model, data, step_rng(5, 5), DIT_CFG)[0].backward()
        opt.step()
    torch.manual_seed(1)
    assert fixed().item() < 0.8 * before


def test_resumed_training_equals_uninterrupted(tmp_path: Path) -> None:
    def loss(m: torch.nn.Module, rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        assert isinstance(m, TinyAutoencoder)
        return reconstruction_loss(m, frame_groups(rng, 2, 2, 32, 32), AE_CFG)

    def run(folder: Path, stops: list[int]) -> dict[str, torch.Tensor]:
        for stop in stops:  # like a fresh process: rebuild the state, resume from the checkpoint
            torch.manual_seed(0)
            ts = new_state(TinyAutoencoder(AE_CFG.model), AE_CFG.loop)
            resume(ts, folder)
            train(ts, AE_CFG.loop, loss, folder, until=stop)
        return ts.model.state_dict()

    straight = run(tmp_path / "a", [6])
    resumed = run(tmp_path / "b", [3, 6])
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6)


def test_train_autoencoder_writes_a_loadable_folder_with_latent_stats(tmp_path: Path) -> None:
    ae = train_autoencoder(tmp_path, AE_CFG)
    from framecast.models.autoencoder import load_autoencoder

    loaded = load_autoencoder(tmp_path / "autoencoder")
    assert torch.equal(loaded.latent_std, ae.latent_std) and not torch.all(ae.latent_std == 1)
    x = frame_groups(step_rng(3, 0), 2, 2, 32, 32)
    torch.testing.assert_close(loaded.encode(x), ae.encode(x))


@pytest.mark.parametrize("context", [0, 1])
def test_decoder_finetune_keeps_the_encoder_and_lowers_the_loss(tmp_path: Path, context: int) -> None:
    """With context 1 the fine-tune first gives the decoder the previous latent frame as an input."""
    from framecast.models.autoencoder import load_autoencoder
    from framecast.train.autoencoder import finetune_decoder

    ae = train_autoencoder(tmp_path / "ae", AE_CFG)
    x = frame_groups(step_rng(3, 0), 4, 4, 32, 32)  # two groups: the second decodes after its past
    z, before = ae.encode(x).detach(), reconstruction_loss(ae, x, replace(AE_CFG, latent_noise=0.0))[0].item()
    cfg = replace(AE_CFG, model=replace(AE_CFG.model, decoder_context=context))
    tuned = finetune_decoder(load_autoencoder(tmp_path / "ae" / "autoencoder"), tmp_path / "dec", cfg, 12)
    loaded = load_autoencoder(tmp_path / "dec" / "autoencoder")
    assert loaded.config.decoder_context == context
    torch.testing.assert_close(loaded.encode(x), z)  # same encoder and latent statistics: latents stay valid
    torch.testing.assert_close(tuned.encode(x), z)
    assert reconstruction_loss(loaded, x, replace(AE_CFG, latent_noise=0.0))[0].item() < before


def test_change_loss_sees_jumps_not_steady_errors() -> None:
    """The temporal term of the autoencoder loss: an output off by the same amount in every frame changes as
    the input does (no loss); one that jumps between two frames (a seam between groups) does not."""
    from framecast.train.autoencoder import change_loss

    steady = torch.full((1, 3, 8, 4, 4), 0.3)  # (B, 3, T, H, W) error
    jump = steady.clone()
    jump[:, :, 4:] = -0.3  # the second group off the other way: a jump at the seam
    assert change_loss(steady).item() == 0.0 and change_loss(jump).item() > 0.0
    torch.manual_seed(0)
    ae = TinyAutoencoder(AE_CFG.model)
    x = frame_groups(step_rng(3, 0), 2, 4, 32, 32)  # (2, 3, 4, 32, 32): two groups of the temporal factor 2
    plain = reconstruction_loss(ae, x, replace(AE_CFG, latent_noise=0.0))[0]
    weighted = reconstruction_loss(ae, x, replace(AE_CFG, latent_noise=0.0, temporal_weight=2.0))[0]
    err = ae.decode(ae.encode(x)) - x
    torch.testing.assert_close(weighted, plain + 2.0 * change_loss(err))


def test_object_cells_cover_objects_only() -> None:
    pixels = -torch.ones(1, 3, 4, 32, 32)  # (S, 3, G * tf, H, W): black, two groups of two frames
    pixels[:, 0, :2, 0:8, 0:8] = 1.0  # a red square on the first group's cell (0, 0) at sf = 8...
    pixels[:, 0, 2:, 16:24, 16:24] = 1.0  # ...and on the second group's cell (2, 2)
    cells = object_cells(pixels, 2, 8)  # (1, 2, 4, 4)
    assert cells.shape == (1, 2, 4, 4)
    assert cells[0, 0, 0, 0] == 1 and cells[0, 1, 2, 2] == 1
    assert 0 < cells[0, 0, 1, 1] < 0.2  # the pixel grown around an object
    assert cells[0, 0, 3, 3] == 0 and cells[0, 1, 0, 0] == 0 and cells[0, 0, 2, 2] == 0


def test_object_weight_weighs_object_cells(tmp_path: Path) -> None:
    data = take(_latents(tmp_path), np.random.default_rng(0), 4)
    model = new_model(DIT_CFG, 0)
    torch.nn.init.normal_(model.head.head.weight, std=0.1)  # not the zero start: errors differ per cell
    def loss(cfg: DiTTrainConfig, objects: torch.Tensor) -> float:
        torch.manual_seed(1)
        return flow_loss(model, {**data, "objects": objects}, step_rng(5, 5), cfg)[0].item()

    plain = loss(replace(DIT_CFG, object_weight=0.0), data["objects"])
    assert loss(DIT_CFG, torch.zeros_like(data["objects"])) == pytest.approx(plain)  # no objects: a plain mean
    assert loss(DIT_CFG, data["objects"]) != pytest.approx(plain)


@pytest.mark.parametrize("seed", range(20))
def test_stream_levels_follow_the_stream_batch(seed: int) -> None:
    levels = stream_levels(np.random.default_rng(seed), 8, 3.0)
    assert np.all(np.diff(levels) >= 0)  # older groups are cleaner
    assert levels[0] == 0.0 and levels[-1] > 0.0  # clean context at the back, the newest group is noisy
    schedules = np.concatenate([sigmas(k, 3.0).numpy() for k in range(1, 5)])
    assert all(np.isclose(schedules, v).any() for v in levels)


@pytest.mark.parametrize("seed", range(10))
def test_warmup_levels_replay_the_first_ticks(seed: int) -> None:
    levels, weight = warmup_levels(np.random.default_rng(seed), 8, 3.0)
    live = int(weight.sum())  # chunks admitted so far: tick + 1
    assert 1 <= live <= 4 and np.all(weight[:live] == 1) and np.all(weight[live:] == 0)
    assert np.all(np.diff(levels[:live]) > 0)  # chunk 0 is the furthest along, the newest the noisiest
    assert levels[live - 1] == 1.0 and np.all(levels[live:] == 1.0)


def test_training_mask_is_the_engine_rule() -> None:
    m = attention_mask(5, 2, DIT_CFG)[0, 0]  # (10, 10)
    chunk = torch.arange(5).repeat_interleave(2)
    for q in range(10):
        for k in range(10):
            a, c = int(chunk[q]), int(chunk[k])
            assert bool(m[q, k]) == (c <= a and (c < 1 or a - c <= DIT_CFG.window_chunks))


def test_clip_samples_switch_prompts_part_way() -> None:
    rng = np.random.default_rng(0)
    samples = [clip_sample(rng, 6, 4, 10, 32, 32, switch_prob=1.0) for _ in range(10)]
    assert all(s.frames.shape == (7 * 4, 32, 32, 3) for s in samples)
    assert any(len(set(s.captions)) == 2 for s in samples)
    for s in samples:  # the caption changes once, never back
        changes = sum(a != b for a, b in zip(s.captions[:-1], s.captions[1:], strict=True))
        assert changes <= 1


def test_learning_rate_schedule() -> None:
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.1)


def test_train_command_rejects_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from framecast.cli import main

    assert main(["train", "--out", str(tmp_path / "r"), "--dit-steps", "0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--out", str(blocker / "run")]) == 2
    assert "cannot create the run folder" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r2"), "--recycle", "1.5"]) == 2
    assert "--recycle" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_object_mask_covers_objects_not_background() -> None:
    from framecast.train.autoencoder import object_mask
    from framecast.world import detect_objects, render, sample_scene

    frame = render(sample_scene(3, "train", height=64, width=64), 10, 1)[0]  # (H, W, 3) uint8
    x = torch.from_numpy(frame).float().div(127.5).sub(1).permute(2, 0, 1)[None, :, None]  # (1, 3, 1, H, W)
    mask = object_mask(x)[0, 0, 0]  # (H, W)
    objects = detect_objects(frame)
    assert objects
    for d in objects:
        x0, y0, x1, y1 = d.bbox
        assert mask[y0:y1, x0:x1].mean() > 0.5
    assert mask.mean() < 0.3


def test_precondition_is_the_linear_guess_plus_a_scaled_rest() -> None:
    from framecast.models.dit import precondition

    x, out = torch.randn(2, 3, 3, 4, 4), torch.randn(2, 3, 3, 4, 4)
    t = torch.tensor([[1000.0, 500.0, 0.0]] * 2)
    v = precondition(x, out, t)
    torch.testing.assert_close(v[:, :, 0], x[:, :, 0] + out[:, :, 0])  # s = 1: skip 1, scale 1
    torch.testing.assert_close(v[:, :, 1], 2**0.5 * out[:, :, 1])  # s = 1/2: x says nothing about v
    torch.testing.assert_close(v[:, :, 2], -x[:, :, 2] + out[:, :, 2])  # s = 0: v = -x0 = -x


def test_captions_without_a_background_get_the_default_one() -> None:
    from framecast.train.data import BACKGROUND_WORDS, default_background
    from framecast.world import detect_background, detect_objects

    rng, named, unnamed = np.random.default_rng(4), 0, 0
    for _ in range(40):
        s = clip_sample(rng, window=2, tf=2, max_gap=3, height=32, width=32, switch_prob=0.0)
        if any(w in s.captions[0].lower() for w in BACKGROUND_WORDS):
            named += 1
            continue
        unnamed += 1
        colors = [d.color for d in detect_objects(s.frames[0])]
        bg = detect_background(s.frames[0])
        assert (bg.top, bg.bottom) == (default_background(colors).top,) * 2
    assert named and unnamed
    assert default_background(["red"]).top == "black" and default_background(["black", "red"]).top == "white"


def test_dit_clips_start_with_objects_in_the_middle_of_their_bounds() -> None:
    from framecast.train.data import centered
    from framecast.world import object_state, sample_scene

    scene = centered(sample_scene(11, "train", num_objects=2, height=64, width=64))
    for o in scene.objects:
        x0, y0, x1, y1 = o.bounds
        assert object_state(o, 0) == ((x0 + x1) / 2, (y0 + y1) / 2)


@pytest.mark.parametrize("seed", range(8))
def test_dit_clips_have_one_size_and_one_speed(seed: int) -> None:
    from framecast.train.data import STEADY_SIZE, STEADY_SPEED, steady
    from framecast.world import detect_motion, render, sample_scene

    scene = sample_scene(seed, "train", height=64, width=64)
    fixed = steady(scene)
    for before, o in zip(scene.objects, fixed.objects, strict=True):
        assert o.size == STEADY_SIZE and (o.motion, o.color, o.shape) == (before.motion, before.color, before.shape)
        speed = (o.vx**2 + o.vy**2) ** 0.5
        assert speed == pytest.approx(0.0 if o.motion == "still" else STEADY_SPEED)
        if o.motion == "bounce":
            assert o.vx > 0 and o.vy > 0
        assert detect_motion(render(fixed, 0, 24), color=o.color) == o.motion  # still the captioned motion
    big = steady(sample_scene(seed, "train", height=128, width=128))
    assert all(o.size == 2 * STEADY_SIZE for o in big.objects)


def test_drop_text_gives_some_samples_the_empty_prompt() -> None:
    """Dropped samples point every group at the appended empty-prompt row; the others keep their captions."""
    text, index = torch.randn(3, 5, 8), torch.tensor([[0, 0, 1], [2, 2, 2], [1, 1, 0], [0, 1, 2]])
    null = torch.randn(1, 5, 8)
    out = drop_text({"text": text, "text_index": index}, null, np.random.default_rng(0), 0.5)
    dropped = (out["text_index"] == 3).all(1)
    assert 0 < int(dropped.sum()) < 4  # seed 0 drops some, not all
    torch.testing.assert_close(out["text"][3], null[0])
    torch.testing.assert_close(out["text_index"][~dropped], index[~dropped])
    assert drop_text({"text": text, "text_index": index}, null, np.random.default_rng(0), 0.0)["text"] is text


def test_steady_groups_show_objects_at_the_steady_size() -> None:
    """The decoder stage's extra groups: frames of steady scenes, every object at STEADY_SIZE."""
    from framecast.train.data import STEADY_SIZE, steady_groups
    from framecast.world import detect_objects

    x = steady_groups(step_rng(5, 0), 3, 4, 64, 64)
    assert x.shape == (3, 3, 4, 64, 64) and x.min() >= -1 and x.max() <= 1
    frames = ((x[:, :, 0].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
    sizes = [max(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) for f in frames for d in detect_objects(f)]
    assert sizes and all(abs(s - STEADY_SIZE) <= 3 for s in sizes)


def test_recycled_context_replaces_chosen_samples_only(tmp_path: Path) -> None:
    """Chosen samples get the model's one-step estimate (not the truth); the others keep their latents; a
    loss with recycling still trains."""
    batch = take(_latents(tmp_path), np.random.default_rng(0), 6)
    model, cfg = new_model(DIT_CFG, 0), replace(DIT_CFG, recycle=0.5)
    x0 = batch["latents"].transpose(1, 2)  # (B, C, G, h, w)
    G = x0.shape[2]
    cross = per_group_cross(model, batch["text"], batch["text_index"])
    mask = attention_mask(G, model.config.tokens_per_frame, cfg)
    out = recycle_context(model, x0, cross, mask, batch, np.random.default_rng(1), cfg)
    changed = [(out[b] - x0[b]).abs().max().item() > 1e-4 for b in range(6)]
    chosen = list(np.random.default_rng(1).random(6) < 0.5)
    assert changed == chosen and any(chosen) and not all(chosen)
    loss = flow_loss(model, batch, np.random.default_rng(2), replace(cfg, recycle=1.0))[0]
    loss.backward()
    assert torch.isfinite(loss) and model.head.head.weight.grad is not None


def test_rollout_replaces_the_first_chunks_of_chosen_stream_starts_only(tmp_path: Path) -> None:
    """Chosen samples that start at chunk 0 get the model's own first chunks (drawn from noise, so not a
    function of the sample's latents); later groups and other samples keep theirs; chunk 0 does not depend
    on how many chunks are drawn after it; a loss with rollouts still trains."""
    batch = take(_latents(tmp_path), np.random.default_rng(0), 6)
    batch["positions"][:3] = torch.arange(5)  # three samples from a stream's start
    batch["null"] = torch.zeros(1, 3, 12)
    model, cfg = new_model(DIT_CFG, 0), replace(DIT_CFG, rollout=1.0, rollout_chunks=2)
    torch.nn.init.normal_(model.head.head.weight, std=0.05)  # a head that draws something
    contiguous = torch.tensor([True] * 3 + [False] * 3)
    x = batch["latents"].transpose(1, 2)  # (B, C, G, h, w)

    def roll(x: torch.Tensor, cfg: DiTTrainConfig) -> torch.Tensor:
        torch.manual_seed(7)
        return rollout_context(model, x, contiguous, batch, np.random.default_rng(1), cfg)

    out = roll(x, cfg)
    changed = (out - x).abs().amax(dim=(1, 3, 4)) > 1e-4  # (B, G)
    assert changed[:3, :2].all() and not changed[:3, 2:].any() and not changed[3:].any()
    torch.testing.assert_close(roll(x * 0.5 + 1.0, cfg)[:3, :, :2], out[:3, :, :2])  # drawn, not copied
    torch.testing.assert_close(roll(x, replace(cfg, rollout_chunks=1))[:3, :, 0], out[:3, :, 0])
    loss = flow_loss(model, batch, np.random.default_rng(2), replace(cfg, rollout=0.5))[0]
    loss.backward()
    assert torch.isfinite(loss) and model.head.head.weight.grad is not None
