"""Video to video through the Python API and the CLI on tiny random models: order, lag, skips, live input,
bad input."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.cli import main
from framecast.errors import InputError
from framecast.io.frames import frames_to_uint8
from framecast.io.video import VideoWriter, read_video
from framecast.models.autoencoder import AutoencoderConfig, TinyAutoencoder
from framecast.models.dit import CausalWanDiT
from framecast.pipeline import Pipeline
from framecast.v2v import LiveSource, SimilarityConfig, V2VConfig
from framecast.v2v.feed import content_lag_bound, latency_bound
from framecast.world import render, sample_scene
from tests.conftest import RandomTextEncoder, tiny_config
from tests.test_pipeline import _fails
from tests.test_pipeline import _pipe as _plain_pipe


def _pipe(seed: int = 0) -> Pipeline:
    """The tiny random pipeline of the API tests, its autoencoder given contrast (a default-init decoder maps
    every latent to nearly the same grey, and the encoder every clip to nearly the same latent)."""
    pipe = _plain_pipe(seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in pipe.autoencoder.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return pipe


def _clip(pipe: Pipeline, n: int, motion: str = "left", seed: int = 3) -> np.ndarray:
    h, w = pipe.frame_size
    return render(sample_scene(seed, num_objects=1, motion=motion, height=h, width=w), 0, n)


def _no_skips(strength: float | None = None) -> V2VConfig:
    base = V2VConfig() if strength is None else V2VConfig.fixed(strength)
    return V2VConfig(base.motion, SimilarityConfig(enabled=False))


@pytest.mark.parametrize("batch_steps", [True, False])
def test_one_output_frame_per_input_frame_and_deterministic(batch_steps: bool) -> None:
    pipe = _pipe()
    clip = _clip(pipe, 22)  # 5 whole chunks of 4 and a short one
    out = np.stack(list(pipe.video_to_video("a blue square", clip, seed=1, steps=3, batch_steps=batch_steps)))
    assert out.shape == clip.shape and out.dtype == np.uint8
    again = np.stack(list(pipe.video_to_video("a blue square", clip, seed=1, steps=3, batch_steps=batch_steps)))
    np.testing.assert_array_equal(out, again)
    other = np.stack(list(pipe.video_to_video("a blue square", clip[::-1].copy(), seed=1, steps=3)))
    assert not np.array_equal(out, other)  # the input matters


@pytest.mark.parametrize("batch_steps", [True, False])
def test_strength_one_equals_text_to_video(batch_steps: bool) -> None:
    pipe = _pipe()
    clip = _clip(pipe, 16)
    kw = dict(seed=2, steps=2, batch_steps=batch_steps)
    v2v = np.stack(list(pipe.video_to_video("red", clip, strength=1.0, **kw)))  # type: ignore[arg-type]
    np.testing.assert_array_equal(v2v, pipe.generate("red", 16, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("batch_steps", [True, False])
def test_output_frame_i_is_made_from_input_chunk_i(batch_steps: bool) -> None:
    """At a strength near 0 each output chunk is the autoencoder's reconstruction of the input chunk with the
    same index: the alignment of output and input, end to end (the same holds at any strength by construction)."""
    pipe = _pipe()
    clip = _clip(pipe, 20, motion="bounce")
    out = np.stack(list(pipe.video_to_video("red", clip, v2v=_no_skips(0.001), steps=2, batch_steps=batch_steps)))
    per = pipe.frames_per_chunk
    with torch.inference_mode():  # every group after its past
        recon = frames_to_uint8(pipe.autoencoder.decode(pipe.family.encode(clip[:20])))
    diff = np.abs(out.astype(int) - recon.astype(int))
    assert diff.mean() < 1.0, diff.mean()
    shifted = np.abs(out[per:].astype(int) - recon[:-per].astype(int)).mean()
    assert shifted > 4 * diff.mean() + 1  # one chunk off would show


@pytest.mark.parametrize("batch_steps", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_measured_lag_is_within_its_bound(batch_steps: bool, steps: int) -> None:
    pipe = _pipe()
    stream = pipe.video_stream("red", _clip(pipe, 28), v2v=_no_skips(), steps=steps, batch_steps=batch_steps)
    frames = list(stream)
    assert stream.feed is not None
    st, cfg, per = stream.feed.stats, stream.state.cfg, pipe.frames_per_chunk
    assert len(frames) == st.frames_out == st.frames_in == 28 and st.skipped == 0
    assert st.max_latency_frames == latency_bound(cfg, per) == (steps * per - 1 if batch_steps else per - 1)
    assert st.max_content_lag_frames == 0


@pytest.mark.parametrize("batch_steps", [True, False])
def test_static_input_skips_the_model_within_the_skip_bound(batch_steps: bool) -> None:
    pipe = _pipe()
    still = _clip(pipe, 48, motion="still")
    cfg = V2VConfig(similarity=SimilarityConfig(threshold=0.01, max_skips=2))
    stream = pipe.video_stream("red", still, v2v=cfg, steps=3, batch_steps=batch_steps)
    out = np.stack(list(stream))
    assert stream.feed is not None
    st, per = stream.feed.stats, pipe.frames_per_chunk
    assert out.shape == still.shape and st.skipped > 0 and st.model_chunks + st.skipped == st.chunks_in == 12
    assert st.max_content_lag_frames <= content_lag_bound(stream.state.cfg, per, 2)
    chunks = out.reshape(12, per, *out.shape[1:])
    repeats = sum(any(np.array_equal(chunks[i], chunks[j]) for j in range(i)) for i in range(12))
    assert repeats >= st.skipped  # every skipped chunk re-emitted an earlier output


def test_live_source_drops_predictably_when_the_engine_falls_behind() -> None:
    """Ten frames arrive for every chunk of four the engine takes: the buffer of 8 drops the oldest, exactly."""
    pipe = _pipe()
    clip = _clip(pipe, 50)
    source = LiveSource(capacity=8)
    stream = pipe.video_stream("red", source, v2v=_no_skips(0.7), steps=2)
    out = []
    for r in range(5):
        for frame in clip[10 * r : 10 * (r + 1)]:
            source.push(frame)
        out += stream.step()
        assert source.buffered() == 4
    assert source.dropped == 2 + 4 * 6 and source.taken == 20
    source.end()
    out += list(stream)
    assert stream.feed is not None
    st = stream.feed.stats
    assert source.pushed == 50 == source.taken + source.dropped and st.dropped == 26
    assert len(out) == st.frames_in == source.taken == 24


def test_live_source_with_a_producer_thread_keeps_its_counts() -> None:
    pipe = _pipe()
    clip = _clip(pipe, 120)
    source = LiveSource(capacity=8)
    stream = pipe.video_stream("red", source, v2v=_no_skips(0.7), steps=1)

    def produce() -> None:
        for frame in clip:
            source.push(frame)
            time.sleep(0.001)
        source.end()

    producer = threading.Thread(target=produce)
    producer.start()
    out = list(stream)
    producer.join()
    assert stream.feed is not None
    st = stream.feed.stats
    assert source.pushed == 120 == source.taken + source.dropped and st.dropped == source.dropped
    assert len(out) == st.frames_in == source.taken


def test_live_source_that_breaks_ends_the_stream_with_its_message() -> None:
    pipe = _pipe()
    source = LiveSource(capacity=8)
    for frame in _clip(pipe, 6):
        source.push(frame)
    source.end("the webcam disconnected")
    stream = pipe.video_stream("red", source, steps=2)
    out = list(stream)
    assert len(out) == 6 and source.error == "the webcam disconnected"


def test_detach_input_falls_back_to_text_to_video() -> None:
    pipe = _pipe()
    source = LiveSource(capacity=16)
    stream = pipe.video_stream("red", source, steps=2)
    for frame in _clip(pipe, 8):
        source.push(frame)
    frames = stream.step() + stream.step() + stream.step()
    stream.detach_input()
    for _ in range(6):
        frames += stream.step()
    assert len(frames) >= 12 and not stream.state.inputs


def test_bad_input_gives_clear_errors(tmp_path: Path) -> None:
    pipe = _pipe()
    with pytest.raises(InputError, match="not found"):
        pipe.video_stream("red", tmp_path / "missing.mp4")
    corrupt = tmp_path / "bad.mp4"
    corrupt.write_bytes(b"garbage" * 100)
    with pytest.raises(InputError, match="corrupt"):
        pipe.video_to_video("red", corrupt)
    frames = list(_clip(pipe, 6)) + [np.zeros((32, 32), np.float32)]
    with pytest.raises(InputError, match="frame 6"):
        list(pipe.video_to_video("red", frames))
    with pytest.raises(InputError, match="strength"):
        pipe.video_to_video("red", frames, strength=1.5)


def test_odd_frame_sizes_are_fitted() -> None:
    pipe = _pipe()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (27, 45, 3), dtype=np.uint8) for _ in range(6)] + [np.zeros((50, 21), np.uint8)]
    out = list(pipe.video_to_video("red", frames, steps=1))
    assert len(out) == 7 and all(f.shape == (*pipe.frame_size, 3) for f in out)


# -- CLI ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v2v_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("v2v")
    cfg = tiny_config(latent_height=4, latent_width=4, chunk_frames=1, text_dim=384)  # MiniLM's width: the CLI loads it
    ae = TinyAutoencoder(AutoencoderConfig(latent_channels=cfg.in_channels, width=8, decoder_context=1))
    Pipeline(CausalWanDiT(cfg), ae, RandomTextEncoder(384)).save(folder / "model")
    clip = render(sample_scene(5, num_objects=1, motion="right", height=32, width=32), 0, 18)
    with VideoWriter(folder / "in.mp4", 12.0, 32, 32) as w:
        for frame in clip:
            w.write(frame)
    return folder / "model", folder / "in.mp4"


def test_cli_generate_with_input_writes_one_frame_per_input_frame(
    tmp_path: Path, v2v_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, clip = v2v_files
    out = tmp_path / "out.mp4"
    args = ["generate", "a blue square", "--input", str(clip), "-o", str(out), "--model", str(model), "--steps", "2"]
    assert main(args + ["--strength", "0.7"]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (18, 32, 32, 3) and fps == 12.0
    err = capsys.readouterr().err
    assert "input: 18 frames in 5 chunks" in err and "0 dropped" in err and "(bound 7)" in err
    assert main(args + ["--seconds", "1", "--no-skip-similar", "--strength-range", "0.5:0.7", "-o", str(out)]) == 0
    assert read_video(out)[0].shape[0] == 12


def test_cli_generate_input_errors(
    tmp_path: Path, v2v_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, clip = v2v_files
    out = str(tmp_path / "v.mp4")
    base = ["generate", "x", "-o", out, "--model", str(model)]
    _fails(base + ["--input", str(tmp_path / "nope.mp4")], capsys, "video file not found")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 500)
    _fails(base + ["--input", str(bad)], capsys, "could not read video")
    _fails(base + ["--input", str(clip), "--strength", "0"], capsys, "strength")
    _fails(base + ["--input", str(clip), "--strength", "0.5", "--motion-aware"], capsys, "--strength")
    _fails(base + ["--input", str(clip), "--strength-range", "high"], capsys, "--strength-range")
    _fails(base + ["--input", str(clip), "--strength-range", "0.9:0.2"], capsys, "low <= high")
    _fails(base + ["--strength", "0.5"], capsys, "need --input")
    assert not Path(out).exists()


def test_a_model_folder_brings_its_own_strengths(
    tmp_path: Path, v2v_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`motion` in framecast.json sets the model's strengths under every front end; flags still override them,
    and an unknown key is a clear error."""
    model, clip = v2v_files
    folder = _copy_model(model, tmp_path / "m", {"low": 0.8, "high": 0.8, "fixed": 0.9})
    pipe = Pipeline.load(folder)
    assert (pipe.motion_config().low, pipe.motion_config(high=0.95).high) == (0.8, 0.95)
    stream = pipe.video_stream("red", _clip(pipe, 8), steps=1)
    assert stream.feed is not None and stream.feed.cfg.motion.fixed == 0.9
    out = str(tmp_path / "out.mp4")
    args = ["generate", "a blue square", "--input", str(clip), "-o", out, "--model", str(folder), "--steps", "1"]
    assert main(args) == 0
    assert "last strength 0.8\n" in capsys.readouterr().err
    assert main(args + ["--strength-range", "0.6:0.6"]) == 0
    assert "last strength 0.6\n" in capsys.readouterr().err
    _copy_model(model, tmp_path / "bad", {"lowest": 0.1})
    _fails(["generate", "x", "-o", out, "--model", str(tmp_path / "bad")], capsys, "unknown motion keys")


def _copy_model(model: Path, dst: Path, motion: dict[str, float]) -> Path:
    import json
    import shutil

    shutil.copytree(model, dst)
    cfg = json.loads((dst / "framecast.json").read_text())
    (dst / "framecast.json").write_text(json.dumps({**cfg, "motion": motion}))
    return dst
