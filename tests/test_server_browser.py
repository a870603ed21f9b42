"""The page in a real headless browser (Debian's chromium driven by Playwright): start, frames arrive and
change, a new prompt changes the output, stop. Over the WebSocket and over WebRTC."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_server_support import running, tiny_pipeline, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
WEIGHTS = Path(__file__).parents[1] / "src" / "framecast" / "weights" / "tiny" / "framecast.json"
ARGS = ["--no-sandbox", "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"]


def _snapshot(page: Any) -> np.ndarray:
    snap = page.evaluate("() => window.framecast.snapshot()")
    return np.asarray(snap["data"], np.uint8).reshape(snap["height"], snap["width"], 4)[..., :3]


def _frames(page: Any) -> int:
    return int(page.inner_text("#frames-out"))


def _watch_changes(page: Any, count: int, timeout_s: float = 20.0) -> list[np.ndarray]:
    """Distinct pictures seen on screen, until `count` of them (polling the pixels)."""
    seen: dict[str, np.ndarray] = {}
    for _ in range(int(timeout_s / 0.05)):
        img = _snapshot(page)
        seen.setdefault(hashlib.sha1(img.tobytes()).hexdigest(), img)
        if len(seen) >= count:
            return list(seen.values())
        page.wait_for_timeout(50)
    raise AssertionError(f"only {len(seen)} distinct pictures on screen")


def _drive(url: str, transport: str, check: Any = None) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.select_option("#transport", transport)
            page.fill("#fps", "20")
            page.fill("#steps", "2")
            page.click("#start")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('streaming')")
            page.wait_for_function("Number(document.querySelector('#frames-out').textContent) > 1")
            before = _watch_changes(page, 3)
            assert all(img.std() > 1 for img in before), "blank frames"
            page.fill("#prompt", "a blue square moving right")
            page.press("#prompt", "Enter")
            page.wait_for_function("document.querySelector('#prompt-latency-out').textContent !== '-'")
            after = _watch_changes(page, 3)
            assert not any(np.array_equal(a, b) for a in after for b in before)
            if check is not None:
                check(page)
            n = _frames(page)
            assert n >= 6
            page.click("#stop")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')")
            page.close(run_before_unload=True)  # the page closes its connection as it goes
        finally:
            browser.close()


@pytest.mark.parametrize("transport", ["ws", "webrtc"])
def test_page_streams_and_follows_a_new_prompt(transport: str) -> None:
    with running(tiny_pipeline(), max_fps=60.0) as srv:
        _drive(srv.url, transport)
        wait_until(lambda: not srv.app.state.manager.sessions, timeout=20)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"needs the trained built-in weights ({WEIGHTS})")
def test_new_prompt_color_is_detected_on_screen() -> None:
    from framecast.pipeline import Pipeline
    from framecast.world.detect import detect_objects

    def blue_on_screen(page: Any) -> None:
        page.wait_for_timeout(1500)  # past the chunks in flight and the blend
        colors = [d.color for img in _watch_changes(page, 3) for d in detect_objects(img)]
        assert "blue" in colors, colors

    with running(Pipeline.load("tiny"), max_fps=60.0) as srv:
        _drive(srv.url, "ws", blue_on_screen)
