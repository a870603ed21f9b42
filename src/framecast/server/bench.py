"""`framecast bench-serve`: the server under load, on loopback, bounded in time.

Starts the app in-process on 127.0.0.1 and a free port, then runs phases of WebSocket clients that each
start a stream and count the frames they receive: first 1 session, then N at once. Per session: frames
per second, p50 / p99 time between frames, deadline-miss rate (from the server's stats messages).
Per phase: aggregate frames per second, its ratio to the 1-session phase, and the spread between sessions.

Two modes: `paced` (every session asks for `fps`; admission control on, so refused sessions are counted)
and `max` (sessions ask for far more than the engine can give, admission off: the engine's throughput).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from framecast.pipeline import Pipeline
from framecast.server.app import create_app
from framecast.server.run import ServerThread
from framecast.server.settings import ABSOLUTE_MAX_FPS, ServerSettings

WARMUP_S = 2.0  # after the first frame of a phase, before counting
PROMPTS = (
    "a red circle moving left",
    "a blue square moving right",
    "a green star moving up",
    "a yellow triangle bouncing",
    "a white circle moving down",
    "a purple star still",
)


@dataclass
class SessionFigures:
    fps: float
    frames: int
    interval_p50_ms: float
    interval_p99_ms: float
    chunks: int
    misses: int
    miss_rate: float


@dataclass
class PhaseResult:
    mode: str  # paced or max
    sessions: int  # asked for
    target_fps: float
    refused: int
    per_session: list[SessionFigures]
    aggregate_fps: float
    spread: float  # (max - min) / max of per-session fps; 0 = perfectly even


@dataclass
class ServeBenchResult:
    model: str
    random_weights: bool
    frame_size: tuple[int, int]
    steps: int
    seconds: float
    phases: list[PhaseResult]
    load_average: list[float] = field(default_factory=list)

    def speedups(self) -> dict[str, float]:
        """Aggregate fps of the N-session phase over the 1-session phase, per mode."""
        out = {}
        for mode in {p.mode for p in self.phases}:
            ph = sorted((p for p in self.phases if p.mode == mode), key=lambda p: p.sessions)
            if len(ph) >= 2 and ph[0].aggregate_fps > 0:
                out[mode] = ph[-1].aggregate_fps / ph[0].aggregate_fps
        return out

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["speedups"] = self.speedups()
        return d


@dataclass
class _Log:
    arrivals: list[float] = field(default_factory=list)
    stats: list[tuple[float, int, int]] = field(default_factory=list)  # (time, chunks, misses)
    refused: bool = False


async def _client(url: str, start: dict[str, Any], until: float) -> _Log:
    log = _Log()
    async with connect(url, max_size=1 << 24) as ws:
        if json.loads(await ws.recv()).get("type") == "error":
            log.refused = True
            return log
        await ws.send(json.dumps(start))
        await _read(ws, log, until)
    return log


async def _read(ws: ClientConnection, log: _Log, until: float) -> None:
    with contextlib.suppress(TimeoutError):
        while (left := until - time.monotonic()) > 0:
            msg = await asyncio.wait_for(ws.recv(), left)
            now = time.monotonic()
            if isinstance(msg, bytes):
                log.arrivals.append(now)
                continue
            m = json.loads(msg)
            if m.get("type") == "stats":
                log.stats.append((now, m["chunks"], m["misses"]))
            elif m.get("type") == "error":
                log.refused = True
                return


def _figures(log: _Log, t0: float, t1: float) -> SessionFigures:
    times = np.asarray([t for t in log.arrivals if t0 <= t <= t1])
    gaps = np.diff(times) * 1000 if len(times) > 1 else np.zeros(1)
    inside = [s for s in log.stats if t0 <= s[0] <= t1]
    chunks = inside[-1][1] - inside[0][1] if len(inside) > 1 else 0
    misses = inside[-1][2] - inside[0][2] if len(inside) > 1 else 0
    return SessionFigures(
        fps=len(times) / (t1 - t0),
        frames=len(times),
        interval_p50_ms=float(np.percentile(gaps, 50)),
        interval_p99_ms=float(np.percentile(gaps, 99)),
        chunks=chunks,
        misses=misses,
        miss_rate=misses / chunks if chunks else 0.0,
    )


async def _phase(url: str, mode: str, n: int, fps: float, steps: int | None, seconds: float) -> PhaseResult:
    start_at = time.monotonic()
    t0, t1 = start_at + WARMUP_S, start_at + WARMUP_S + seconds
    starts = [
        {
            "type": "start",
            "prompt": PROMPTS[i % len(PROMPTS)],
            "seed": i,
            "fps": fps,
            **({"steps": steps} if steps else {}),
        }
        for i in range(n)
    ]
    logs = await asyncio.gather(*(_client(url, s, t1) for s in starts))
    served = [_figures(lg, t0, t1) for lg in logs if not lg.refused]
    rates = [f.fps for f in served]
    spread = (max(rates) - min(rates)) / max(rates) if rates and max(rates) > 0 else 0.0
    return PhaseResult(mode, n, fps, sum(lg.refused for lg in logs), served, sum(rates), spread)


def _settings(mode: str, sessions: int) -> ServerSettings:
    if mode == "max":
        return ServerSettings(port=0, max_sessions=sessions, max_fps=ABSOLUTE_MAX_FPS, admission=False)
    return ServerSettings(port=0, max_sessions=sessions, max_fps=ABSOLUTE_MAX_FPS)


def run_serve_bench(
    pipeline: Pipeline,
    sessions: int,
    seconds: float,
    fps: float | None,
    steps: int | None,
    modes: tuple[str, ...],
    model: str = "tiny",
    random_weights: bool = True,
) -> ServeBenchResult:
    """Phases of 1 then `sessions` clients per mode, each `seconds` long after a short warm-up."""
    load = [round(os.getloadavg()[0], 2)]
    phases = []
    for mode in modes:
        target = ABSOLUTE_MAX_FPS if mode == "max" else (fps or pipeline.config.fps)
        with ServerThread(create_app(pipeline, _settings(mode, sessions)), _settings(mode, sessions)) as srv:
            for n in dict.fromkeys((1, sessions)):
                phases.append(asyncio.run(_phase(srv.ws_url, mode, n, target, steps, seconds)))
    steps_used = steps or pipeline.stream_config().steps
    load.append(round(os.getloadavg()[0], 2))
    return ServeBenchResult(model, random_weights, pipeline.frame_size, steps_used, seconds, phases, load)


def format_table(r: ServeBenchResult) -> str:
    h, w = r.frame_size
    lines = [
        f"bench-serve: {r.model}{' (random weights)' if r.random_weights else ''}, {w}x{h}, "
        f"{r.steps} steps, {r.seconds:g} s a phase, load average {r.load_average}",
        f"{'mode':6} {'sessions':>8} {'refused':>7} {'aggregate fps':>13} {'spread':>6}  per session: "
        "fps, interval p50/p99 ms, miss rate",
    ]
    for p in r.phases:
        per = "; ".join(
            f"{s.fps:.1f}, {s.interval_p50_ms:.0f}/{s.interval_p99_ms:.0f}, {_miss(p, s)}" for s in p.per_session
        )
        target = "max" if p.mode == "max" else f"{p.target_fps:g} fps"
        lines.append(f"{target:6} {p.sessions:>8} {p.refused:>7} {p.aggregate_fps:>13.1f} {p.spread:>6.0%}  {per}")
    for mode, x in sorted(r.speedups().items()):
        lines.append(f"{mode}: aggregate with {max(p.sessions for p in r.phases)} sessions = {x:.2f}x one session's")
    return "\n".join(lines)


def _miss(p: PhaseResult, s: SessionFigures) -> str:
    return "-" if p.mode == "max" else f"{s.miss_rate:.0%}"  # sessions at max speed have no real deadline
