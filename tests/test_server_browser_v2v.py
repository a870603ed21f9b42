"""Video to video in the page (headless chromium with its fake webcam): the webcam over the WebSocket and over
WebRTC, a camera that stops mid-stream, and an uploaded file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from framecast.io.video import VideoWriter
from framecast.world import render, sample_scene
from tests.test_server_browser import ARGS, CHROMIUM, _watch_changes
from tests.test_server_support import running, tiny_pipeline, wait_until

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
FAKE_CAMERA = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
GOES_ON = "the stream goes on from the prompt alone"


def _text(page: Any, selector: str) -> str:
    return str(page.inner_text(selector))


def _start(page: Any, url: str, transport: str, source: str) -> None:
    page.goto(url)
    page.select_option("#transport", transport)
    page.select_option("#source", source)
    page.fill("#fps", "20")
    page.fill("#steps", "1")


def _run(url: str, drive: Any) -> None:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS + FAKE_CAMERA)
        try:
            page = browser.new_page()
            drive(page)
            page.close(run_before_unload=True)
        finally:
            browser.close()


@pytest.mark.parametrize("transport", ["ws", "webrtc"])
def test_page_follows_the_webcam_and_survives_it_stopping(transport: str) -> None:
    def drive(page: Any) -> None:
        _start(page, srv.url, transport, "webcam")
        page.click("#start")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('streaming')")
        page.wait_for_function("Number(document.querySelector('#input-frames-out').textContent) > 8", timeout=30000)
        assert all(img.std() > 1 for img in _watch_changes(page, 3))
        page.evaluate("() => window.framecast.cameraStream.getTracks().forEach((t) => t.stop())")
        page.wait_for_function(f"document.querySelector('#status').textContent.includes('{GOES_ON}')", timeout=30000)
        n = int(_text(page, "#frames-out"))
        page.wait_for_function(f"Number(document.querySelector('#frames-out').textContent) > {n + 4}")
        page.click("#stop")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')")

    with running(tiny_pipeline(), max_fps=60.0, input_timeout_s=1.5) as srv:
        _run(srv.url, drive)
        wait_until(lambda: not srv.app.state.manager.sessions, timeout=20)


def test_page_uploads_a_file_and_streams_it(tmp_path: Path) -> None:
    clip = render(sample_scene(2, num_objects=1, motion="left", height=48, width=80), 0, 24)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 24.0, 80, 48) as w:
        for frame in clip:
            w.write(frame)

    def drive(page: Any) -> None:
        _start(page, srv.url, "ws", "file")
        page.click("#start")
        page.wait_for_function("document.querySelector('#status').textContent.includes('choose a video file')")
        page.set_input_files("#file", str(path))
        page.fill("#strength", "0.7")
        page.click("#start")
        page.wait_for_function(f"document.querySelector('#status').textContent.includes('{GOES_ON}')", timeout=30000)
        assert "the video ended" in _text(page, "#status") and int(_text(page, "#input-frames-out")) == 24

    with running(tiny_pipeline(), max_fps=60.0) as srv:
        _run(srv.url, drive)
