"""Video to video on the live server: an uploaded file and webcam frames (WebSocket JPEGs and a WebRTC track),
an input that ends or breaks while another session keeps streaming, upload and control errors."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from framecast.io.video import VideoWriter
from framecast.pipeline import Pipeline
from framecast.world import render, sample_scene
from tests.test_server_rtc import rtc_connect
from tests.test_server_support import Client, running, tiny_pipeline, wait_until

aiortc = pytest.importorskip("aiortc")
from aiortc.mediastreams import VideoStreamTrack  # noqa: E402
from av import VideoFrame  # noqa: E402

FAST_INPUT = dict(input_timeout_s=1.0)


def _clip(n: int, seed: int = 4, motion: str = "right") -> np.ndarray:
    return render(sample_scene(seed, num_objects=1, motion=motion, height=32, width=32), 0, n)


def _mp4(path: Path, clip: np.ndarray) -> Path:
    with VideoWriter(path, 16.0, clip.shape[2], clip.shape[1], crf=0) as w:
        for frame in clip:
            w.write(frame)
    return path


def _upload(url: str, token: str, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    return httpx.post(f"{url}/upload", params={"token": token}, content=body, headers=headers, timeout=30)


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _t2v_session(url: str, frames: list[int], stop: threading.Event) -> None:
    """Another session, streaming text to video the whole time: counts its frames."""
    c = Client(url)
    c.message("hello")
    c.send({"type": "start", "prompt": "a green star", "seed": 9, "steps": 1, "fps": 100, "format": "raw"})
    try:
        while not stop.is_set():
            c.recv(timeout=20)
            frames[0] = len(c.frames)
    finally:
        c.close()


def test_uploaded_file_streams_like_the_python_api_then_falls_back(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    clip = _mp4(tmp_path / "in.mp4", _clip(22))
    ref = np.stack(list(pipe.video_to_video("a blue square", clip, strength=0.7, seed=3, steps=2)))
    with running(pipe, **FAST_INPUT) as srv:
        other, stop = [0], threading.Event()
        side = threading.Thread(target=_t2v_session, args=(srv.ws_url, other, stop))
        side.start()
        c = Client(srv.ws_url)
        token = c.message("hello")["upload_token"]
        r = _upload(srv.url, token, clip.read_bytes())
        assert r.status_code == 200 and r.json()["size"] == [32, 32], r.text
        c.send({"type": "start", "prompt": "a blue square", "seed": 3, "steps": 2, "fps": 200, "format": "raw",
                "source": "file", "strength": 0.7})
        assert c.message("started")["source"] == "file"
        ended = c.message("input_ended", timeout=60)
        assert ended["source"] == "file" and "the video ended" in ended["message"]
        c.wait_for(lambda c: len(c.frames) >= 22 + 8)  # and it goes on from the prompt alone
        before = other[0]
        stats = c.message("stats")["input"]  # the last figures of the input
        assert stats["source"] == "file" and stats["frames"] == 22 and stats["dropped"] == 0
        c.close()
        wait_until(lambda: other[0] > before + 8, timeout=30)  # the other session never stopped
        stop.set()
        side.join(30)
    frames = np.stack([f for _, f in sorted(c.frames)[:22]])
    diff = np.abs(frames.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_upload_errors_are_clear_json(tmp_path: Path) -> None:
    with running(tiny_pipeline(), max_upload_mb=0.01) as srv:
        c = Client(srv.ws_url)
        token = c.message("hello")["upload_token"]
        c.send({"type": "start", "prompt": "x", "source": "file"})
        assert c.message("error")["code"] == "no_file"
        bad = _upload(srv.url, "nope", b"123")
        assert bad.status_code == 404 and bad.json()["code"] == "unknown_token"
        corrupt = _upload(srv.url, token, b"\x00 not a video" * 50)
        assert corrupt.status_code == 400 and corrupt.json()["code"] == "bad_input"
        assert "uploaded file" in corrupt.json()["message"] and "framecast-uploads" not in corrupt.json()["message"]
        empty = _upload(srv.url, token, b"")
        assert empty.status_code == 400 and "empty" in empty.json()["message"]
        big = _upload(srv.url, token, b"\x00" * 20_000)
        assert big.status_code == 413 and big.json()["code"] == "too_large"
        bad_starts = ((dict(strength=0.0), "strength"), (dict(strength=2), "strength"), (dict(source="tv"), "source"))
        for raw, words in bad_starts:
            c.send({"type": "start", "prompt": "x", **raw})
            err = c.message("error")
            assert err["code"] == "invalid" and words in err["message"], err
        c.send({"type": "start", "prompt": "x", "seed": 1, "steps": 1, "fps": 100})  # the session still works
        c.wait_for(lambda c: len(c.frames) >= 4)
        uploads = srv.app.state.manager._uploads
        c.close()
        wait_until(lambda: not srv.app.state.manager.sessions)
    assert uploads is None or not any(uploads.glob("*"))  # nothing left behind


def test_websocket_webcam_frames_then_silence_falls_back() -> None:
    pipe = tiny_pipeline()
    with running(pipe, **FAST_INPUT) as srv:
        c = Client(srv.ws_url)
        c.message("hello")
        c.send({"type": "start", "prompt": "a red circle", "seed": 1, "steps": 1, "fps": 30, "format": "raw",
                "source": "webcam"})
        c.message("started")
        clip = _clip(40, motion="left")
        for frame in clip[:24]:
            c.ws.send(_jpeg(np.asarray(Image.fromarray(frame).resize((48, 40)))))  # any size: fitted on arrival
            time.sleep(1 / 30)
        c.ws.send(b"\xff\xd8 not really a jpeg")
        assert c.message("error")["code"] == "bad_frame"
        c.wait_for(lambda c: len(c.frames) >= 8)
        ended = c.message("input_ended", timeout=30)  # no frame for input_timeout_s
        assert "no webcam frame" in ended["message"] and ended["source"] == "webcam"
        n = len(c.frames)
        c.wait_for(lambda c: len(c.frames) >= n + 8)  # text to video from here on
        c.close()


class WorldTrack(VideoStreamTrack):
    """A synthetic webcam: world frames at 30 fps, 48 x 40 (odd for the model, fitted by the server)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames, self.i = _clip(600, motion="bounce"), 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.asarray(Image.fromarray(self.frames[self.i % len(self.frames)]).resize((48, 40)))
        self.i += 1
        frame = VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


async def _webcam_session(url: str, other: list[int]) -> dict[str, Any]:
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(WorldTrack(), direction="sendrecv")
    channel, inbox, tracks, _ = await rtc_connect(pc, url)
    track = await asyncio.wait_for(tracks.get(), 20)
    out: dict[str, Any] = {"hello": await _next(inbox, "hello")}
    channel.send(json.dumps({"type": "start", "prompt": "a blue square", "seed": 1, "steps": 1, "fps": 30,
                             "source": "webcam", "strength": 0.6}))
    out["started"] = await _next(inbox, "started")
    out["frames"] = [(await asyncio.wait_for(track.recv(), 20)).to_ndarray(format="rgb24") for _ in range(12)]
    out["stats"] = await _next(inbox, "stats", lambda m: bool(m["input"]) and m["input"]["frames"] > 0)
    before = other[0]
    await transceiver.sender.stop()  # the webcam goes away mid-stream (RTCP BYE)
    out["ended"] = await _next(inbox, "input_ended")
    out["after"] = [(await asyncio.wait_for(track.recv(), 20)).to_ndarray(format="rgb24") for _ in range(8)]
    out["other_moved"] = other[0] > before
    await pc.close()
    return out


async def _next(inbox: asyncio.Queue[dict[str, Any]], kind: str, pred: Any = None) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(inbox.get(), 30)
        if msg["type"] == kind and (pred is None or pred(msg)):
            return msg


def test_webrtc_webcam_track_feeds_the_session_and_its_end_is_reported() -> None:
    pipe: Pipeline = tiny_pipeline()
    with running(pipe, **FAST_INPUT) as srv:
        other, stop = [0], threading.Event()
        side = threading.Thread(target=_t2v_session, args=(srv.ws_url, other, stop))
        side.start()
        out = asyncio.run(_webcam_session(srv.url, other))
        wait_until(lambda: other[0] > 0)
        stop.set()
        side.join(30)
        wait_until(lambda: not srv.app.state.manager.sessions)
    assert out["started"]["source"] == "webcam" and out["started"]["strength"] == 0.6
    assert out["frames"][0].shape == (32, 32, 3) and len({f.tobytes() for f in out["frames"]}) > 4
    assert out["stats"]["input"]["source"] == "webcam"
    assert "webcam track ended" in out["ended"]["message"]
    assert len(out["after"]) == 8 and out["other_moved"]


def test_outbox_message_wait_times_out_while_frames_keep_coming() -> None:
    """Frames put every 10 ms wake the waiter; its 0.1 s timeout still holds (stats go out on time over WebRTC)."""
    from framecast.server.outbox import Frame, Outbox

    async def scenario() -> float:
        box = Outbox(asyncio.get_running_loop(), max_frames=1000)

        async def feed() -> None:
            for i in range(100):
                box.put_frame(Frame(np.zeros((2, 2, 3), np.uint8), i, 0.0, 0.0))
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(feed())
        t0 = time.monotonic()
        assert await box.get_message(timeout=0.1) is None
        waited = time.monotonic() - t0
        task.cancel()
        return waited

    assert asyncio.run(scenario()) < 0.5
