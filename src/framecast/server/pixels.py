"""The pixel limit of video-to-video input (`ServerSettings.max_input_pixels`), checked before decoding.

A small file or message can declare a huge frame (a 555 KB H.264 file of 8192x8192 frames, a JPEG header that
says 30000x30000): decoding it would cost gigabytes and seconds of CPU. So the size a frame declares is read
first, from the container's stream (uploads: FFmpeg's own probe capped by `max_pixels` too, so it never
decodes a frame over the limit) or from the image header (webcam frames, WebSocket or WebRTC), and an input over
the limit is refused with a clear message before any pixel is decoded.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
from PIL import Image

from framecast.v2v import fit_frame


class TooManyPixelsError(ValueError):
    """An input frame over the pixel limit (found before it was decoded)."""


def too_many(what: str, width: int, height: int, limit: int) -> str:
    return f"{what} {width}x{height} ({width * height:,} pixels), over the limit of {limit:,} pixels a frame"


def check_pixels(what: str, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise TooManyPixelsError(too_many(what, width, height, limit))


def check_video_file(path: Path, limit: int) -> None:
    """`TooManyPixelsError` when the file's first video stream declares frames over `limit` pixels (or a size
    that cannot be read without decoding a frame over it). Unreadable files pass: the caller's reader says why."""
    options = {"max_pixels": str(limit)}  # FFmpeg's probe may decode a frame: never one over the limit
    try:
        # PyAV's stub types stream_options as list[str]; it is a list of dicts, one per stream
        with av.open(str(path), stream_options=[options] * 16) as container:  # type: ignore[list-item]
            streams = container.streams.video
            if not streams:
                return
            ctx = streams[0].codec_context
            width, height = ctx.width, ctx.height
    except (av.FFmpegError, OSError, ValueError):
        return
    if width * height == 0:
        raise TooManyPixelsError(f"the video's frame size cannot be read, or is over the limit of {limit:,} pixels")
    check_pixels("the video's frames are", width, height, limit)


def decode_webcam_jpeg(data: bytes, limit: int, size: tuple[int, int]) -> np.ndarray:
    """A webcam frame the client sent (JPEG or PNG bytes) -> uint8 (H, W, 3) fitted to `size` (h, w).

    The header's size is checked before the pixels are decoded. CPU work: call it off the event loop.
    ValueError (`TooManyPixelsError` for the size) when the bytes are not such an image.
    """
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
        check_pixels("a webcam frame is", img.width, img.height, limit)
        rgb = np.asarray(img.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(str(e)) from None
    return fit_frame(rgb, size)


def webcam_array(frame: av.VideoFrame, size: tuple[int, int]) -> np.ndarray:
    """A decoded WebRTC webcam frame -> uint8 (H, W, 3) fitted to `size` (CPU work: off the event loop)."""
    return fit_frame(frame.to_ndarray(format="rgb24"), size)
