"""Video to video, the pieces around the model: controller, similarity filter, frames and sources."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from framecast.errors import InputError
from framecast.io.video import VideoWriter
from framecast.v2v import (
    IteratorSource,
    LiveSource,
    MotionConfig,
    MotionController,
    MotionState,
    SimilarityConfig,
    SimilarityFilter,
    VideoFileSource,
    as_rgb,
    as_source,
    fit_chunk,
    fit_frame,
    frame_motion,
    step,
    target_strength,
)
from framecast.world import render, sample_scene

# -- controller ------------------------------------------------------------------------------------


def test_target_strength_is_monotone_and_within_bounds() -> None:
    cfg = MotionConfig(low=0.3, high=0.9, scale=0.2)
    motions = np.linspace(0.0, 1.0, 201)
    targets = [target_strength(cfg, float(m)) for m in motions]
    assert all(b <= a for a, b in zip(targets, targets[1:], strict=False))  # more motion, lower strength
    assert targets[0] == 0.9 and targets[-1] == pytest.approx(0.3)
    assert target_strength(cfg, 0.1) == pytest.approx(0.6)  # linear in between: half the scale, half way
    assert target_strength(cfg, 5.0) == pytest.approx(0.3)  # clipped


def test_smoothed_strength_respects_bounds_on_any_motion() -> None:
    cfg = MotionConfig(low=0.45, high=0.8, ema=0.3)
    rng = np.random.default_rng(0)
    state = MotionState()
    for m in np.abs(rng.standard_cauchy(500)):  # heavy-tailed motion, spikes included
        state = step(cfg, state, float(m))
        assert state.strength is not None and 0.45 <= state.strength <= 0.8


def test_ema_on_synthetic_motion() -> None:
    """First chunk: its target. Then s_t = s_{t-1} + a (target - s_{t-1}): a step in motion decays geometrically."""
    cfg = MotionConfig(low=0.4, high=0.8, scale=0.2, ema=0.25)
    state = step(cfg, MotionState(), 0.0)
    assert state.strength == pytest.approx(0.8)
    for t in range(1, 12):  # motion jumps to full scale: target 0.4
        state = step(cfg, state, 0.2)
        assert state.strength == pytest.approx(0.4 + 0.4 * 0.75**t)
    no_smoothing = step(MotionConfig(ema=1.0), step(MotionConfig(ema=1.0), MotionState(), 0.0), 0.3)
    assert no_smoothing.strength == pytest.approx(MotionConfig().low)


def test_controller_off_gives_the_fixed_strength() -> None:
    cfg = MotionConfig(enabled=False, fixed=0.55)
    state = MotionState()
    for m in (0.0, 0.5, 0.01):
        state = step(cfg, state, m)
        assert state.strength == 0.55


def test_frame_motion_is_the_rms_of_consecutive_differences() -> None:
    black, white = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    assert frame_motion(np.stack([black] * 4)) == 0.0
    assert frame_motion(np.stack([black, white, black])) == pytest.approx(2.0)
    assert frame_motion(np.stack([black])) == 0.0
    assert frame_motion(np.stack([white]), previous=black) == pytest.approx(2.0)  # the chunk before counts


def test_controller_on_world_clips_gives_less_noise_to_faster_motion() -> None:
    still = render(sample_scene(1, num_objects=1, motion="still"), 0, 16)
    moving = render(sample_scene(1, num_objects=1, motion="left"), 0, 16)
    cfg = MotionConfig(scale=0.05, ema=1.0)
    s_still = [MotionController(cfg).update(still[i : i + 4]) for i in range(0, 16, 4)]
    s_moving = [MotionController(cfg).update(moving[i : i + 4]) for i in range(0, 16, 4)]
    assert all(s == cfg.high for s in s_still)
    assert all(m < cfg.high for m in s_moving)


def test_motion_config_rejects_bad_bounds() -> None:
    for kw in ({"low": 0.9, "high": 0.5}, {"low": 0.0}, {"high": 1.5}, {"fixed": 0.0}, {"ema": 0.0}, {"scale": 0.0}):
        with pytest.raises(InputError):
            MotionConfig(**kw)  # type: ignore[arg-type]


# -- similarity filter ------------------------------------------------------------------------------


def _chunk(value: int) -> np.ndarray:
    return np.full((4, 8, 8, 3), value, np.uint8)


def test_similarity_filter_skips_at_most_max_skips_in_a_row() -> None:
    f = SimilarityFilter(SimilarityConfig(threshold=0.01, max_skips=3))
    decisions = [f.skip(_chunk(100)) for _ in range(12)]
    assert decisions == [False, True, True, True] * 3
    assert not f.skip(_chunk(140))  # different: through, and the new reference
    assert f.skip(_chunk(140))


def test_similarity_filter_compares_with_the_last_chunk_the_model_saw() -> None:
    """A slow drift (1 level a chunk, each step under the threshold) is not skipped for long."""
    f = SimilarityFilter(SimilarityConfig(threshold=1.5 / 127.5, max_skips=100))
    decisions = [f.skip(_chunk(100 + i)) for i in range(9)]
    assert decisions == [False, True, False, True, False, True, False, True, False]


def test_similarity_filter_off_or_not_allowed_never_skips() -> None:
    off = SimilarityFilter(SimilarityConfig(enabled=False))
    assert not any(off.skip(_chunk(7)) for _ in range(5))
    f = SimilarityFilter()
    assert not f.skip(_chunk(7), allowed=False) and not f.skip(_chunk(7), allowed=False)
    assert f.skip(_chunk(7))


def test_stochastic_similarity_filter_skips_in_proportion_to_the_likeness() -> None:
    """Probability 1 - d / threshold: identical chunks always skip (up to max_skips), chunks at or over the
    threshold never; in between, a share near 1 - d / threshold, the same on every run with the same seed."""
    cfg = SimilarityConfig(threshold=4 / 127.5, max_skips=1000, stochastic=True, seed=3)
    same = SimilarityFilter(cfg)
    assert [same.skip(_chunk(50)) for _ in range(6)] == [False] + [True] * 5
    far = SimilarityFilter(cfg)
    assert not any(far.skip(_chunk(50 + 4 * (i % 2))) for i in range(20))  # d = threshold: never

    def shares(seed: int) -> list[bool]:  # d = 1 level against the reference each time: probability 3/4
        f = SimilarityFilter(SimilarityConfig(threshold=4 / 127.5, max_skips=1000, stochastic=True, seed=seed))
        out = []
        for _ in range(400):
            f.reference = _chunk(50)
            out.append(f.skip(_chunk(51)))
        return out

    share = sum(shares(3)) / 400
    assert 0.65 < share < 0.85 and shares(3) == shares(3)


# -- frames -----------------------------------------------------------------------------------------


def test_as_rgb_converts_gray_and_rgba_and_rejects_the_rest() -> None:
    assert as_rgb(np.zeros((10, 12), np.uint8)).shape == (10, 12, 3)
    assert as_rgb(np.zeros((10, 12, 4), np.uint8)).shape == (10, 12, 3)
    with pytest.raises(InputError, match="uint8"):
        as_rgb(np.zeros((10, 12, 3), np.float32))
    with pytest.raises(InputError, match=r"frame 3 must have shape"):
        as_rgb(np.zeros((10, 12, 2), np.uint8), 3)
    with pytest.raises(InputError, match="at least 8 px"):
        as_rgb(np.zeros((4, 12, 3), np.uint8))
    with pytest.raises(InputError, match="numpy"):
        as_rgb([[1, 2, 3]])


def test_fit_frame_crops_to_the_aspect_ratio_and_resizes_odd_sizes() -> None:
    wide = np.zeros((27, 81, 3), np.uint8)
    wide[:, :27] = (255, 0, 0)  # left third red, middle green, right third blue: the crop keeps the middle
    wide[:, 27:54] = (0, 255, 0)
    wide[:, 54:] = (0, 0, 255)
    out = fit_frame(wide, (32, 32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[:, 2:-2, 1] > 200).all() and (out[:, 2:-2, 0] < 50).all()
    odd = np.random.default_rng(0).integers(0, 256, (63, 65, 3), dtype=np.uint8)
    assert fit_frame(odd, (64, 64)).shape == (64, 64, 3)
    same = np.ones((32, 32, 3), np.uint8)
    assert fit_frame(same, (32, 32)) is same


def test_fit_chunk_pads_a_short_last_chunk() -> None:
    frames = [np.full((16, 16, 3), i, np.uint8) for i in range(3)]
    chunk = fit_chunk(frames, (16, 16), 4)
    assert chunk.shape == (4, 16, 16, 3) and list(chunk[:, 0, 0, 0]) == [0, 1, 2, 2]


# -- sources ----------------------------------------------------------------------------------------


def _write(path: Path, clip: np.ndarray, fps: float = 12.0) -> Path:
    with VideoWriter(path, fps=fps, width=clip.shape[2], height=clip.shape[1], crf=0) as w:
        for frame in clip:
            w.write(frame)
    return path


def test_video_file_source_reads_frames_in_chunks(tmp_path: Path) -> None:
    clip = render(sample_scene(2, height=32, width=32), 0, 10)
    src = VideoFileSource(_write(tmp_path / "in.mp4", clip, fps=8.0))
    assert src.fps == 8.0
    grabs = []
    while (g := src.poll(4)) is not None:
        grabs.append(g)
    assert [len(g.frames) for g in grabs] == [4, 4, 2] and src.ended and src.dropped == 0
    frames = np.stack([f for g in grabs for f in g.frames])
    assert np.abs(frames.astype(int) - clip.astype(int)).mean() < 3  # H.264 at crf 0, through yuv420p


def test_video_file_source_clear_errors(tmp_path: Path) -> None:
    import av

    with pytest.raises(InputError, match="video file not found"):
        VideoFileSource(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01 not a video at all" * 40)
    with pytest.raises(InputError, match="could not read video .*corrupt"):
        VideoFileSource(corrupt)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        VideoFileSource(empty)
    zero = tmp_path / "zero.mp4"  # a container written without a single frame
    container = av.open(str(zero), "w")
    stream = container.add_stream("libx264", rate=12)
    stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
    container.start_encoding()
    container.close()
    with pytest.raises(InputError, match="no frames"):
        VideoFileSource(zero)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(_write(tmp_path / "full.mp4", render(sample_scene(0, height=32, width=32), 0, 8)).read_bytes()[:80])
    with pytest.raises(InputError, match="cut.mp4"):
        VideoFileSource(cut)


def test_video_file_source_with_odd_frame_size(tmp_path: Path) -> None:
    import av

    path = tmp_path / "odd.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=12)
        s.width, s.height, s.pix_fmt = 33, 27, "yuv444p"
        for i in range(5):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((27, 33, 3), 40 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    grab = VideoFileSource(path).poll(8)
    assert grab is not None and len(grab.frames) == 5 and grab.frames[0].shape == (27, 33, 3)
    assert fit_chunk(grab.frames, (32, 32), 8).shape == (8, 32, 32, 3)


def test_iterator_source_and_as_source() -> None:
    frames = [np.full((16, 16, 3), i, np.uint8) for i in range(6)]
    src = as_source(iter(frames))
    assert isinstance(src, IteratorSource)
    g1, g2 = src.poll(4), src.poll(4)
    assert g1 is not None and g2 is not None and len(g2.frames) == 2 and src.poll(4) is None and src.ended
    bad = as_source([frames[0], np.zeros((16, 16), np.float64)])
    with pytest.raises(InputError, match="frame 1"):
        bad.poll(4)
    with pytest.raises(InputError, match=r"\(T, H, W, 3\)"):
        as_source(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="no frames"):
        as_source(np.zeros((0, 16, 16, 3), np.uint8))
    with pytest.raises(InputError, match="cannot read input frames"):
        as_source(42)


def test_live_source_drops_oldest_and_counts() -> None:
    src = LiveSource(capacity=6)
    for i in range(10):
        src.push(np.full((8, 8, 3), i, np.uint8))
    assert src.dropped == 4 and src.buffered() == 6
    g = src.poll(4)
    assert g is not None and [int(f[0, 0, 0]) for f in g.frames] == [4, 5, 6, 7]  # the newest kept, in order
    assert src.poll(4) is None  # two left: not a whole chunk
    src.end("the webcam disconnected")
    last = src.poll(4)
    assert last is not None and len(last.frames) == 2 and src.poll(4) is None
    assert src.ended and src.error == "the webcam disconnected"
    assert not src.push(np.zeros((8, 8, 3), np.uint8))  # ignored after the end
    assert src.pushed == src.taken + src.dropped + src.buffered()
    fresh = LiveSource(capacity=4)
    for _ in range(3):
        fresh.push(np.zeros((8, 8, 3), np.uint8))
    before = fresh.last_push
    fresh.clear()  # a new stream on the same source: stale frames go, counted
    assert fresh.buffered() == 0 and fresh.dropped == 3 and fresh.last_push >= before
    with pytest.raises(InputError, match="capacity"):
        LiveSource(capacity=2).poll(4)


def test_live_source_is_bounded_and_consistent_under_threads() -> None:
    src = LiveSource(capacity=8)
    frame = np.zeros((8, 8, 3), np.uint8)

    def produce() -> None:
        for _ in range(3000):
            src.push(frame)
            assert src.buffered() <= 8
        src.end()

    producer = threading.Thread(target=produce)
    producer.start()
    taken = 0
    while not (src.ended and src.buffered() == 0):
        g = src.poll(4, timeout=0.01)
        taken += 0 if g is None else len(g.frames)
    producer.join()
    assert src.pushed == 3000 and taken == src.taken and src.pushed == src.taken + src.dropped


def test_live_source_poll_waits_for_a_chunk() -> None:
    src = LiveSource(capacity=8)
    assert src.poll(2, timeout=0.05) is None
    timer = threading.Timer(0.05, lambda: [src.push(np.zeros((8, 8, 3), np.uint8)) for _ in range(2)])
    timer.start()
    g = src.poll(2, timeout=5.0)
    timer.join()
    assert g is not None and len(g.frames) == 2
