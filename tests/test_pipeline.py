"""The Python API and the CLI on tiny random models: save/load, prompt switching, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from framecast.cli import main
from framecast.errors import InputError, ModelLoadError
from framecast.io.video import read_video
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.models.dit import CausalWanDiT
from framecast.pipeline import Pipeline, PipelineConfig
from framecast.stream.config import StreamConfig
from framecast.v2v.controller import MotionConfig
from tests.conftest import RandomTextEncoder, tiny_config


def _pipe(seed: int = 0) -> Pipeline:
    torch.manual_seed(seed)
    cfg = tiny_config(latent_height=4, latent_width=4, chunk_frames=1)
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=cfg.in_channels, width=8, decoder_context=1))
    return Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(cfg.text_dim))


def test_stream_yields_uint8_frames() -> None:
    pipe = _pipe()
    frames = pipe.generate("a red circle", 10, seed=3, steps=2)
    assert frames.shape == (10, *pipe.frame_size, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, pipe.generate("a red circle", 10, seed=3, steps=2))
    assert not np.array_equal(frames, pipe.generate("a red circle", 10, seed=4, steps=2))


def test_saved_and_loaded_folder_gives_identical_output(tmp_path: Path) -> None:
    pipe = _pipe()
    pipe.save(tmp_path / "m")
    loaded = Pipeline.load(str(tmp_path / "m"), text_encoder=RandomTextEncoder(pipe.dit.config.text_dim))
    np.testing.assert_array_equal(pipe.generate("blue", 12, seed=1), loaded.generate("blue", 12, seed=1))


@pytest.mark.parametrize("batch_steps", [True, False])
def test_set_prompt_takes_effect_at_next_chunk_without_reset(batch_steps: bool) -> None:
    pipe = _pipe()
    per = pipe.frames_per_chunk
    steady = pipe.generate("red", 8 * per, seed=0, steps=3, batch_steps=batch_steps)
    switched = pipe.generate("red", 8 * per, seed=0, prompt_at=[(3 * per, "blue")], steps=3, batch_steps=batch_steps)
    fresh = pipe.generate("blue", 8 * per, seed=0, steps=3, batch_steps=batch_steps)
    lag = 3 if batch_steps else 1  # chunks already admitted keep their prompt
    same = 3 * per if not batch_steps else (3 + lag - 1) * per
    np.testing.assert_array_equal(switched[:same], steady[:same])
    assert not np.array_equal(switched[-per:], steady[-per:])
    assert not np.array_equal(switched[-per:], fresh[-per:])  # the cache was kept, not reset


@pytest.mark.parametrize("batch_steps", [True, False])
def test_guided_pipeline_with_context_noise_is_seeded_and_differs(batch_steps: bool) -> None:
    """Guidance and context noise through the Python API: reproducible per seed, both schedules agree, each
    changes the picture, and a guided stream keeps a second cache."""
    pipe, kw = _pipe(), dict(steps=2, guidance=3.0, context_noise=0.2)
    frames = pipe.generate("red", 12, seed=2, batch_steps=batch_steps, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(frames, pipe.generate("red", 12, seed=2, batch_steps=not batch_steps, **kw))  # type: ignore[arg-type]
    plain = pipe.generate("red", 12, seed=2, steps=2)
    assert not np.array_equal(frames, plain)
    assert not np.array_equal(pipe.generate("red", 12, seed=2, steps=2, guidance=3.0), plain)
    guided, unguided = pipe.stream("red", guidance=3.0), pipe.stream("red")
    assert guided.state.memory_bytes() == 2 * unguided.state.memory_bytes()


def test_switch_passes_give_the_new_prompt_to_chunks_in_flight() -> None:
    """A change shows up sooner: chunks in flight that have run fewer than `switch_passes` passes take it
    (their finished passes stay), later ones keep the old prompt; the frames before the change are untouched."""
    pipe = _pipe()
    per = pipe.frames_per_chunk
    steady = pipe.generate("red", 8 * per, seed=0, steps=3)
    late = pipe.generate("red", 8 * per, seed=0, prompt_at=[(3 * per, "blue")], steps=3)
    soon = pipe.generate("red", 8 * per, seed=0, prompt_at=[(3 * per, "blue")], steps=3, switch_passes=3)
    np.testing.assert_array_equal(soon[: 4 * per], steady[: 4 * per])  # chunk 3 was out when the change came
    np.testing.assert_array_equal(late[4 * per : 5 * per], steady[4 * per : 5 * per])  # in flight: kept red
    assert not np.array_equal(soon[4 * per : 5 * per], steady[4 * per : 5 * per])  # in flight: took blue
    sequential = [  # nothing is in flight between its frames
        pipe.generate("red", 8 * per, prompt_at=[(3 * per, "blue")], steps=3, batch_steps=False, switch_passes=k)
        for k in (0, 3)
    ]
    np.testing.assert_array_equal(*sequential)

    stream = pipe.stream("red", seed=0, steps=3, switch_passes=2)
    for _, _ in zip(range(3 * per), stream, strict=False):
        pass
    before = [(c.next_pass, c.cond) for c in stream.state.inflight]
    assert {p for p, _ in before} >= {1, 2}  # chunks both sides of the bound are in flight
    stream.set_prompt("blue")
    blue = pipe.conditioner("blue")
    for (passes, old), now in zip(before, stream.state.inflight, strict=True):
        assert now.cond is (blue if passes < 2 else old)
    stream.set_prompt("green", blend_chunks=2)  # a blended change leaves the chunks in flight alone
    assert all(c.cond is not pipe.conditioner("green") for c in stream.state.inflight)
    with pytest.raises(InputError, match="switch_passes"):
        pipe.stream("red", switch_passes=-1)


def test_blend_goes_through_intermediate_conditions() -> None:
    pipe = _pipe()
    stream = pipe.stream("red", seed=0, steps=1, batch_steps=False)
    stream.set_prompt("blue", blend_chunks=3)
    embeds = [stream.prompt.current_embedding().clone()]
    red, blue = pipe.conditioner.embed("red"), pipe.conditioner.embed("blue")
    for _ in range(4):
        embeds.append(stream.prompt.current_embedding().clone())
        stream.next_condition()
    torch.testing.assert_close(embeds[1], red.lerp(blue, 0.25))
    torch.testing.assert_close(embeds[3], red.lerp(blue, 0.75))
    torch.testing.assert_close(embeds[4], blue)


# -- CLI: one line on stderr and exit code 2 for every bad input --------------------------------
def _fails(args: list[str], capsys: pytest.CaptureFixture[str], expect: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and expect in err, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    Pipeline.random("tiny").save(folder)
    return folder


def test_cli_generate_writes_mp4(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "v.mp4"
    assert (
        main(
            [
                "generate",
                "a red circle",
                "-o",
                str(out),
                "--model",
                str(model_dir),
                "--seconds",
                "1",
                "--fps",
                "8",
                "--prompt-at",
                "0.5:a blue square",
            ]
        )
        == 0
    )
    frames, fps = read_video(out)
    assert frames.shape == (8, 64, 64, 3) and fps == 8


def test_cli_switch_passes_reach_the_stream(tmp_path: Path, model_dir: Path) -> None:
    """--switch-passes overrides the model's setting (this folder has none: 0)."""

    def run(*extra: str) -> np.ndarray:
        out = tmp_path / f"v{len(list(tmp_path.iterdir()))}.mp4"
        args = ["generate", "red", "-o", str(out), "--model", str(model_dir), "--seconds", "1.5", "--seed", "1"]
        assert main([*args, "--prompt-at", "0.5:blue", *extra]) == 0
        return read_video(out)[0]

    default, off, on = run(), run("--switch-passes", "0"), run("--switch-passes", "4")
    np.testing.assert_array_equal(default, off)
    assert not np.array_equal(on, off)


def test_cli_bad_inputs(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = str(tmp_path / "v.mp4")
    _fails(["generate", "x", "-o", out, "--model", "no-such-model"], capsys, "unknown model")
    with monkeypatch.context() as m:  # an install without the built-in weights
        m.setattr("framecast.pipeline.WEIGHTS_DIR", tmp_path / "no-weights")
        _fails(["generate", "x", "-o", out, "--model", "tiny"], capsys, "no trained weights")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--seconds", "0"], capsys, "--seconds")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--seconds", "-2"], capsys, "--seconds")
    _fails(["generate", "x", "-o", "/no/such/dir/v.mp4", "--model", str(model_dir)], capsys, "does not exist")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--prompt-at", "soon"], capsys, "--prompt-at")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--prompt-at", "2:"], capsys, "--prompt-at")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--steps", "9"], capsys, "steps")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--guidance", "-1"], capsys, "guidance")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--context-noise", "1.5"], capsys, "context_noise")
    _fails(["generate", "x", "-o", out, "--model", str(model_dir), "--switch-passes", "-1"], capsys, "switch_passes")
    assert not Path(out).exists()


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_cli_broken_model_folders(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "v.mp4")
    missing = _copy(model_dir, tmp_path / "missing")
    (missing / "dit" / "model.safetensors").unlink()
    _fails(["generate", "x", "-o", out, "--model", str(missing)], capsys, "weights not found")
    truncated = _copy(model_dir, tmp_path / "truncated")
    w = truncated / "dit" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _fails(["generate", "x", "-o", out, "--model", str(truncated)], capsys, "truncated")
    shapes = _copy(model_dir, tmp_path / "shapes")
    cfg = json.loads((shapes / "dit" / "config.json").read_text())
    (shapes / "dit" / "config.json").write_text(json.dumps({**cfg, "ffn_dim": cfg["ffn_dim"] + 8}))
    _fails(["generate", "x", "-o", out, "--model", str(shapes)], capsys, "has shape")
    keys = _copy(model_dir, tmp_path / "keys")
    state = load_file(str(keys / "dit" / "model.safetensors"))
    state.pop("head.modulation")
    save_file(state, str(keys / "dit" / "model.safetensors"))
    _fails(["generate", "x", "-o", out, "--model", str(keys)], capsys, "miss tensors")
    assert not Path(out).exists()


def test_a_model_folder_may_share_another_ones_autoencoder(tmp_path: Path) -> None:
    """framecast.json's `autoencoder` names the folder relative to the model; saving writes a folder of its own."""
    base = Pipeline.random("tiny").save(tmp_path / "base")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(base / "dit", other / "dit")
    config = json.loads((base / "framecast.json").read_text())
    (other / "framecast.json").write_text(json.dumps({**config, "autoencoder": "../base/autoencoder"}))
    shared = Pipeline.load(str(other))
    for k, v in Pipeline.load(str(base)).autoencoder.state_dict().items():
        assert torch.equal(shared.autoencoder.state_dict()[k], v)
    saved = shared.save(tmp_path / "saved")
    assert json.loads((saved / "framecast.json").read_text())["autoencoder"] == "autoencoder"
    assert (saved / "autoencoder" / "model.safetensors").is_file()


def test_one_builtin_model_serves_both_jobs_and_its_old_v2v_name_still_loads() -> None:
    import argparse

    from framecast.cli import _model

    assert _model(argparse.Namespace(model=None)) == "tiny"
    assert _model(argparse.Namespace(model="mine")) == "mine"
    old = Pipeline.load("tiny-v2v", random_weights=True)  # the alias of the earlier video-to-video model
    assert old.dit.config == Pipeline.load("tiny", random_weights=True).dit.config
    with pytest.raises(ModelLoadError, match="tiny-v2v"):
        Pipeline.load("no-such-model")


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_framecast_lets_idle_threads_sleep_unless_told(given: str | None, expected: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = "import framecast, os; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_settings_are_typed_and_checked_once(tmp_path: Path) -> None:
    """framecast.json's stream and motion sections load as dataclasses (checked when read); overrides replace
    fields of the model's settings once, and an unknown field or a bad value is a clear error."""
    pipe = _pipe()
    pipe.config = PipelineConfig.from_dict({"stream": {"steps": 2, "guidance": 1.0}, "motion": {"fixed": 0.7}})
    assert isinstance(pipe.config.stream, StreamConfig) and pipe.config.stream.steps == 2
    assert isinstance(pipe.config.motion, MotionConfig) and pipe.config.motion.fixed == 0.7
    cfg = pipe.stream_config(batch_steps=False)
    assert (cfg.steps, cfg.batch_steps) == (2, False) and pipe.config.stream.batch_steps  # the model's untouched
    assert pipe.stream("red", config=cfg).cfg == cfg
    assert pipe.stream("red", config=cfg, steps=3).cfg == dataclasses.replace(cfg, steps=3)
    with pytest.raises(InputError, match="unknown stream settings: stepz"):
        pipe.stream_config(stepz=2)
    with pytest.raises(InputError, match="steps must be between"):
        pipe.stream_config(steps=9)
    with pytest.raises(ModelLoadError, match="unknown stream keys in framecast.json: bogus"):
        PipelineConfig.from_dict({"stream": {"bogus": 1}})
    with pytest.raises(ModelLoadError, match="stream settings in framecast.json: guidance"):
        PipelineConfig.from_dict({"stream": {"guidance": -2.0}})
    with pytest.raises(ModelLoadError, match="unknown motion keys"):
        PipelineConfig.from_dict({"motion": {"lo": 0.5}})
    saved = pipe.save(tmp_path / "m")
    loaded = Pipeline.load(str(saved), text_encoder=RandomTextEncoder(pipe.dit.config.text_dim))
    assert loaded.config == pipe.config  # typed settings round-trip through the folder


def test_a_causal_checkpoint_over_a_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`Pipeline.load(FOLDER, checkpoint=FILE)` (`--checkpoint`): a Self-Forcing-style file (`generator_ema`,
    `model.` prefixes) over the folder's DiT gives what a folder saved with those weights gives."""
    pipe = _pipe()
    base = pipe.save(tmp_path / "base")
    enc = RandomTextEncoder(pipe.dit.config.text_dim)
    gen = torch.Generator().manual_seed(9)
    tuned = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in pipe.dit.state_dict().items()}
    torch.save({"generator_ema": {f"model.{k}": v for k, v in tuned.items()}, "step": 7}, tmp_path / "ckpt.pt")
    over = Pipeline.load(str(base), text_encoder=enc, checkpoint=tmp_path / "ckpt.pt")
    pipe.dit.load_state_dict(tuned)
    saved = Pipeline.load(str(pipe.save(tmp_path / "tuned")), text_encoder=enc)
    plain = Pipeline.load(str(base), text_encoder=enc)
    frames = over.generate("blue", 8, seed=1)
    np.testing.assert_array_equal(frames, saved.generate("blue", 8, seed=1))
    assert not np.array_equal(frames, plain.generate("blue", 8, seed=1))
    _fails(["generate", "x", "-o", str(tmp_path / "o.mp4"), "--model", str(base), "--checkpoint",
            str(tmp_path / "none.pt")], capsys, "checkpoint not found")  # fmt: skip


def test_reduced_precision_streams_close_to_float32() -> None:
    """`dtype="bfloat16"` (`--dtype`): the DiT and the caches in bfloat16 (its norms, modulation and head in
    float32) stream on the CPU within a few uint8 levels of float32."""
    torch.manual_seed(0)
    cfg = tiny_config(latent_height=4, latent_width=4, chunk_frames=1)
    dit, ae = CausalWanDiT(cfg), TinyAutoencoder(AutoencoderConfig(latent_channels=cfg.in_channels, width=8))
    full = Pipeline(dit, ae, RandomTextEncoder(cfg.text_dim))
    reference = full.generate("red", 12, seed=2, steps=2)
    half = Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(cfg.text_dim), dtype="bfloat16")
    half.dit.load_state_dict(dit.state_dict())
    assert half.dtype == torch.bfloat16 and half.dit.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert half.dit.blocks[0].modulation.dtype == torch.float32
    diff = np.abs(half.generate("red", 12, seed=2, steps=2).astype(int) - reference)
    assert diff.mean() < 2.0, diff.mean()
    with pytest.raises(InputError, match="unknown dtype"):
        Pipeline(dit, ae, RandomTextEncoder(cfg.text_dim), dtype="int8")
