"""The live server under attack (issue 20): a client that floods, nests, cuts off or lies must not stall,
fill or reach another session, and every malformed request gets the documented error JSON. Loopback only,
each test bounded in time; tiny random models."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from framecast.io.video import VideoWriter
from framecast.world import render, sample_scene
from tests.conftest import RandomTextEncoder
from tests.test_server_support import Client, running, tiny_pipeline, wait_until

NO_RATE_LIMIT = dict(control_rate=1e6, control_burst=10**6)


class _SlowText(RandomTextEncoder):
    """A text encoder about as slow as the built-in MiniLM on a small CPU (15 ms a prompt); counts prompts."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.calls = 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += len(texts)
        time.sleep(0.015 * len(texts))
        return super().encode(texts)


class _Watch:
    """A session that streams at 16 fps through the test, read by a thread of its own: when its frames came."""

    def __init__(self, url: str) -> None:
        self.client = Client(url)
        self.client.send({"type": "start", "prompt": "a red circle", "seed": 0, "steps": 1, "fps": 16})
        self.client.wait_for(lambda c: len(c.frames) >= 8)
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            n = len(self.client.frames)
            try:
                self.client.recv(timeout=0.2)
            except TimeoutError:
                continue
            if len(self.client.frames) > n:
                self.times.append(time.monotonic())

    def longest_gap(self, since: float) -> float:
        """The longest time without a frame from `since` until now."""
        marks = [since, *(t for t in self.times if t > since), time.monotonic()]
        return max(b - a for a, b in zip(marks, marks[1:], strict=False))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()
        assert [i for i, _ in self.client.frames] == list(range(len(self.client.frames))), "frames lost"


def _metric(srv: Any, name: str) -> float:
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m is not None, f"{name} is not in /metrics"
    return float(m.group(1))


# -- 1: prompt flood ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limits", ["default", "no rate limit"])
def test_prompt_flood_does_not_stall_another_session(limits: str) -> None:
    """1,000 distinct prompts from one client: before, each was encoded on the engine thread (2 x 15 ms), and
    the other session got no frame for ~30 s. Coalescing alone (no rate limit) keeps it smooth."""
    encoders: list[_SlowText] = []

    def encoder(dim: int) -> _SlowText:
        encoders.append(_SlowText(dim))
        return encoders[-1]

    with running(tiny_pipeline(text_encoder=encoder), **({} if limits == "default" else NO_RATE_LIMIT)) as srv:
        a = _Watch(srv.ws_url)
        b = Client(srv.ws_url)
        b.send({"type": "start", "prompt": "a blue square", "seed": 1, "steps": 1, "fps": 16})
        b.message("started")
        time.sleep(0.5)
        calls, t0 = encoders[0].calls, time.monotonic()
        for i in range(1000):
            b.send({"type": "prompt", "text": f"flood prompt number {i}"})
        time.sleep(3.0)
        gap, encoded = a.longest_gap(t0), encoders[0].calls - calls
        b.close()
        a.close()
    assert gap < 1.0, f"the other session waited {gap:.2f} s for a frame"
    assert encoded < 400, f"{encoded} prompts encoded for 1000 messages"


def test_control_rate_limit_answers_once_a_burst() -> None:
    with running(tiny_pipeline(), control_rate=20.0, control_burst=10) as srv:
        a = _Watch(srv.ws_url)
        b = Client(srv.ws_url)
        assert b.message("hello")["limits"]["message_burst"] == 10
        b.send({"type": "start", "prompt": "a blue square", "seed": 1, "steps": 1, "fps": 16})
        b.message("started")
        for burst in range(2):
            time.sleep(0.6)  # 12 tokens at 20 a second: the bucket is full again
            for i in range(100):
                b.send({"type": "prompt", "text": f"burst {burst} prompt {i}"})
            time.sleep(0.6)
            b.send({"type": "prompt", "text": f"after burst {burst}"})  # slowed down: handled again
            b.wait_for(lambda c, n=burst: any(m.get("text") == f"after burst {n}" for m in c.messages))
            errors = [m for m in b.messages if m["type"] == "error"]
            assert [e["code"] for e in errors] == ["rate_limited"] * (burst + 1), errors  # one error a burst
            assert "at most 20 a second and 10 at once" in errors[0]["message"]
        acks = [m for m in b.messages if m["type"] == "prompt" and m["text"].startswith("burst")]
        assert 2 * 9 <= len(acks) <= 2 * 14, len(acks)  # the burst (less the start's token), and what refilled
        assert _metric(srv, 'framecast_bad_messages_total{code="rate_limited"}') == 200 - len(acks)
        assert not [m for m in a.client.messages if m["type"] == "error"]
        a.close()
        b.close()


def test_coalesced_commands_keep_only_what_still_matters() -> None:
    from framecast.server.session import Close, SetPrompt, Start, Stop, StreamParams, coalesce

    start = Start(StreamParams("red", 0, 1, 16.0))
    flood = [SetPrompt(f"p{i}", 0, float(i)) for i in range(1000)]
    assert coalesce(flood) == [flood[-1]]
    assert coalesce([start, *flood]) == [Start(StreamParams("p999", 0, 1, 16.0))]  # one start, the last prompt
    assert coalesce([*flood, Stop()]) == [Stop()]
    assert coalesce([start, Stop(), start, flood[0], flood[1]]) == [Start(StreamParams("p1", 0, 1, 16.0))]
    assert coalesce([start, *flood, Close()]) == [Close()]
    assert coalesce([Stop(), SetPrompt("late", 2, 0.0)]) == [Stop(), SetPrompt("late", 2, 0.0)]
    assert coalesce([]) == []


# -- 3: uploads cleaned in every path -------------------------------------------------------------------


def _post_head(port: int, token: str, length: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        f"POST /upload?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream"
        f"\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode()
    )
    return s


def _response(s: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _upload_folder(srv: Any) -> Path:
    """The server's folder of uploads (made for the one open session)."""
    manager = srv.app.state.manager
    return manager.upload_path(next(iter(manager.sessions.values()))).parent


def _files(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(folder.glob(pattern))


def _reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_upload_cut_off_mid_body_leaves_no_part_file() -> None:
    with running(tiny_pipeline()) as srv:
        c = Client(srv.ws_url)
        token, folder = c.message("hello")["upload_token"], _upload_folder(srv)
        for cut in (_reset, socket.socket.close):  # a TCP reset, then a plain close
            s = _post_head(srv.port, token, 1_000_000)
            s.sendall(b"\0" * 200_000)
            wait_until(lambda: bool(_files(folder, "*.part")))  # the server is writing it
            cut(s)
            wait_until(lambda: not _files(folder), timeout=5)
        c.send({"type": "start", "prompt": "x", "source": "file"})
        assert c.message("error")["code"] == "no_file"  # nothing half-uploaded counts as an upload
        c.close()


def test_upload_finishing_after_its_session_closed_is_deleted(tmp_path: Path) -> None:
    clip = render(sample_scene(4, num_objects=1, motion="right", height=32, width=32), 0, 8)
    with VideoWriter(tmp_path / "in.mp4", 16.0, 32, 32, crf=0) as w:
        for frame in clip:
            w.write(frame)
    body = (tmp_path / "in.mp4").read_bytes()
    with running(tiny_pipeline()) as srv:
        manager = srv.app.state.manager
        c = Client(srv.ws_url)
        token, folder = c.message("hello")["upload_token"], _upload_folder(srv)
        s = _post_head(srv.port, token, len(body))
        s.sendall(body[:-64])
        wait_until(lambda: bool(_files(folder, "*.part")))
        c.close()
        wait_until(lambda: not manager.sessions)
        s.sendall(body[-64:])
        status, reply = _response(s)
        s.close()
        assert status == 404 and reply["type"] == "error" and reply["code"] == "unknown_token", reply
        assert not _files(folder)


# -- 5 and 7: deeply nested JSON, a minimum fps ---------------------------------------------------------


def test_deeply_nested_json_gets_an_error_and_the_session_lives() -> None:
    with running(tiny_pipeline()) as srv:
        b = Client(srv.ws_url)
        b.message("hello")
        b.send("[" * 4000)
        err = b.message("error")
        assert err["code"] == "bad_json" and "nested too deeply" in err["message"], err
        b.send("[" * 2000 + "]" * 2000)
        assert b.message("error")["code"] == "bad_json"
        b.send('{"type": "start", "prompt": "x", "seed": ' + "[" * 900 + "]" * 900 + "}")
        assert b.message("error")["code"] in ("bad_json", "invalid")
        b.send({"type": "start", "prompt": "a red circle", "seed": 1, "steps": 1, "fps": 60})
        b.wait_for(lambda c: len(c.frames) >= 4)
        b.close()


def test_minimum_fps_in_the_start_message() -> None:
    with running(tiny_pipeline()) as srv:
        b = Client(srv.ws_url)
        limits = b.message("hello")["limits"]
        for fps in (1e-300, 0.5):
            b.send({"type": "start", "prompt": "a red circle", "fps": fps})
            err = b.message("error")
            assert err["code"] == "invalid" and "fps" in err["message"], err
        assert limits["min_fps"] == 1.0
        b.send({"type": "start", "prompt": "a red circle", "steps": 1, "fps": 1.0})
        assert b.message("started")["fps"] == 1.0
        b.close()


# -- 8: gauges back to zero, KV-cache bytes -------------------------------------------------------------


def test_gauges_return_to_zero_when_idle() -> None:
    with running(tiny_pipeline(), admission=True, calibrate_passes=2) as srv:
        manager, engine = srv.app.state.manager, srv.app.state.manager.engine
        c = Client(srv.ws_url)
        c.send({"type": "start", "prompt": "a red circle", "seed": 0, "steps": 2, "fps": 8})
        c.wait_for(lambda cl: len(cl.frames) >= 4)
        assert _metric(srv, "framecast_predicted_utilization") > 0
        c.close()
        wait_until(lambda: not manager.sessions and engine.live_count() == 0)
        assert _metric(srv, 'framecast_sessions{state="streaming"}') == 0
        assert _metric(srv, "framecast_predicted_utilization") == 0
        assert _metric(srv, "framecast_queue_depth_frames") == 0
        assert _metric(srv, "framecast_kv_cache_bytes") == 0


def test_kv_cache_bytes_gauge_follows_the_live_streams() -> None:
    with running(tiny_pipeline()) as srv:
        engine = srv.app.state.manager.engine
        c = Client(srv.ws_url)
        c.send({"type": "start", "prompt": "a red circle", "seed": 0, "steps": 2, "fps": 8})
        c.wait_for(lambda cl: len(cl.frames) >= 4)
        assert _metric(srv, "framecast_kv_cache_bytes") > 0 and engine.state_bytes() > 0
        c.send({"type": "stop"})
        c.message("stopped")
        wait_until(lambda: engine.live_count() == 0)
        wait_until(lambda: _metric(srv, "framecast_kv_cache_bytes") == 0)
        c.close()


# -- also: offers, the outbox cap, the log ---------------------------------------------------------------


def test_bad_offers_get_the_documented_error_json() -> None:
    sdp = "v=0\r\n" + "a=x\r\n" * 2000
    cases = [
        ({"content": b"[" * 4000}, 400, "bad_json"),
        ({"content": b"not json"}, 400, "bad_json"),
        ({"json": ["offer"]}, 400, "bad_message"),
        ({"json": {"sdp": 5, "type": "offer"}}, 400, "invalid"),
        ({"json": {"sdp": sdp}}, 400, "invalid"),
        ({"json": {"sdp": sdp, "type": "answer"}}, 400, "invalid"),
        ({"json": {"sdp": sdp, "type": "offer", "extra": 1}}, 400, "invalid"),
        ({"content": b'{"sdp": "' + b"x" * 300_000 + b'"}'}, 413, "too_large"),
    ]
    with running(tiny_pipeline()) as srv:
        for kwargs, status, code in cases:
            r = httpx.post(srv.url + "/rtc/offer", timeout=10, **kwargs)
            body = r.json()
            assert r.status_code == status and body["type"] == "error" and body["code"] == code, (kwargs, r.text)
            assert set(body) == {"type", "code", "message"} and "a=x" not in body["message"]
        assert not srv.app.state.manager.sessions


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _capture() -> tuple[_Lines, logging.Logger, int]:
    lines, logger = _Lines(), logging.getLogger("framecast.server")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    return lines, logger, level


def test_replies_over_the_outbox_cap_are_counted_and_logged_once() -> None:
    from framecast.server.manager import SessionManager
    from framecast.server.outbox import MAX_MESSAGES
    from framecast.server.settings import ServerSettings

    manager = SessionManager(tiny_pipeline(), ServerSettings(port=0, calibrate_passes=0))
    lines, logger, level = _capture()
    try:

        async def flood() -> str:
            s = manager.open("ws")
            for i in range(MAX_MESSAGES + 44):
                s.outbox.put_message({"type": "prompt", "text": f"p{i}"})
            manager.close(s)
            return s.id

        sid = asyncio.run(flood())
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    assert "framecast_messages_dropped_total 44.0" in manager.metrics.render().decode()
    assert sum(line.startswith("event=messages_dropped") for line in lines.lines) == 1
    assert any(f"session={sid} " in line and "messages_dropped=44" in line for line in lines.lines)


def test_log_lines_of_one_session_are_rate_limited() -> None:
    lines, logger, level = _capture()
    try:
        with running(tiny_pipeline(), **NO_RATE_LIMIT) as srv:  # the default: 20 lines a session per 10 s
            b = Client(srv.ws_url)
            sid = b.message("hello")["session"]
            for _ in range(200):  # fewer than the outbox holds: every one is answered
                b.send("{not json")
            b.wait_for(lambda c: sum(m["type"] == "error" for m in c.messages) >= 200)
            b.close()
            wait_until(lambda: not srv.app.state.manager.sessions)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    mine = [line for line in lines.lines if f"session={sid} " in line + " "]
    assert len(mine) <= 23, f"{len(mine)} log lines for one session"  # open, 20 refusals, close (+ a summary)
    assert any("event=session_close" in line and "log_suppressed=180" in line for line in mine), mine[-2:]


def test_log_line_limit_summarises_what_it_held_back() -> None:
    from framecast.server.logs import LineLimit

    now = [0.0]
    limit = LineLimit(3, 10.0, clock=lambda: now[0])
    assert [limit.take() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] = 10.0
    assert limit.take() == (True, 2) and limit.suppressed == 2  # the next window's first line says so


def test_message_limit_tells_once_a_burst() -> None:
    from framecast.server.ratelimit import MessageLimit

    now = [0.0]
    limit = MessageLimit(rate=10.0, burst=3, clock=lambda: now[0])
    assert [limit.take() for _ in range(6)] == [(True, False)] * 3 + [(False, True)] + [(False, False)] * 2
    now[0] = 0.15  # one token back, the bucket not full: still the same burst
    assert [limit.take() for _ in range(2)] == [(True, False), (False, False)]
    now[0] = 1.0  # full again
    assert [limit.take() for _ in range(4)] == [(True, False)] * 3 + [(False, True)]
    assert limit.dropped == 5
