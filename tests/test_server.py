"""The live server end to end over WebSocket on loopback: isolation, batched equivalence, admission, metrics."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from framecast.pipeline import Pipeline
from tests.test_server_support import Client, live_states, running, tiny_pipeline, wait_until

SESSIONS = [("a red circle", 1, 2), ("a blue square", 2, 2), ("a green star", 3, 3), ("a white circle", 4, 1)]
FRAMES = 12  # three chunks of four frames


def _references(pipe: Pipeline, sessions: list[tuple[str, int, int]], n: int) -> list[np.ndarray]:
    """What each session gives alone, through the plain Python API (before the server runs)."""
    return [pipe.generate(prompt, n, seed=seed, steps=steps) for prompt, seed, steps in sessions]


def _stream(url: str, prompt: str, seed: int, steps: int, fps: float, fmt: str, out: dict[int, Client]) -> None:
    c = Client(url)
    c.message("hello")
    c.send({"type": "start", "prompt": prompt, "seed": seed, "steps": steps, "fps": fps, "format": fmt})
    c.wait_for(lambda c: len(c.frames) >= FRAMES)
    c.close()
    out[seed] = c


def _run_concurrently(url: str, sessions: list[tuple[str, int, int]], fps: list[float], fmt: str) -> dict[int, Client]:
    out: dict[int, Client] = {}
    threads = [
        threading.Thread(target=_stream, args=(url, p, seed, steps, f, fmt, out))
        for (p, seed, steps), f in zip(sessions, fps, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == len(sessions), "a client did not finish"
    return out


def _assert_close(frames: list[np.ndarray], ref: np.ndarray) -> None:
    """Equal up to one level of uint8 rounding (rows batched with others differ from alone by ~1e-6)."""
    diff = np.abs(np.stack(frames).astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_four_sessions_receive_only_their_own_frames_equal_to_alone() -> None:
    pipe = tiny_pipeline()
    refs = _references(pipe, SESSIONS, FRAMES)
    with running(pipe) as srv:
        out = _run_concurrently(srv.ws_url, SESSIONS, [200.0] * 4, "raw")
        engine = srv.app.state.manager.engine
        assert engine.max_rows >= 2, "the sessions never shared a pass"
    for (_, seed, _), ref in zip(SESSIONS, refs, strict=True):
        frames = out[seed].frames
        assert [i for i, _ in frames[:FRAMES]] == list(range(FRAMES))  # no gaps, no foreign frames
        _assert_close([f for _, f in frames[:FRAMES]], ref)
    for i, ref in enumerate(refs):  # the sessions really differ, so equality above means isolation
        for other in refs[i + 1 :]:
            assert np.abs(ref.astype(np.int16) - other).mean() > 2


def test_sessions_joining_and_sitting_out_passes_equal_alone() -> None:
    """Different steps and frame rates: sessions share some passes and sit out others; output unchanged."""
    pipe = tiny_pipeline(seed=1)
    sessions = SESSIONS[:3]
    refs = _references(pipe, sessions, FRAMES)
    with running(pipe) as srv:
        out = _run_concurrently(srv.ws_url, sessions, [400.0, 40.0, 60.0], "png")
        assert srv.app.state.manager.engine.max_rows >= 2
    for (_, seed, _), ref in zip(sessions, refs, strict=True):
        _assert_close([f for _, f in out[seed].frames[:FRAMES]], ref)


def test_prompt_change_over_the_socket() -> None:
    pipe = tiny_pipeline()
    steady = pipe.generate("a red circle", 40, seed=5, steps=2)
    with running(pipe) as srv:
        c = Client(srv.ws_url)
        c.send({"type": "start", "prompt": "a red circle", "seed": 5, "steps": 2, "fps": 100, "format": "raw"})
        c.wait_for(lambda c: len(c.frames) >= 8)
        c.send({"type": "prompt", "text": "a blue square"})
        assert c.message("prompt")["text"] == "a blue square"
        c.wait_for(lambda c: len(c.frames) >= 40)
        stats = c.message("stats")
        assert stats["prompt_latency_ms"] is not None and stats["frames"] >= 40
        c.close()
    got = np.stack([f for _, f in c.frames[:40]])
    _assert_close(list(got[:8]), steady[:8])
    assert np.abs(got[-8:].astype(np.int16) - steady[-8:]).mean() > 2  # the new prompt shows


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_health_and_page() -> None:
    with running(tiny_pipeline()) as srv:
        c = Client(srv.ws_url)
        c.send({"type": "start", "prompt": "red", "seed": 0, "steps": 1, "fps": 100})
        c.wait_for(lambda c: len(c.frames) >= 8)
        status, health = _get(srv.url + "/healthz")
        assert status == 200 and '"status":"ok"' in health and '"streaming":1' in health
        status, text = _get(srv.url + "/metrics")
        c.close()
        assert status == 200
        for name in (
            "framecast_frames_emitted_total",
            "framecast_frames_sent_total",
            "framecast_deadline_misses_total",
            "framecast_queue_depth_frames",
            'framecast_sessions{state="streaming"} 1.0',
            "framecast_frames_dropped_total",
            "framecast_sessions_refused_total",
            "framecast_pass_rows",
        ):
            assert name in text, name
        for stage in ("forward", "decode", "encode", "send"):
            assert f'framecast_stage_seconds_count{{stage="{stage}"}}' in text
        emitted = next(line for line in text.splitlines() if line.startswith("framecast_frames_emitted_total"))
        assert float(emitted.split()[-1]) >= 8
        status, page = _get(srv.url + "/")
        assert status == 200 and "<canvas" in page and "/static/app.js" in page
        assert _get(srv.url + "/static/app.js")[0] == 200


def test_full_server_refuses_with_a_clear_message_and_keeps_serving() -> None:
    with running(tiny_pipeline(), max_sessions=2) as srv:
        a, b = Client(srv.ws_url), Client(srv.ws_url)
        a.send({"type": "start", "prompt": "red", "seed": 0, "steps": 1, "fps": 50})
        a.wait_for(lambda c: len(c.frames) >= 4)
        c = Client(srv.ws_url)
        err = c.message("error")
        assert err["code"] == "server_full" and "max-sessions" in err["message"]
        req = urllib.request.Request(
            srv.url + "/rtc/offer",
            data=b'{"sdp": "v=0", "type": "offer"}',
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 503 and "server is full" in e.value.read().decode()
        n = len(a.frames)
        a.wait_for(lambda c: len(c.frames) >= n + 8)  # the running session never noticed
        b.close()
        Client(srv.ws_url).message("hello")  # room again


def test_admission_refuses_a_start_that_would_overload_the_engine() -> None:
    with running(tiny_pipeline(), admission=True) as srv:
        manager = srv.app.state.manager
        a, b = Client(srv.ws_url), Client(srv.ws_url)
        a.send({"type": "start", "prompt": "red", "seed": 0, "steps": 1, "fps": 16})  # alone: always admitted
        a.wait_for(lambda c: len(c.frames) >= 4)
        for _ in range(300):  # pretend every pass takes 50 ms, whatever its size
            manager.cost.observe(2, 0.05)
            manager.cost.observe(8, 0.05)
        b.send({"type": "start", "prompt": "blue", "seed": 1, "steps": 1, "fps": 200})  # 50 passes/s: 250% busy
        err = b.message("error")
        assert err["code"] == "over_capacity" and "lower fps" in err["message"]
        b.send({"type": "start", "prompt": "blue", "seed": 1, "steps": 1, "fps": 8})  # 4 passes/s: 20% busy
        assert b.message("started")["fps"] == 8
        b.wait_for(lambda c: len(c.frames) >= 4)
        n = len(a.frames)
        a.wait_for(lambda c: len(c.frames) >= n + 4)
        assert 'framecast_sessions_refused_total{reason="capacity"} 1.0' in _get(srv.url + "/metrics")[1]
        for _ in range(300):
            manager.cost.observe(2, 1.0)
        err = Client(srv.ws_url).message("error")  # at connect: not even a default session fits
        assert err["code"] == "over_capacity"


def test_sessions_end_on_close_and_stop_and_free_their_state() -> None:
    pipe = tiny_pipeline()
    with running(pipe) as srv:
        engine = srv.app.state.manager.engine
        base = live_states()
        c = Client(srv.ws_url)
        c.send({"type": "start", "prompt": "red", "seed": 0, "steps": 2, "fps": 100})
        c.wait_for(lambda c: len(c.frames) >= 4)
        assert engine.live_count() == 1 and engine.state_bytes() > 0 and live_states() == base + 1
        c.send({"type": "stop"})
        c.message("stopped")
        wait_until(lambda: engine.live_count() == 0 and live_states() == base)
        c.close()
        wait_until(lambda: engine.attached_count() == 0 and not srv.app.state.manager.sessions)
