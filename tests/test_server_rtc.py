"""The WebRTC path with an aiortc client in Python: offer/answer over HTTP, control on the data channel,
frames on the video track, loopback ICE only."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.test_server_support import running, tiny_pipeline, wait_until

aiortc = pytest.importorskip("aiortc")


async def rtc_connect(pc: Any, url: str) -> tuple[Any, asyncio.Queue[dict[str, Any]], asyncio.Queue[Any], str]:
    """Open the control channel of `pc` (transceivers already added) against the server at `url`.

    Returns the channel, its queue of decoded messages, the queue of remote tracks and the answer's SDP.
    """
    channel = pc.createDataChannel("control")
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    channel.on("message", lambda m: inbox.put_nowait(json.loads(m)))
    pc.on("track", tracks.put_nowait)
    opened = asyncio.get_running_loop().create_future()
    channel.on("open", lambda: opened.set_result(True))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient() as http:
        r = await http.post(url + "/rtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}, timeout=20)
    assert r.status_code == 200, r.text
    sdp: str = r.json()["sdp"]
    await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=sdp, type="answer"))
    await asyncio.wait_for(opened, 20)
    return channel, inbox, tracks, sdp


async def _session(url: str) -> dict[str, Any]:
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    channel, inbox, tracks, sdp = await rtc_connect(pc, url)
    assert all(" 127.0.0.1 " in line for line in sdp.splitlines() if line.startswith("a=candidate:"))
    track = await asyncio.wait_for(tracks.get(), 20)
    result = {"hello": await _next(inbox, "hello")}
    channel.send(json.dumps({"type": "start", "prompt": "a red circle", "seed": 1, "steps": 1, "fps": 30}))
    result["started"] = await _next(inbox, "started")
    frames = [(await asyncio.wait_for(track.recv(), 20)).to_ndarray(format="rgb24") for _ in range(8)]
    channel.send('{"type": "start", "bogus": true}')
    result["error"] = await _next(inbox, "error")
    channel.send(json.dumps({"type": "prompt", "text": "a blue square"}))
    result["prompt"] = await _next(inbox, "prompt")
    frames += [(await asyncio.wait_for(track.recv(), 20)).to_ndarray(format="rgb24") for _ in range(8)]
    channel.send(json.dumps({"type": "stop"}))
    result["stopped"] = await _next(inbox, "stopped")
    await pc.close()
    result["frames"] = frames
    return result


async def _next(inbox: asyncio.Queue[dict[str, Any]], kind: str) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(inbox.get(), 20)
        if msg["type"] == kind:
            return msg


def test_webrtc_session_streams_and_takes_control_messages() -> None:
    with running(tiny_pipeline()) as srv:
        out = asyncio.run(_session(srv.url))
        wait_until(lambda: not srv.app.state.manager.sessions and srv.app.state.manager.engine.live_count() == 0)
    assert out["hello"]["frame_size"] == [32, 32] and out["started"]["fps"] == 30
    assert out["error"]["code"] == "invalid" and out["prompt"]["text"] == "a blue square"
    frames = out["frames"]
    assert frames[0].shape == (32, 32, 3)
    assert len({f.tobytes() for f in frames}) > 4  # the video moves
