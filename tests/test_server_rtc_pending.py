"""WebRTC peers that never connect (issue 20, item 2): they hold no session slot, the server closes them after
`rtc_connect_timeout_s`, at most `max_pending_offers` wait at once, and a peer that connects when the server has
filled up meanwhile is told so and closed. aiortc clients on loopback, no ICE servers; bounded."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest

from tests.test_server_support import Client, running, tiny_pipeline, wait_until

aiortc = pytest.importorskip("aiortc")
from tests.test_server_rtc import rtc_connect  # noqa: E402


def _peer() -> Any:
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    return pc


async def _stale_offer(http: httpx.AsyncClient, url: str) -> tuple[Any, httpx.Response]:
    """An offer whose peer never connects: no candidate, and the client never takes the answer."""
    pc = _peer()
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = "".join(f"{line}\r\n" for line in pc.localDescription.sdp.splitlines() if "a=candidate:" not in line)
    return pc, await http.post(url + "/rtc/offer", json={"sdp": sdp, "type": "offer"}, timeout=20)


async def _stale_offers(url: str, n: int) -> tuple[list[Any], list[httpx.Response]]:
    async with httpx.AsyncClient() as http:
        out = [await _stale_offer(http, url) for _ in range(n)]
    return [pc for pc, _ in out], [r for _, r in out]


async def _close(pcs: list[Any]) -> None:
    await asyncio.gather(*(pc.close() for pc in pcs))


def _metric(srv: Any, line: str) -> float:
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_offers_that_never_connect_do_not_fill_the_server() -> None:
    async def scenario(srv: Any) -> None:
        pcs, replies = await _stale_offers(srv.url, 8)
        assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies if r.status_code != 200]
        manager, rtc = srv.app.state.manager, srv.app.state.rtc
        assert not manager.sessions and len(rtc.pending) == 8
        assert _metric(srv, 'framecast_sessions{state="connecting"}') == 8
        ws = Client(srv.ws_url)  # a WebSocket session is still welcome ...
        assert ws.message("hello")["type"] == "hello"
        pc = _peer()  # ... and so is a WebRTC peer that connects
        channel, inbox, _, _ = await rtc_connect(pc, srv.url)
        assert (await asyncio.wait_for(inbox.get(), 20))["type"] == "hello"
        assert len(manager.sessions) == 2 and len(rtc.pending) == 8
        ws.close()
        await _close([pc, *pcs])

    with running(tiny_pipeline(), max_sessions=2, rtc_connect_timeout_s=60.0) as srv:
        asyncio.run(scenario(srv))


def test_a_peer_not_connected_in_time_is_closed() -> None:
    async def scenario(srv: Any) -> None:
        rtc = srv.app.state.rtc
        pcs, replies = await _stale_offers(srv.url, 3)
        assert [r.status_code for r in replies] == [200] * 3
        live = _peer()
        channel, inbox, _, _ = await rtc_connect(live, srv.url)
        assert (await asyncio.wait_for(inbox.get(), 20))["type"] == "hello"
        assert len(rtc.pending) == 3
        await asyncio.sleep(3.5)  # past the timeout: the stale ones are gone, the connected one stays
        wait_until(lambda: not rtc.pending and len(rtc.peers) == 1, timeout=10)
        assert len(srv.app.state.manager.sessions) == 1
        assert _metric(srv, 'framecast_sessions_refused_total{reason="rtc_timeout"}') == 3
        assert _metric(srv, 'framecast_sessions{state="connecting"}') == 0
        channel.send(json.dumps({"type": "start", "prompt": "a red circle", "steps": 1, "fps": 30}))
        while (msg := await asyncio.wait_for(inbox.get(), 20))["type"] != "started":
            assert msg["type"] in ("stats", "hello"), msg
        await _close([live, *pcs])
        wait_until(lambda: not rtc.peers, timeout=10)

    with running(tiny_pipeline(), rtc_connect_timeout_s=2.0) as srv:
        asyncio.run(scenario(srv))


def test_at_most_max_pending_offers_wait_at_once() -> None:
    async def scenario(srv: Any) -> None:
        pcs, replies = await _stale_offers(srv.url, 3)
        assert [r.status_code for r in replies] == [200, 200, 503]
        body = replies[2].json()
        assert body["code"] == "server_full" and "2 WebRTC peers are waiting to connect" in body["message"], body
        await _close(pcs)

    with running(tiny_pipeline(), max_pending_offers=2, rtc_connect_timeout_s=60.0) as srv:
        asyncio.run(scenario(srv))


def test_a_peer_that_connects_after_the_server_filled_up_is_told_and_closed() -> None:
    async def scenario(srv: Any) -> None:
        pc = _peer()
        channel = pc.createDataChannel("control")
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        channel.on("message", lambda m: inbox.put_nowait(json.loads(m)))
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient() as http:
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            r = await http.post(srv.url + "/rtc/offer", json=offer, timeout=20)
        assert r.status_code == 200
        ws = Client(srv.ws_url)  # takes the only slot while the peer has not connected yet
        ws.message("hello")
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=r.json()["sdp"], type="answer"))
        msg = await asyncio.wait_for(inbox.get(), 20)
        assert msg["type"] == "error" and msg["code"] == "server_full", msg
        rtc = srv.app.state.rtc
        wait_until(lambda: not rtc.peers, timeout=10)
        assert list(srv.app.state.manager.sessions) and len(srv.app.state.manager.sessions) == 1
        ws.close()
        await pc.close()

    with running(tiny_pipeline(), max_sessions=1, rtc_connect_timeout_s=60.0) as srv:
        asyncio.run(scenario(srv))
