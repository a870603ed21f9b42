"""Tests for framecast.io.video (PyAV MP4 writer/reader) and framecast.io.frames conversions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from framecast.errors import InputError
from framecast.io.frames import frames_to_uint8, uint8_to_frames
from framecast.io.video import VideoWriter, read_video

H, W, T = 32, 48, 6


def gradient_clip(t: int = T, h: int = H, w: int = W) -> np.ndarray:
    """Smooth moving gradient, uint8 (T, H, W, 3)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(t):
        r = 255 * xs / (w - 1)
        g = 255 * ys / (h - 1)
        b = np.full_like(xs, 40.0 * i)
        frames.append(np.stack([r, g, b], axis=-1))
    clip: np.ndarray = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
    return clip


def write_clip(path: Path, clip: np.ndarray, fps: float = 12.0) -> None:
    with VideoWriter(path, fps=fps, width=clip.shape[2], height=clip.shape[1]) as writer:
        for frame in clip:
            writer.write(frame)


def test_write_read_roundtrip(tmp_path: Path) -> None:
    clip = gradient_clip()
    path = tmp_path / "out.mp4"
    write_clip(path, clip)
    frames, fps = read_video(path)
    assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(12.0)
    assert np.abs(frames.astype(np.float32) - clip.astype(np.float32)).mean() < 4.0
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_read_max_frames_and_ntsc_rate(tmp_path: Path) -> None:
    path = tmp_path / "ntsc.mp4"
    write_clip(path, gradient_clip(), fps=30000 / 1001)
    frames, fps = read_video(path, max_frames=2)
    assert frames.shape[0] == 2
    assert fps == pytest.approx(29.97, abs=1e-2)


def test_writer_rejects_bad_paths_and_sizes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"must end in \.mp4"):
        VideoWriter(tmp_path / "out.avi", fps=12, width=W, height=H)
    with pytest.raises(InputError, match="folder does not exist"):
        VideoWriter(tmp_path / "missing" / "out.mp4", fps=12, width=W, height=H)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="folder does not exist"):
        VideoWriter(blocker / "out.mp4", fps=12, width=W, height=H)
    with pytest.raises(InputError, match="width must be a positive even integer"):
        VideoWriter(tmp_path / "odd.mp4", fps=12, width=33, height=H)
    with pytest.raises(InputError, match="height must be a positive even integer"):
        VideoWriter(tmp_path / "odd.mp4", fps=12, width=W, height=15)
    with pytest.raises(InputError, match="fps"):
        VideoWriter(tmp_path / "fps.mp4", fps=0, width=W, height=H)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_writer_rejects_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            VideoWriter(locked / "out.mp4", fps=12, width=W, height=H)
    finally:
        locked.chmod(0o700)


def test_writer_rejects_wrong_frame(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "a.mp4", fps=12, width=W, height=H) as writer:
        with pytest.raises(InputError, match=r"uint8 array of shape \(32, 48, 3\)"):
            writer.write(np.zeros((H, W, 3), np.float32))
        with pytest.raises(InputError, match=r"uint8 array of shape"):
            writer.write(np.zeros((H + 2, W, 3), np.uint8))
        writer.write(np.zeros((H, W, 3), np.uint8))
    assert read_video(tmp_path / "a.mp4")[0].shape == (1, H, W, 3)


def test_failed_write_leaves_no_file_and_keeps_existing(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(path, fps=12, width=W, height=H) as writer:
        writer.write(gradient_clip(1)[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), VideoWriter(path, fps=12, width=W, height=H) as writer:
        writer.write(gradient_clip(1)[0])
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_close_without_frames_saves_nothing(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "empty.mp4", fps=12, width=W, height=H)
    with pytest.raises(InputError, match="no frames were written"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="video file not found"):
        read_video(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 definitely not a video" * 20)
    with pytest.raises(InputError, match="could not read video"):
        read_video(corrupt)
    with pytest.raises(InputError, match="max_frames"):
        read_video(corrupt, max_frames=0)


def test_read_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "full.mp4"
    write_clip(path, gradient_clip())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:64])
    with pytest.raises(InputError, match="cut.mp4"):
        read_video(cut)


def test_read_file_without_video_stream(tmp_path: Path) -> None:
    import av

    path = tmp_path / "audio.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(InputError, match="has no video stream"):
        read_video(path)


def test_frames_roundtrip() -> None:
    clip = gradient_clip(3, 8, 8)
    frames = uint8_to_frames(clip)
    assert frames.shape == (1, 3, 3, 8, 8) and frames.dtype == torch.float32
    assert frames.min() >= -1 and frames.max() <= 1
    np.testing.assert_array_equal(frames_to_uint8(frames), clip)
    np.testing.assert_array_equal(frames_to_uint8(frames[0]), clip)
    assert uint8_to_frames(clip[0]).shape == (1, 3, 1, 8, 8)


def test_frames_to_uint8_clamps_and_validates() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5).expand(3, 1, 1, 5)
    assert frames_to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(InputError, match="takes one clip"):
        frames_to_uint8(torch.zeros(2, 3, 1, 4, 4))
    with pytest.raises(InputError, match="3 channels"):
        frames_to_uint8(torch.zeros(1, 4, 1, 4, 4))
    with pytest.raises(InputError, match="uint8"):
        uint8_to_frames(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(InputError, match=r"\(T, H, W, 3\)"):
        uint8_to_frames(np.zeros((1, 4, 4, 4), np.uint8))


def moving_clip(t: int = 48, h: int = 64, w: int = 64) -> np.ndarray:
    """A disc moving over moving stripes, with fixed noise: real motion, uint8 (T, H, W, 3)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 8.0, (t, h, w, 3)).astype(np.float32)
    frames = []
    for i in range(t):
        cx, cy = w / 2 + w / 3 * np.sin(i / 7), h / 2 + h / 3 * np.cos(i / 5)
        r = 255.0 * ((xs - cx) ** 2 + (ys - cy) ** 2 < (w / 6) ** 2)
        g = 128 + 127 * np.sin(xs / 6 + i / 3)
        b = 128 + 127 * np.cos(ys / 5 - i / 4)
        frames.append(np.stack([r, g, b], axis=-1))
    clip: np.ndarray = np.clip(np.stack(frames) + noise, 0, 255).astype(np.uint8)
    return clip


def test_writer_is_deterministic(tmp_path: Path) -> None:
    """The same frames give the same bytes, every time (x264's threads and AVX-512 code made them differ)."""
    import av

    clip = moving_clip(64)
    paths = [tmp_path / f"run{i}.mp4" for i in range(4)]
    for path in paths:
        write_clip(path, clip, fps=24)
    data = [path.read_bytes() for path in paths]
    assert all(d == data[0] for d in data[1:]), "the same frames were encoded to different bytes"
    assert b"Lavf" not in data[0]  # no muxer version tag (bit-exact container)
    with av.open(str(paths[0])) as container:
        assert "creation_time" not in container.metadata
        assert "creation_time" not in container.streams.video[0].metadata
    assert read_video(paths[0])[0].shape == clip.shape


def test_cli_generate_is_deterministic(tmp_path: Path) -> None:
    """Two `framecast generate` runs with one seed write the same bytes; another seed writes others."""
    from framecast.cli import main

    def generate(name: str, seed: int) -> bytes:
        out = tmp_path / name
        args = ["generate", "a red circle moving left", "-o", str(out), "--random-weights", "--seconds", "2"]
        assert main([*args, "--seed", str(seed)]) == 0
        return out.read_bytes()

    first, second, other = generate("a.mp4", 3), generate("b.mp4", 3), generate("c.mp4", 0)
    assert first == second
    assert first != other
