"""Frames on the wire (WebSocket): a 12-byte header, then JPEG, PNG or raw RGB bytes.

Webcam frames the client sends are decoded in `pixels` (their size checked first).

Header (network byte order): frame index u32, height u16, width u16, format u8 (1 jpeg, 2 png, 3 raw rgb24),
3 bytes padding. `raw` and `png` are lossless (tests compare them bit for bit); `jpeg` is the default.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

HEADER = struct.Struct("!IHHB3x")
CODES = {"jpeg": 1, "png": 2, "raw": 3}
NAMES = {v: k for k, v in CODES.items()}


def encode_frame(image: np.ndarray, index: int, fmt: str = "jpeg", quality: int = 80) -> bytes:
    """uint8 (H, W, 3) -> header + payload."""
    h, w, _ = image.shape
    head = HEADER.pack(index & 0xFFFFFFFF, h, w, CODES[fmt])
    if fmt == "raw":
        return head + np.ascontiguousarray(image).tobytes()
    buf = io.BytesIO()
    if fmt == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    else:
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return head + buf.getvalue()


def decode_frame(data: bytes) -> tuple[int, np.ndarray]:
    """header + payload -> (frame index, uint8 (H, W, 3))."""
    index, h, w, code = HEADER.unpack_from(data)
    payload = data[HEADER.size :]
    if NAMES[code] == "raw":
        return index, np.frombuffer(payload, np.uint8).reshape(h, w, 3).copy()
    return index, np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
