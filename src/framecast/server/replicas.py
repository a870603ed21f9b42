"""`framecast replicas`: N local `framecast serve` processes behind nginx on one port, for trying many
replicas on one machine (one per GPU with `--devices cuda:0,cuda:1`).

Each replica is `python -m framecast serve --host 127.0.0.1 --port P+i ...` in a process of its own; nginx
runs from a temporary folder (its config, pid and logs there, nothing of the system's touched). Ctrl-C or
SIGTERM stop the replicas (each closes its sessions gracefully), then nginx, then remove the folder. A
replica that exits on its own is reported and the others go on serving; nginx exiting ends everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from framecast.errors import FramecastError, InputError
from framecast.server.nginx import Nginx, check_port_free, find_nginx, render_http, replica_name
from framecast.server.settings import ServerSettings

LOOPBACK = "127.0.0.1"


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def _say(text: str) -> None:
    print(f"framecast: {text}", file=sys.stderr, flush=True)


def _prefix_lines(stream: IO[bytes], name: str) -> None:
    """Copy a replica's output to stderr, each line prefixed with its name."""
    for raw in iter(stream.readline, b""):
        sys.stderr.write(f"[{name}] {raw.decode(errors='replace')}")
        sys.stderr.flush()


def start_replica(i: int, port: int, device: str, serve_args: list[str]) -> Replica:
    cmd = [sys.executable, "-m", "framecast", "serve", "--host", LOOPBACK, "--port", str(port), "--device", device]
    p = subprocess.Popen([*cmd, *serve_args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip  (Ctrl-C is ours to forward)
    assert p.stdout is not None
    threading.Thread(target=_prefix_lines, args=(p.stdout, replica_name(i)), daemon=True).start()
    return Replica(replica_name(i), port, p)


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def healthy(r: Replica) -> bool:
    try:
        with _DIRECT.open(r.url + "/healthz", timeout=2) as res:
            return bool(json.load(res).get("status") == "ok")
    except (OSError, ValueError):
        return False


def wait_ready(replicas: list[Replica], stop: threading.Event, timeout_s: float) -> None:
    """Return once every replica answers /healthz; FramecastError when one exits first or time is up."""
    waiting, deadline = list(replicas), time.monotonic() + timeout_s
    while waiting and not stop.is_set():
        for r in list(waiting):
            code = r.process.poll()
            if code is not None:
                raise FramecastError(f"replica {r.name} (port {r.port}) exited with code {code} before it was "
                                     "ready (its log is above)")  # fmt: skip
            if healthy(r):
                waiting.remove(r)
                _say(f"replica {r.name} ready on {r.url} (pid {r.process.pid})")
        if waiting and time.monotonic() > deadline:
            raise FramecastError(f"replicas {', '.join(r.name for r in waiting)} not ready after {timeout_s:g} s")
        stop.wait(0.2)


def stop_replicas(replicas: list[Replica], timeout_s: float = 15.0) -> None:
    """SIGTERM every replica (each closes its sessions gracefully), SIGKILL those still up after timeout_s."""
    for r in replicas:
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for r in replicas:
        try:
            r.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            r.process.kill()
            r.process.wait()


def _check(count: int, port: int, first_port: int, devices: list[str]) -> None:
    if not 1 <= count <= 64:
        raise InputError(f"--replicas must be in 1..64, got {count}")
    if first_port < 1 or first_port + count - 1 > 65535:
        raise InputError(f"--first-port {first_port} leaves no room for {count} replicas below 65536")
    if port in range(first_port, first_port + count):
        raise InputError(f"--port {port} is one of the replicas' ports {first_port}..{first_port + count - 1}")
    if len(devices) != count:
        raise InputError(f"--devices names {len(devices)} devices for {count} replicas: give one per replica")


def _watch(replicas: list[Replica], nginx: Nginx, stop: threading.Event) -> None:
    """Until `stop`: report replicas that exit; FramecastError when nginx or every replica is gone."""
    gone: set[str] = set()
    while not stop.wait(0.5):
        for r in replicas:
            if r.name not in gone and r.process.poll() is not None:
                gone.add(r.name)
                _say(f"replica {r.name} exited with code {r.process.returncode}: its sessions ended, new ones "
                     "go to the others")  # fmt: skip
        if len(gone) == len(replicas):
            raise FramecastError("every replica exited (their logs are above)")
        assert nginx.process is not None
        if nginx.process.poll() is not None:
            raise FramecastError(f"nginx exited with code {nginx.process.returncode}: {nginx.last_error()}")


def run_replicas(count: int, host: str, port: int, first_port: int, devices: list[str], serve_args: list[str],
                 start_timeout_s: float = 600.0) -> None:  # fmt: skip
    """Serve `count` replicas behind nginx on host:port until SIGINT or SIGTERM."""
    _check(count, port, first_port, devices)
    if "--token" not in serve_args and not os.environ.get("FRAMECAST_TOKEN"):
        ServerSettings(host=host)  # a non-loopback nginx needs --token: the same one-line error as `serve`
    binary = find_nginx()
    check_port_free(host, port, "--port")
    ports = [first_port + i for i in range(count)]
    for p in ports:
        check_port_free(LOOPBACK, p, "--first-port")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda n, f: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    folder = Path(tempfile.mkdtemp(prefix="framecast-nginx-"))
    replicas: list[Replica] = []
    nginx = Nginx(binary, folder, render_http([(LOOPBACK, p) for p in ports], host, port, str(folder / "access.log")),
                  (host, port))  # fmt: skip
    try:
        front = [*serve_args, *_front_origins(host, port)]  # requests reach the replicas with nginx's Host
        replicas = [start_replica(i, p, devices[i], front) for i, p in enumerate(ports)]
        wait_ready(replicas, stop, start_timeout_s)
        if not stop.is_set():
            nginx.start()
            _say(f"serving on http://{_url_host(host)}:{port}: {count} replicas behind nginx (config and logs in "
                 f"{folder}; Ctrl-C to stop)")  # fmt: skip
            _watch(replicas, nginx, stop)
    finally:
        stop_replicas(replicas)
        nginx.stop()
        shutil.rmtree(folder, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _say("replicas and nginx stopped")


def _front_origins(host: str, port: int) -> list[str]:
    """`--allow-origin` options for nginx's address (every loopback name when it listens on loopback)."""
    names = ["127.0.0.1", "localhost", "[::1]"] if host in ("127.0.0.1", "localhost", "::1") else [_url_host(host)]
    return [x for name in names for x in ("--allow-origin", f"http://{name}:{port}")]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
