"""Many replicas behind one endpoint: `framecast replicas` (2 `framecast serve` processes with a small random
model behind nginx, all on loopback). Sessions stay on their replica (WebSocket, upload, WebRTC offer);
stopping one replica ends only its own sessions, new sessions go to the live one, and the other replica's
sessions go on streaming without losing a frame. Skipped where nginx is not installed (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framecast.errors import InputError

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server]'")
ws_client = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import WebSocketException  # noqa: E402

from framecast.server.nginx import COOKIE, check_port_free, find_nginx, render_http  # noqa: E402

try:
    NGINX: str | None = find_nginx()
except InputError:
    NGINX = None
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed: apt-get install nginx (.ci/run does)")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
FPS = 16.0


def _free_ports(n: int) -> int:
    """A port p with p..p+n-1 all free on loopback."""
    for _ in range(100):
        base = random.randrange(20000, 60000)
        try:
            for p in range(base, base + n):
                check_port_free("127.0.0.1", p, "--port")
            return base
        except InputError:
            continue
    raise AssertionError("no free ports")


class Cluster:
    """`framecast replicas --replicas 2` in a subprocess; its output lines collected by a thread."""

    def __init__(self) -> None:
        self.port = _free_ports(3)
        cmd = [sys.executable, "-m", "framecast", "replicas", "--replicas", "2", "--port", str(self.port),
               "--random-weights", "--max-fps", "60", "--no-admission"]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            assert self.process.poll() is None, "framecast replicas exited:\n" + "\n".join(self.lines[-30:])
            time.sleep(0.05)
        raise AssertionError(f"no line {pattern!r} in {timeout} s:\n" + "\n".join(self.lines[-30:]))

    def start(self) -> None:
        self.pids = {m[1]: int(m[2]) for m in (self.wait_line(rf"replica (r{i}) ready .* \(pid (\d+)\)", 180)
                                                for i in range(2))}  # fmt: skip
        self.folder = Path(self.wait_line(r"serving on .*config and logs in (\S+);", 30)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.replica_port = {"r0": self.port + 1, "r1": self.port + 2}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        if c.process.poll() is None:
            c.process.send_signal(signal.SIGTERM)
            try:
                c.process.wait(30)
            except subprocess.TimeoutExpired:
                c.process.kill()


def _get(url: str, cookie: str | None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
    try:
        with DIRECT.open(req, timeout=10) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post(url: str, cookie: str, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {"Cookie": f"{COOKIE}={cookie}", "Content-Type": "application/octet-stream"}
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with DIRECT.open(req, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _cookie(headers: Any) -> str | None:
    m = re.search(rf"{COOKIE}=(r\d+)", str(headers.get("Set-Cookie", "")))
    return m[1] if m else None


class Viewer:
    """A browser tab: loads the page (takes the cookie), opens /ws with it, reads frames in a thread."""

    def __init__(self, url: str, cookie: str | None = None) -> None:
        status, headers, _ = _get(url + "/", cookie)
        assert status == 200
        self.cookie = _cookie(headers)
        assert self.cookie is not None, headers
        params = inspect.signature(ws_client.connect).parameters  # websockets >= 15: no proxy, >= 16: connect now
        kwargs: dict[str, Any] = {k: v for k, v in (("proxy", None), ("legacy", True)) if k in params}
        self.ws = ws_client.connect(url.replace("http", "ws") + "/ws", open_timeout=10, origin=url, compression=None,
                                    additional_headers={"Cookie": f"{COOKIE}={self.cookie}"}, **kwargs)  # fmt: skip
        assert _cookie(self.ws.response.headers) == self.cookie  # the WebSocket's answer names the same replica
        self.hello = json.loads(self.ws.recv(timeout=10))
        self.frames: list[tuple[float, int]] = []  # (arrival time, frame index)
        self.messages: list[dict[str, Any]] = []
        self.closed_at: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for data in self.ws:
                if isinstance(data, bytes):
                    self.frames.append((time.monotonic(), struct.unpack("!I", data[:4])[0]))
                else:
                    self.messages.append(json.loads(data))
        except Exception:  # noqa: S110  (a reset counts as closed, as below)
            pass
        self.closed_at = time.monotonic()

    def start(self, seed: int) -> None:
        self.ws.send(json.dumps({"type": "start", "prompt": f"a red circle {seed}", "seed": seed, "fps": FPS,
                                 "format": "raw"}))  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return [m for m in self.messages if m["type"] == "stats"][-1]


def _wait(pred: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _failover(url: str, stale: str, live: str, t0: float) -> tuple[Viewer, float, int]:
    """A new viewer whose cookie names the stopping replica, retried until it lands on the live one (uvicorn
    notices a signal within 0.1 s: until then the stopping replica still takes sessions, which it then ends).
    Returns the session, the seconds since t0 and the attempts."""
    for attempt in range(1, 101):
        try:
            v = Viewer(url, stale)
        except (AssertionError, OSError, WebSocketException, ValueError):
            continue
        if v.cookie == live:
            return v, round(time.monotonic() - t0, 3), attempt
        v.ws.close()
        time.sleep(0.05)
    raise AssertionError("no session on the live replica after 100 attempts")


async def _rtc_hello(url: str, cookie: str) -> tuple[dict[str, Any], list[str]]:
    """Offer through nginx with `cookie`: the hello on the data channel and the answer's candidates."""
    import aiortc
    import httpx

    from framecast.server.rtc import use_loopback_ice

    use_loopback_ice()  # as a browser on this machine with --allow-loopback-in-peer-connection
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("control")
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    channel.on("message", lambda m: inbox.put_nowait(json.loads(m)))
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(trust_env=False, cookies={COOKIE: cookie}) as http:
        r = await http.post(url + "/rtc/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}, timeout=20)
    assert r.status_code == 200, r.text
    assert _cookie(r.headers) == cookie
    await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=r.json()["sdp"], type="answer"))
    hello = await asyncio.wait_for(inbox.get(), 20)
    await pc.close()
    return hello, [line for line in r.json()["sdp"].splitlines() if line.startswith("a=candidate:")]


@needs_nginx
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_sessions_stay_on_their_replica_and_survive_the_other_stopping(cluster: Cluster, stop: signal.Signals) -> None:
    url, figures = cluster.url, dict[str, Any]()
    viewers = [Viewer(url) for _ in range(4)]
    for v in viewers:  # pinned: the replica that said hello is the one the cookie names
        assert v.hello["replica"].endswith(f":{cluster.replica_port[v.cookie]}"), (v.cookie, v.hello["replica"])
    by = {name: [v for v in viewers if v.cookie == name] for name in ("r0", "r1")}
    figures["sessions"] = {name: len(vs) for name, vs in by.items()}
    assert by["r0"] and by["r1"], figures  # nginx spread the sessions over both replicas

    for v in viewers:  # the upload goes to the session's replica: its token is known there (a bad file, not 404)
        status, body = _post(f"{url}/upload?token={v.hello['upload_token']}", v.cookie, b"not a video")
        assert (status, body["code"]) == (400, "bad_input"), body
        other = "r1" if v.cookie == "r0" else "r0"
        status, body = _post(f"{url}/upload?token={v.hello['upload_token']}", other, b"not a video")
        assert (status, body["code"]) == (404, "unknown_token")  # what an unpinned upload would get

    for name in ("r0", "r1"):  # a WebRTC offer reaches its replica; ICE goes straight to it on loopback
        hello, candidates = asyncio.run(_rtc_hello(url, name))
        assert hello["replica"].endswith(f":{cluster.replica_port[name]}")
        assert candidates and all(" 127.0.0.1 " in c and f" {cluster.port} " not in c for c in candidates)

    for i, v in enumerate(viewers):
        v.start(seed=i)
    _wait(lambda: all(len(v.frames) >= 8 for v in viewers), 30, "frames on every session")

    t0 = time.monotonic()
    os.kill(cluster.pids["r0"], stop)  # a graceful stop, or a crash
    new, figures["failover_s"], figures["failover_attempts"] = _failover(url, "r0", "r1", t0)
    assert new.cookie == "r1" and new.hello["replica"].endswith(f":{cluster.replica_port['r1']}")
    fresh = Viewer(url)  # no cookie: the live replica
    assert fresh.cookie == "r1"
    new.start(seed=10)
    fresh.start(seed=11)
    _wait(lambda: all(v.closed_at is not None for v in by["r0"]), 15, "r0's sessions to end")
    figures["r0_sessions_ended_after_s"] = round(max(v.closed_at for v in by["r0"]) - t0, 2)  # type: ignore[type-var]
    _wait(lambda: time.monotonic() - t0 > 3.0 and min(len(new.frames), len(fresh.frames)) >= 8, 20, "new sessions")

    for v in by["r1"]:  # the live replica's sessions: open, every frame index once and in order, none dropped
        assert v.closed_at is None
        indices = [i for _, i in v.frames]
        assert indices == list(range(len(indices))), "frames lost or reordered"
        after = [t for t, _ in v.frames if t > t0]
        assert len(after) >= 0.5 * FPS * 3.0, f"only {len(after)} frames in the 3 s after the stop"
        assert v.stats()["dropped"] == 0
        gaps = [b - a for a, b in zip([t0, *after], after, strict=False)]
        figures.setdefault("r1_frames_after_stop", []).append(len(after))
        figures.setdefault("r1_longest_gap_s", []).append(round(max(gaps), 3))
    assert cluster.wait_line(r"replica r0 exited", 5)
    print(f"\nreplicas, r0 {stop.name}: {figures}")

    cluster.process.send_signal(signal.SIGTERM)  # the command stops everything and cleans up
    assert cluster.process.wait(30) == 0
    _wait(lambda: new.closed_at is not None, 5, "r1's sessions to end with the command")
    assert not cluster.folder.exists()
    for pid in cluster.pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@needs_nginx
def test_the_rendered_configuration_passes_nginx_t(tmp_path: Path) -> None:
    from framecast.server.nginx import Nginx

    conf = render_http([("127.0.0.1", 9001), ("127.0.0.1", 9002), ("::1", 9003)], "127.0.0.1", 9000, "access.log")
    assert "proxy_set_header Host $http_host;" in conf and "proxy_set_header Upgrade $http_upgrade;" in conf
    nginx = Nginx(NGINX or "nginx", tmp_path, conf, ("127.0.0.1", 9000))
    out = subprocess.run([NGINX or "nginx", "-t", "-p", str(tmp_path), "-c", str(nginx.conf), "-e",
                          str(tmp_path / "error.log")], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_clear_errors_busy_port_and_missing_nginx(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import socket

    from framecast.cli import main
    from framecast.server import nginx, replicas

    monkeypatch.setattr(replicas, "find_nginx", lambda: "nginx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["replicas", "--port", str(port), "--first-port", "1"]) == 2  # nothing started
        assert re.fullmatch(rf"framecast: error: port {port} on 127.0.0.1 is busy .*: pick another --port\n",
                            capsys.readouterr().err)  # fmt: skip
    monkeypatch.setattr(nginx.shutil, "which", lambda *a, **k: None)
    with pytest.raises(InputError, match="nginx is not installed: apt-get install nginx"):
        find_nginx()
