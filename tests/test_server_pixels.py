"""The pixel limit of video input (issue 20, item 4): an upload or a webcam frame that declares more pixels than
`max_input_pixels` is refused from its header, before it is decoded. Loopback only, bounded."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_server_support import Client, running, tiny_pipeline, wait_until

OCTETS = {"Content-Type": "application/octet-stream"}
MAKE_HUGE = """
import av, sys
with av.open(sys.argv[1], "w") as c:
    s = c.add_stream("libx264", rate=1)
    s.width = s.height = 8192
    s.pix_fmt, s.options = "yuv420p", {"preset": "ultrafast", "crf": "51"}
    f = av.VideoFrame(8192, 8192, "yuv420p")
    for p in f.planes:
        p.update(bytes(p.buffer_size))
    for pkt in [*s.encode(f), *s.encode()]:
        c.mux(pkt)
"""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixels: only its header says how big it is."""
    ihdr = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack("!I", len(ihdr)) + b"IHDR" + ihdr + struct.pack("!I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\0\0\0\0IEND\xaeB`\x82"


def _image(width: int, height: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, format=fmt)
    return buf.getvalue()


def test_an_upload_of_huge_frames_is_refused_before_decoding(tmp_path: Path) -> None:
    huge = tmp_path / "huge.mp4"
    subprocess.run([sys.executable, "-c", MAKE_HUGE, str(huge)], check=True, timeout=120)  # its memory is not ours
    assert huge.stat().st_size < 1_000_000
    with running(tiny_pipeline()) as srv:
        c = Client(srv.ws_url)
        token = c.message("hello")["upload_token"]
        before, t0 = _rss_mb(), time.monotonic()
        r = httpx.post(srv.url + "/upload", params={"token": token}, content=huge.read_bytes(), headers=OCTETS,
                       timeout=60)  # fmt: skip
        seconds, grown = time.monotonic() - t0, _rss_mb() - before
        body = r.json()
        assert (r.status_code, body["code"]) == (413, "too_large"), body
        assert "8192x8192 (67,108,864 pixels), over the limit of 2,073,600 pixels" in body["message"], body
        assert seconds < 5.0 and grown < 150, (seconds, grown)  # before: 1.2 GB more, never given back
        c.send({"type": "start", "prompt": "x", "source": "file"})
        assert c.message("error")["code"] == "no_file"
        c.close()


def test_a_webcam_frame_over_the_limit_is_refused_from_its_header() -> None:
    with running(tiny_pipeline()) as srv:
        c = Client(srv.ws_url)
        c.message("hello")
        c.send({"type": "start", "prompt": "a red circle", "steps": 1, "fps": 30, "source": "webcam"})
        c.message("started")
        for data, size in ((_png_header_only(3000, 3000), "3000x3000"), (_image(1921, 1081, "PNG"), "1921x1081")):
            assert len(data) < 65536
            c.ws.send(data)
            err = c.message("error")
            assert err["code"] == "bad_frame" and f"a webcam frame is {size}" in err["message"], err
            assert "over the limit of 2,073,600 pixels" in err["message"]
        for _ in range(12):  # frames within the limit are taken
            c.ws.send(_image(1920, 1080, "JPEG"))
        c.wait_for(lambda cl: len(cl.frames) >= 4)
        c.message("stats")
        c.wait_for(lambda cl: any((m.get("input") or {}).get("frames", 0) >= 8 for m in cl.messages))
        assert sum(m["type"] == "error" for m in c.messages) == 2
        c.close()


aiortc = pytest.importorskip("aiortc")


class _BigTrack(aiortc.VideoStreamTrack):  # type: ignore[misc]
    """A webcam track of 96x80 frames: over a 64x64 limit."""

    async def recv(self) -> Any:
        from av import VideoFrame

        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(np.full((80, 96, 3), 128, np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def _big_webcam(url: str) -> list[dict[str, Any]]:
    from tests.test_server_rtc import rtc_connect

    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    pc.addTransceiver(_BigTrack(), direction="sendrecv")
    channel, inbox, tracks, _ = await rtc_connect(pc, url)
    track = await asyncio.wait_for(tracks.get(), 20)
    seen: list[dict[str, Any]] = []
    while not any(m["type"] == "error" for m in seen):  # its first frame is refused, streaming or not
        seen.append(await asyncio.wait_for(inbox.get(), 20))
    channel.send(json.dumps({"type": "start", "prompt": "a red circle", "steps": 1, "fps": 30, "source": "webcam"}))
    while seen[-1]["type"] != "error" or len([m for m in seen if m["type"] == "error"]) < 2:
        seen.append(await asyncio.wait_for(inbox.get(), 20))
    channel.send(json.dumps({"type": "start", "prompt": "a red circle", "steps": 1, "fps": 30}))
    for _ in range(4):  # the session goes on
        await asyncio.wait_for(track.recv(), 20)
    await pc.close()
    return seen


def test_a_webrtc_webcam_over_the_limit_is_ended_with_a_reason() -> None:
    with running(tiny_pipeline(), max_input_pixels=64 * 64) as srv:
        seen = asyncio.run(asyncio.wait_for(_big_webcam(srv.url), 60))
        wait_until(lambda: not srv.app.state.manager.sessions)
    errors = [m for m in seen if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_frame", "no_webcam"], seen
    assert "the webcam sends frames of 96x80 (7,680 pixels), over the limit of 4,096" in errors[0]["message"]
