"""Soak the live server on loopback: N sessions streaming for M minutes beside one client flooding prompts and
another flooding malformed messages (issue 20). Everything (server, model, clients) runs in this process, so
the RSS figures include the clients and the clients' CPU counts against the server.

    python scripts/soak_server.py [--minutes 5] [--sessions 4] [--fps 16] [--model tiny] [--random-weights]
                                  [--json FILE]

Prints, per session: frames per second received, the longest time without a frame, deadline misses (from its
stats); per flood: messages sent, and how many the rate limit dropped; RSS every --rss-every seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from framecast.pipeline import Pipeline
from framecast.server import ServerSettings, create_app
from framecast.server.run import ServerThread

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


@dataclass
class Viewer:
    """What one streaming session received."""

    name: str
    frames: int = 0
    first: float = 0.0
    last: float = 0.0
    longest_gap_s: float = 0.0
    misses: int = 0
    errors: list[str] = field(default_factory=list)

    def frame(self, now: float) -> None:
        if self.frames:
            self.longest_gap_s = max(self.longest_gap_s, now - self.last)
        else:
            self.first = now
        self.frames, self.last = self.frames + 1, now

    def message(self, text: str) -> None:
        msg = json.loads(text)
        if msg["type"] == "stats":
            self.misses = msg["misses"]
        elif msg["type"] == "error":
            self.errors.append(msg["code"])

    @property
    def fps(self) -> float:
        return (self.frames - 1) / (self.last - self.first) if self.frames > 1 else 0.0


def _watch(url: str, viewer: Viewer, fps: float, seed: int, stop: threading.Event) -> None:
    with connect(url, open_timeout=30, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "prompt": f"a red circle moving left {seed}", "seed": seed, "fps": fps}))
        while not stop.is_set():
            try:
                data = ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            if isinstance(data, bytes):
                viewer.frame(time.monotonic())
            else:
                viewer.message(data)


def _flood(url: str, kind: str, counts: dict[str, int], stop: threading.Event) -> None:
    """Send messages as fast as the socket takes them (prompts while streaming, or malformed ones); read the
    replies in the background so the server's sender never waits on us."""
    with connect(url, open_timeout=30, max_size=None) as ws:
        drain = threading.Thread(target=_drain, args=(ws, stop), daemon=True)
        drain.start()
        if kind == "prompts":
            ws.send(json.dumps({"type": "start", "prompt": "a blue square", "seed": 9, "fps": 4}))
        i = 0
        while not stop.is_set():
            ws.send(json.dumps({"type": "prompt", "text": f"flood prompt {i}"}) if kind == "prompts" else "{nope" * 10)
            i += 1
            time.sleep(0.001)
        counts[kind] = i


def _drain(ws: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            ws.recv(timeout=0.5)
        except TimeoutError:
            continue
        except Exception:
            return


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * 4096 / 2**20, 1)


def _metric(url: str, pattern: str) -> float:
    with _DIRECT.open(url + "/metrics", timeout=10) as res:
        text = res.read().decode()
    m = re.search(rf"^{re.escape(pattern)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def soak(pipe: Pipeline, sessions: int, minutes: float, fps: float, rss_every: float) -> dict[str, Any]:
    settings = ServerSettings(port=0, max_sessions=sessions + 2, admission=False)
    with ServerThread(create_app(pipe, settings), settings) as srv:
        stop, counts = threading.Event(), {}
        viewers = [Viewer(f"s{i}") for i in range(sessions)]
        threads = [threading.Thread(target=_watch, args=(srv.ws_url, v, fps, i, stop)) for i, v in enumerate(viewers)]
        threads += [threading.Thread(target=_flood, args=(srv.ws_url, k, counts, stop)) for k in ("prompts", "bad")]
        for t in threads:
            t.start()
        rss, load, t0 = [_rss_mb()], [_load_average()], time.monotonic()
        while time.monotonic() - t0 < minutes * 60:
            time.sleep(min(rss_every, max(minutes * 60 - (time.monotonic() - t0), 0.0)))
            rss.append(_rss_mb())
            load.append(_load_average())
        stop.set()
        for t in threads:
            t.join(30)
        dropped = _metric(srv.url, 'framecast_bad_messages_total{code="rate_limited"}')
    return {
        "minutes": minutes,
        "target_fps": fps,
        "viewers": [{**asdict(v), "fps": round(v.fps, 2), "errors": sorted(set(v.errors))} for v in viewers],
        "flood_sent": counts,
        "rate_limited": int(dropped),
        "rss_mb": rss,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": load,
    }


def report(r: dict[str, Any]) -> str:
    lines = [f"soak: {r['minutes']:g} min, {len(r['viewers'])} sessions at {r['target_fps']:g} fps"]
    for v in r["viewers"]:
        gap = v["longest_gap_s"]
        lines.append(f"  {v['name']}: {v['fps']:.2f} fps, {v['frames']} frames, longest gap {gap:.3f} s, "
                     f"{v['misses']} deadline misses, errors {v['errors'] or 'none'}")  # fmt: skip
    sent = r["flood_sent"]
    lines.append(f"  flood: {sent.get('prompts', 0)} prompts, {sent.get('bad', 0)} malformed; {r['rate_limited']} "
                 "dropped by the rate limit")  # fmt: skip
    lines.append(f"  RSS MB (process, clients included): {r['rss_mb']}; peak {r['peak_rss_mb']}")
    lines.append(f"  load average (1, 5, 15 min) at start / end: {r['load_average'][0]} / {r['load_average'][-1]}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--rss-every", type=float, default=30.0, help="seconds between RSS samples (default: 30)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    pipe = Pipeline.load(a.model, random_weights=a.random_weights)
    result = soak(pipe, a.sessions, a.minutes, a.fps, a.rss_every)
    print(report(result))
    if a.json is not None:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
