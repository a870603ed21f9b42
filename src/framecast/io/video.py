"""Video files through PyAV: an H.264 MP4 writer and a reader.

Frames on this boundary are user-facing numpy uint8 arrays (H, W, 3), RGB, values in [0, 255];
a decoded clip is (T, H, W, 3).

The writer is deterministic: the same frames give the same bytes on the same machine (see `VideoWriter`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import platform
import uuid
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from framecast.errors import FramecastError, InputError


def _import_av() -> Any:
    """Import PyAV, or raise a clear error naming the package."""
    try:
        import av
    except ImportError as err:
        raise FramecastError("PyAV is not installed; install it with: pip install av") from err
    return av


def check_output_path(path: Path) -> None:
    """Raise `InputError` unless `path` is an .mp4 file in an existing, writable folder."""
    if path.suffix.lower() != ".mp4":
        raise InputError(f"video output path must end in .mp4, got {str(path)!r}")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"video output folder does not exist: {parent} (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"video output folder is not writable: {parent}")
    if path.is_dir():
        raise InputError(f"video output path is a folder, expected an .mp4 file path: {path}")


def _check_geometry(fps: float, width: int, height: int, crf: int) -> None:
    """Raise `InputError` on a frame rate, size or crf that libx264/yuv420p cannot take."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be a positive finite number, got {fps!r}")
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % 2:
            raise InputError(f"video {name} must be a positive even integer (H.264 yuv420p), got {size!r}")
    if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
        raise InputError(f"crf must be an integer in [0, 51], got {crf!r}")


# Features x264's "AVX2" level uses; every CPU with AVX-512 has them (numpy's names).
_X264_AVX2_FEATURES = ("AVX2", "FMA3", "BMI", "BMI2", "LZCNT")


def _cpu_features() -> dict[str, bool]:
    """The x86 features this CPU and OS support, by numpy's names; {} where unknown."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, numpy 1
        try:  # numpy's runtime dispatch table; it checks what the OS enables too
            features = getattr(importlib.import_module(module), "__cpu_features__", None)
        except ImportError:
            continue
        if isinstance(features, dict):
            return {str(k): bool(v) for k, v in features.items()}
    try:  # Linux without that table: the kernel's flags
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return {}
    names = {"avx512f": "AVX512F", "avx2": "AVX2", "fma": "FMA3", "bmi1": "BMI", "bmi2": "BMI2", "abm": "LZCNT"}
    return {names[f]: True for f in flags if f in names}


@functools.cache
def _x264_params() -> str:
    """x264 settings that make its output a function of its input alone (a libx264 `x264-params` string).

    One encoding thread, no sliced or lookahead threads: the bitstream does not depend on the number of
    CPUs. And no AVX-512: with the AVX-512 code of the x264 that PyAV bundles (core 165), the lookahead's
    mb-tree results change from run to run on small frames (the same 96 frames of 64x64 gave 10 different
    files in 20 runs); capped at AVX2, which every AVX-512 CPU has, every run gives the same bytes.
    """
    params = "threads=1:lookahead-threads=1:sliced-threads=0"
    if platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686"):
        features = _cpu_features()
        if features.get("AVX512F") and all(features.get(name) for name in _X264_AVX2_FEATURES):
            params += ":asm=AVX2"
    return params


class VideoWriter:
    """Write RGB uint8 frames (H, W, 3) to an H.264 (libx264, yuv420p) MP4 file.

    Frames go to a temporary file next to `path`, renamed onto `path` only by a successful `close()`;
    a failed or aborted run leaves no partial file and keeps any existing file at `path`.
    Use as a context manager: leaving the block on an exception aborts the file.

    The output is deterministic: writing the same frames with the same settings gives the same bytes
    (on the same machine and PyAV build). The encoder runs on one thread with the settings of
    `_x264_params`, and the container is written bit-exact: no creation time, no library version string.
    """

    def __init__(
        self, path: str | Path, fps: float, width: int, height: int, crf: int = 18, preset: str = "medium"
    ) -> None:
        self.path = Path(path)
        check_output_path(self.path)
        _check_geometry(fps, width, height, crf)
        self.fps, self.width, self.height = float(fps), width, height
        self.frames_written = 0
        self._closed = False
        self._av = _import_av()
        self._tmp = self.path.with_name(f".{self.path.stem}.{uuid.uuid4().hex[:12]}.part.mp4")
        try:
            self._container, self._stream = self._open(crf, preset)
        except (self._av.FFmpegError, OSError, ValueError) as err:
            self._tmp.unlink(missing_ok=True)
            raise InputError(f"could not open {self.path} for H.264 writing: {err}") from err

    def _open(self, crf: int, preset: str) -> tuple[Any, Any]:
        """Open the temporary MP4 container and its libx264 stream."""
        # +bitexact: the muxer leaves out its "Lavf..." encoder tag; nothing here sets a creation_time.
        container = self._av.open(str(self._tmp), mode="w", format="mp4", options={"fflags": "+bitexact"})
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        # One thread, no frame/slice threading (PyAV defaults to thread_count 0 = all CPUs, slice threads);
        # the count also sets the threads of PyAV's RGB -> YUV conversion.
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": _x264_params()}
        return container, stream

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_frame(self, frame: object) -> np.ndarray:
        """Raise `InputError` unless `frame` is uint8 (height, width, 3)."""
        want = (self.height, self.width, 3)
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != want:
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise InputError(f"video frame must be a uint8 array of shape {want}, got {got}")
        return np.ascontiguousarray(frame)

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB frame, uint8 (H, W, 3) in [0, 255]."""
        if self._closed:
            raise InputError(f"cannot write to {self.path}: the writer is closed")
        array = self._check_frame(frame)
        video_frame = self._av.VideoFrame.from_ndarray(array, format="rgb24")
        self._guard(lambda: self._mux(video_frame))
        self.frames_written += 1

    def _mux(self, video_frame: Any) -> None:
        """Encode one frame (or flush the encoder when `video_frame` is None) and mux its packets."""
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)

    def _guard(self, step: Any) -> None:
        """Run `step`; on an FFmpeg/OS error abort the file and raise `InputError`."""
        try:
            step()
        except (self._av.FFmpegError, OSError) as err:
            self.abort()
            raise InputError(f"could not write video {self.path}: {err}") from err

    def _finish(self) -> None:
        """Flush the encoder and close the container."""
        self._mux(None)
        self._container.close()

    def close(self) -> None:
        """Finish the file and move it onto `path`. Raises `InputError` if no frame was written."""
        if self._closed:
            return
        if self.frames_written == 0:
            self.abort()
            raise InputError(f"no frames were written to {self.path}; nothing was saved")
        self._guard(self._finish)
        self._closed = True
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Stop writing and delete the temporary file; `path` is left untouched."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(self._av.FFmpegError, OSError, ValueError):
            self._container.close()
        self._tmp.unlink(missing_ok=True)


def _frame_rate(stream: Any, path: Path) -> float:
    """The stream's frame rate in frames per second."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise InputError(f"video {path} has no frame rate")
    return float(rate)


def _decode(container: Any, limit: int | None) -> list[np.ndarray]:
    """Decode up to `limit` RGB frames (H, W, 3) uint8 from the first video stream."""
    frames: list[np.ndarray] = []
    for frame in container.decode(video=0):
        if limit is not None and len(frames) >= limit:
            break
        frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Read a video file -> (frames uint8 (T, H, W, 3) RGB in [0, 255], fps).

    `max_frames` keeps only the first frames. Missing, unreadable or corrupt files, files without a video
    stream and files with no decodable frame raise `InputError`.
    """
    source = Path(path)
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise InputError(f"max_frames must be a positive integer or None, got {max_frames!r}")
    if not source.is_file():
        raise InputError(f"video file not found: {source}")
    av = _import_av()
    try:
        with av.open(str(source), mode="r") as container:
            if not container.streams.video:
                raise InputError(f"{source} has no video stream")
            fps = _frame_rate(container.streams.video[0], source)
            frames = _decode(container, max_frames)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise InputError(f"could not read video {source}: unreadable or corrupt file ({err})") from err
    if not frames:
        raise InputError(f"video {source} has no frames")
    return np.stack(frames), fps


class VideoReader:
    """Frames of a video file decoded as they are read: uint8 (H, W, 3) RGB, in order; a context manager.

    Opening checks what `read_video` checks (missing, unreadable or corrupt file, no video stream, no
    decodable frame) and raises `InputError`; a file that turns out corrupt later raises it from `read`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"video file not found: {self.path}")
        self._av = _import_av()
        self._container: Any = None
        self.frames_read = 0
        self._next: np.ndarray | None = None
        try:
            self._open()
        except (self._av.FFmpegError, OSError, ValueError) as err:
            self.close()
            raise InputError(f"could not read video {self.path}: unreadable or corrupt file ({err})") from err
        except InputError:
            self.close()
            raise
        if self._next is None:
            self.close()
            raise InputError(f"video {self.path} has no frames")

    def _open(self) -> None:
        if self.path.stat().st_size == 0:
            raise InputError(f"video {self.path} is empty (0 bytes): no frames")
        self._container = self._av.open(str(self.path), mode="r")
        if not self._container.streams:
            raise InputError(f"video {self.path} is empty: no streams, no frames")
        if not self._container.streams.video:
            raise InputError(f"{self.path} has no video stream")
        self.fps = _frame_rate(self._container.streams.video[0], self.path)
        self._decoder = self._container.decode(video=0)
        self._next = self._decode_next()

    def _decode_next(self) -> np.ndarray | None:
        try:
            frame = next(self._decoder, None)
        except (self._av.FFmpegError, OSError, ValueError) as err:
            what = "unreadable or corrupt file" if self.frames_read == 0 else f"corrupt after frame {self.frames_read}"
            raise InputError(f"could not read video {self.path}: {what} ({err})") from err
        return None if frame is None else frame.to_ndarray(format="rgb24")

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end of the file."""
        frame = self._next
        if frame is not None:
            self.frames_read += 1
            self._next = self._decode_next()
        return frame

    def close(self) -> None:
        if self._container is not None:
            with contextlib.suppress(self._av.FFmpegError, OSError, ValueError):
                self._container.close()
            self._container = None
        self._next = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
