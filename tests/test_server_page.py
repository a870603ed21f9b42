"""The page's layout and what it closes (issue 20), in Debian's chromium driven by Playwright at 1280x800: one
video surface on screen and the readout beside it without scrolling, over the WebSocket and WebRTC; the access
token carried from the page's own address; a WebRTC attempt the page gives up on is closed before it falls back
to the WebSocket. A screenshot goes to /tmp/fc_page.png."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.test_server_browser import ARGS, CHROMIUM
from tests.test_server_support import running, tiny_pipeline, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
VIEWPORT = {"width": 1280, "height": 800}
SURFACES = """() => [...document.querySelectorAll('#video, #canvas')].filter((e) => {
  const r = e.getBoundingClientRect();
  return getComputedStyle(e).display !== 'none' && r.width > 0 && r.height > 0;
}).map((e) => e.id)"""
RECORD_PEERS = """(() => {
  const Native = window.RTCPeerConnection;
  window.peers = [];
  window.RTCPeerConnection = function (...args) { const pc = new Native(...args); window.peers.push(pc); return pc; };
  window.RTCPeerConnection.prototype = Native.prototype;
})();"""


def _browse(drive: Any, init_script: str | None = None) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            if init_script:
                page.add_init_script(init_script)
            drive(page)
            page.close(run_before_unload=True)
        finally:
            browser.close()


def _stream(page: Any, url: str, transport: str) -> None:
    page.goto(url)
    page.select_option("#transport", transport)
    page.fill("#fps", "20")
    page.fill("#steps", "1")
    page.click("#start")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('streaming')", timeout=30000)
    page.wait_for_function("Number(document.querySelector('#frames-out').textContent) > 10")


@pytest.mark.parametrize("transport", ["ws", "webrtc"])
def test_one_video_surface_and_the_readout_fit_1280x800(transport: str) -> None:
    def drive(page: Any) -> None:
        _stream(page, srv.url, transport)
        assert page.evaluate(SURFACES) == ["canvas" if transport == "ws" else "video"]
        box = page.locator("#readout").bounding_box()
        assert box is not None and box["y"] >= 0 and box["x"] >= 0, box
        assert box["x"] + box["width"] <= VIEWPORT["width"] and box["y"] + box["height"] <= VIEWPORT["height"], box
        assert page.evaluate("() => document.scrollingElement.scrollHeight") <= VIEWPORT["height"]
        assert page.inner_text("#set-transport") == ("WebSocket" if transport == "ws" else "WebRTC")
        assert page.inner_text("#set-fps") == "20" and page.inner_text("#set-steps") == "1"
        assert re.fullmatch(r"\d+(\.\d)?", page.inner_text("#fps-out")), page.inner_text("#fps-out")
        if transport == "webrtc":
            page.screenshot(path="/tmp/fc_page.png")
        page.click("#stop")

    with running(tiny_pipeline(), max_fps=60.0) as srv:
        _browse(drive)
        wait_until(lambda: not srv.app.state.manager.sessions, timeout=20)


@pytest.mark.parametrize("transport", ["ws", "webrtc"])
def test_the_page_carries_its_access_token(transport: str) -> None:
    def drive(page: Any) -> None:
        page.goto(srv.url)
        page.select_option("#transport", transport)
        page.click("#start")
        page.wait_for_function("document.querySelector('#status').className === 'error'", timeout=30000)
        _stream(page, srv.url + "/?token=s3cret", transport)
        page.click("#stop")

    with running(tiny_pipeline(), max_fps=60.0, token="s3cret") as srv:
        _browse(drive)
        wait_until(lambda: not srv.app.state.manager.sessions, timeout=20)


def _strip_candidates(sdp: str) -> str:
    return "".join(f"{line}\r\n" for line in sdp.splitlines() if "a=candidate:" not in line)


def test_a_webrtc_attempt_that_never_connects_is_closed_before_the_websocket_fallback() -> None:
    def no_ice(route: Any) -> None:  # neither side learns a candidate of the other: ICE cannot connect
        offer = json.loads(route.request.post_data)
        response = route.fetch(post_data=json.dumps({**offer, "sdp": _strip_candidates(offer["sdp"])}))
        answer = response.json()
        route.fulfill(response=response, json={**answer, "sdp": _strip_candidates(answer["sdp"])})

    def drive(page: Any) -> None:
        page.route("**/rtc/offer*", no_ice)
        _stream(page, srv.url, "auto")  # WebRTC first; its data channel never opens (10 s); the WebSocket
        assert page.inner_text("#set-transport") == "WebSocket"
        states = page.evaluate("() => window.peers.map((pc) => pc.signalingState)")
        assert states == ["closed"], states  # the page closed the peer connection it gave up on
        assert page.evaluate(SURFACES) == ["canvas"]
        page.click("#stop")

    with running(tiny_pipeline(), max_fps=60.0) as srv:
        _browse(drive, RECORD_PEERS)
        wait_until(lambda: not srv.app.state.manager.sessions and not srv.app.state.rtc.peers, timeout=20)
