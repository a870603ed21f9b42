"""Benchmarks of one model on this machine: both schedules side by side, and the engine's own overhead.

    result = run_bench("tiny", random_weights=True, seconds=5.0)
    print(format_table(result))
    json.dump(result.to_json(), open("bench.json", "w"))

Three parts, each about `seconds` long, after a warm-up that fills the KV cache of one stream per schedule:

* first frame: fresh streams (a new prompt each, so text encoding counts) until their first frame.
* stream:      the warm streams tick by tick through the driver's step (DiT + decode to uint8); frames per
               second, chunk latency (wall time from the start of the tick that admits a chunk to the
               end of the tick that emits it) and the time between emitted chunks.
* overhead:    the driver's step up to the finished latents (`Driver.advance`: input, admission, the
               batched pass; no decode): a forward pre-hook records the exact inputs of whole chunks' worth
               of denoiser calls, as many further steps are timed with nothing recorded, and the recorded
               calls are replayed in a bare loop; engine time over bare time.

The two schedules alternate round by round (and engine with bare loop), the order flipping every round,
so that machine noise hits both alike. See docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from framecast.engine.live import Stream
from framecast.pipeline import Pipeline
from framecast.stream.config import StreamConfig

SCHEDULES: dict[str, bool] = {"stream batch": True, "sequential": False}  # name -> StreamConfig.batch_steps
ROUNDS = 6  # rounds per part; schedules (and engine / bare loop) alternate within each
PAIRS = 3  # engine / bare timings per overhead round, the order flipping each time (one recording, replayed)
PROMPT = "a red circle moving left"
MIN_CHUNKS = 2  # latency samples a stream round takes at least, however short `seconds` is
RECORD_BYTES = 1 << 30  # an overhead round stops recording inputs past this (Wan-size caches are large)

Call = tuple[tuple[Any, ...], dict[str, Any]]  # recorded (args, kwargs) of one denoiser forward


@dataclass
class ScheduleResult:
    """Figures of one schedule. Latencies in milliseconds, time to first frame in seconds."""

    fps: float  # end to end: DiT + decode to uint8 frames, steady state
    first_frame_s: float  # median, from creating the stream to its first frame
    latency_p50_ms: float  # chunk latency: start of the admitting tick to the end of the emitting tick
    latency_p99_ms: float
    interval_p50_ms: float  # time between emitted chunks
    interval_p99_ms: float
    engine_fps: float  # DiT-only: the driver step without decode (`Driver.advance`)
    bare_fps: float  # the same forward passes replayed in a bare loop
    engine_vs_bare: float  # engine_fps / bare_fps, median over rounds (1.0 = no overhead)
    overhead_pct: float  # (engine time / bare time - 1) * 100, median over rounds
    passes_per_chunk: int  # denoiser passes per emitted chunk in steady state
    chunks: int  # chunk latency samples
    passes: int  # forward passes compared between engine and bare loop


@dataclass
class BenchResult:
    """One model on this machine, every figure measured in the same run."""

    model: str
    random_weights: bool
    device: str
    dtype: str
    frame_size: tuple[int, int]  # (height, width) in pixels
    steps: int
    frames_per_chunk: int
    seconds: float  # time budget of each part
    stream_batch: ScheduleResult
    sequential: ScheduleResult
    batch_vs_sequential: float  # throughput (fps) of stream batch over sequential
    torch_version: str = torch.__version__
    threads: int = field(default_factory=torch.get_num_threads)  # torch CPU threads during the run
    load_average: list[float] = field(default_factory=list)  # 1-minute system load at start and end (Unix)

    def schedules(self) -> dict[str, ScheduleResult]:
        return {"stream batch": self.stream_batch, "sequential": self.sequential}

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frame_size"] = list(self.frame_size)
        return d


# -- measuring helpers ---------------------------------------------------------------------------------


def _clock(device: torch.device) -> float:
    """perf_counter once the device is idle."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync: kernels queued so far must finish before the clock is read
    return time.perf_counter()


def _load() -> list[float]:
    """1-minute load average: how busy the machine was besides us (empty where unavailable)."""
    return [round(os.getloadavg()[0], 2)] if hasattr(os, "getloadavg") else []


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def _nbytes(obj: object) -> int:
    """Bytes of the tensors in a recorded call: tensors, tuples, dicts and dataclasses of them."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, tuple | list):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(_nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


# -- stream rounds: fps, chunk latency, time between chunks --------------------------------------------


@dataclass
class _Timeline:
    """Tick log of one stream: when each chunk in flight was admitted, what was emitted and when."""

    frames_per_chunk: int
    admitted: deque[float | None] = field(default_factory=deque)  # oldest first; None: admitted off the clock
    last_emit: float | None = None
    latencies: list[float] = field(default_factory=list)
    intervals: list[float] = field(default_factory=list)
    frames: int = 0
    busy: float = 0.0  # seconds inside timed ticks

    def new_round(self) -> None:
        """Forget times from before a pause, so the other schedule's round never counts as latency."""
        self.admitted = deque(None for _ in self.admitted)
        self.last_emit = None

    def record(self, t0: float, t1: float, admitted: int, frames: int) -> None:
        self.admitted.extend([t0] * admitted)
        self.frames, self.busy = self.frames + frames, self.busy + (t1 - t0)
        for _ in range(frames // self.frames_per_chunk):
            start = self.admitted.popleft()
            if start is not None:
                self.latencies.append(t1 - start)
            if self.last_emit is not None:
                self.intervals.append(t1 - self.last_emit)
            self.last_emit = t1


def _tick(stream: Stream, log: _Timeline, device: torch.device) -> None:
    t0 = _clock(device)  # sync inside: the tick starts on an idle device
    out = stream.driver.step([stream])[0]
    t1 = _clock(device)  # sync inside: the tick's kernels (including decode) are done
    log.record(t0, t1, out.admitted, len(out.frames))


def _stream_round(stream: Stream, log: _Timeline, device: torch.device, budget: float) -> None:
    log.new_round()
    start, n0 = time.perf_counter(), len(log.latencies)
    while time.perf_counter() - start < budget or len(log.latencies) - n0 < MIN_CHUNKS:
        _tick(stream, log, device)


def _warm_up(stream: Stream, log: _Timeline, device: torch.device) -> None:
    """Tick until the KV cache is full, so timed passes have steady-state shapes."""
    for _ in range(stream.family.schedule(stream.cfg).warm_passes):
        _tick(stream, log, device)
    log.latencies.clear()
    log.intervals.clear()
    log.frames, log.busy = 0, 0.0


# -- first frame ---------------------------------------------------------------------------------------


def _first_frame(pipe: Pipeline, prompt: str, seed: int, cfg: StreamConfig) -> float:
    t0 = _clock(pipe.device)  # sync inside: nothing else is running when the viewer arrives
    stream = pipe.stream(prompt, seed, cfg)
    while not stream.step():
        pass
    return _clock(pipe.device) - t0  # sync inside: the first frame is on the host


# -- overhead rounds: engine vs bare loop of the same forward passes -----------------------------------


@dataclass
class _Recorder:
    """Forward pre-hook (with_kwargs=True) that keeps the inputs of every denoiser call, as they are at the call:
    inputs that are views of a stream's cache (which later passes overwrite) are kept as copies."""

    calls: list[Call] = field(default_factory=list)
    nbytes: int = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls.append((_snapshot(args), _snapshot(dict(kwargs))))
        self.nbytes += _nbytes(args) + _nbytes(kwargs)


def _snapshot(obj: Any) -> Any:
    """`obj` with every tensor that is a slice of another (a view of a cache, which later passes overwrite) copied in
    the same layout; broadcast views (stride 0: a condition or latents expanded over frames or rows) and other
    tensors kept as they are, so the bare loop gets inputs of the same kind as the engine's."""
    if isinstance(obj, Tensor):
        return obj.clone() if obj._base is not None and 0 not in obj.stride() else obj
    if isinstance(obj, tuple | list):
        return type(obj)(_snapshot(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _snapshot(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _snapshot(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


@contextmanager
def _recording(model: nn.Module) -> Iterator[_Recorder]:
    rec = _Recorder()
    handle = model.register_forward_pre_hook(rec, with_kwargs=True)
    try:
        yield rec
    finally:
        handle.remove()


def _record_round(pipe: Pipeline, stream: Stream, budget: float) -> list[Call]:
    """Engine passes (no decode) for about `budget` seconds, whole chunks' worth, with their inputs recorded."""
    cycle = stream.family.schedule(stream.cfg).passes_per_chunk  # one cycle of the schedule's pass kinds
    with _recording(pipe.family.network) as rec:
        t0 = time.perf_counter()
        while (
            not rec.calls or len(rec.calls) % cycle or (time.perf_counter() - t0 < budget and rec.nbytes < RECORD_BYTES)
        ):
            pipe.driver.advance([stream])
    return rec.calls


def _engine_round(pipe: Pipeline, stream: Stream, passes: int) -> float:
    """Wall time of the next `passes` driver steps (no decode), with nothing recorded: the engine as streams run it.

    They follow the recorded passes on the same stream: the same number of whole chunks, so the same mix of passes.
    """
    t0 = _clock(pipe.device)  # sync inside: start on an idle device
    for _ in range(passes):
        pipe.driver.advance([stream])
    return _clock(pipe.device) - t0  # sync inside: the round's last pass is done


@torch.inference_mode()
def _bare_round(model: nn.Module, calls: list[Call], device: torch.device) -> float:
    """The same forward passes, called back to back with their recorded inputs."""
    t0 = _clock(device)  # sync inside: start on an idle device
    for args, kwargs in calls:
        model(*args, **kwargs)
    return _clock(device) - t0  # sync inside: the last pass is done


@dataclass
class _Overhead:
    engine: list[float] = field(default_factory=list)  # seconds per pass, one entry an engine / bare pair
    bare: list[float] = field(default_factory=list)
    passes: int = 0

    def add(self, engine_s: float, bare_s: float, passes: int) -> None:
        self.engine.append(engine_s / passes)
        self.bare.append(bare_s / passes)
        self.passes += passes


def _overhead_round(pipe: Pipeline, stream: Stream, out: _Overhead | None, budget: float) -> None:
    """Record whole chunks' worth of passes, then PAIRS times: as many engine passes and the recorded ones
    replayed bare (`_interleaved`)."""
    calls = _record_round(pipe, stream, budget)
    for _ in range(PAIRS):
        engine_s, bare_s = _interleaved(pipe, stream, calls)
        if out is not None:  # None: a warm-up round
            out.add(engine_s, bare_s, len(calls))


def _interleaved(pipe: Pipeline, stream: Stream, calls: list[Call]) -> tuple[float, float]:
    """Engine and bare time of as many passes as `calls`, interleaved a chunk's cycle of passes at a time, the
    order flipping every cycle: a slow moment of the machine lands on both sides alike."""
    cycle, net = stream.family.schedule(stream.cfg).passes_per_chunk, pipe.family.network
    engine_s = bare_s = 0.0
    for c in range(len(calls) // cycle):
        part = calls[c * cycle : (c + 1) * cycle]
        if c % 2 == 0:
            engine_s += _engine_round(pipe, stream, cycle)
            bare_s += _bare_round(net, part, pipe.device)
        else:
            bare_s += _bare_round(net, part, pipe.device)
            engine_s += _engine_round(pipe, stream, cycle)
    return engine_s, bare_s


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class _Schedule:
    """Everything measured for one schedule during a run."""

    name: str
    cfg: StreamConfig
    stream: Stream
    log: _Timeline
    first: list[float] = field(default_factory=list)
    over: _Overhead = field(default_factory=_Overhead)

    @property
    def passes_per_chunk(self) -> int:
        return self.stream.family.schedule(self.cfg).passes_per_chunk


def _make_schedule(pipe: Pipeline, name: str, seed: int, steps: int | None) -> _Schedule:
    cfg = pipe.stream_config(batch_steps=SCHEDULES[name], **({} if steps is None else {"steps": steps}))
    return _Schedule(name, cfg, pipe.stream(PROMPT, seed, cfg), _Timeline(pipe.frames_per_chunk))


def _alternate(scheds: list[_Schedule], i: int) -> list[_Schedule]:
    """Both schedules, the order flipping every round."""
    return scheds if i % 2 == 0 else scheds[::-1]


def _part_first_frame(pipe: Pipeline, scheds: list[_Schedule], seed: int, budget: float, i: int) -> None:
    start, n = time.perf_counter(), 0
    while n == 0 or time.perf_counter() - start < budget:
        for s in _alternate(scheds, i + n):
            prompt = f"{PROMPT}, take {i}.{n}"  # new prompt: text encoding is part of a first frame
            s.first.append(_first_frame(pipe, prompt, seed, s.cfg))
        n += 1


def _part_stream(pipe: Pipeline, scheds: list[_Schedule], budget: float, i: int) -> None:
    for s in _alternate(scheds, i):
        _stream_round(s.stream, s.log, pipe.device, budget / 2)


def _part_overhead(pipe: Pipeline, scheds: list[_Schedule], budget: float, i: int) -> None:
    for s in _alternate(scheds, i):  # each round records about budget / 10 of passes, then times PAIRS pairs
        _overhead_round(pipe, s.stream, s.over if i >= 0 else None, budget / 10)


def _summarise(s: _Schedule, frames_per_chunk: int) -> ScheduleResult:
    lat, gap = [x * 1e3 for x in s.log.latencies], [x * 1e3 for x in s.log.intervals]
    per_pass = frames_per_chunk / s.passes_per_chunk  # frames finished per forward pass
    ratios = [b / e for e, b in zip(s.over.engine, s.over.bare, strict=True)]
    return ScheduleResult(
        fps=s.log.frames / s.log.busy,
        first_frame_s=statistics.median(s.first),
        latency_p50_ms=_pct(lat, 50),
        latency_p99_ms=_pct(lat, 99),
        interval_p50_ms=_pct(gap, 50),
        interval_p99_ms=_pct(gap, 99),
        engine_fps=per_pass / statistics.median(s.over.engine),
        bare_fps=per_pass / statistics.median(s.over.bare),
        engine_vs_bare=statistics.median(ratios),
        overhead_pct=(statistics.median([1 / r for r in ratios]) - 1) * 100,
        passes_per_chunk=s.passes_per_chunk,
        chunks=len(lat),
        passes=s.over.passes,
    )


def _result(pipe: Pipeline, model: str, random_weights: bool, seconds: float, scheds: list[_Schedule]) -> BenchResult:
    batch, seq = (_summarise(s, pipe.frames_per_chunk) for s in scheds)
    return BenchResult(
        model=model,
        random_weights=random_weights,
        device=str(pipe.device),
        dtype=str(pipe.dtype).removeprefix("torch."),
        frame_size=pipe.frame_size,
        steps=scheds[0].cfg.steps,
        frames_per_chunk=pipe.frames_per_chunk,
        seconds=seconds,
        stream_batch=batch,
        sequential=seq,
        batch_vs_sequential=batch.fps / seq.fps,
    )


Part = tuple[str, Callable[[int], None]]  # (label, function running round i of the part)


def _parts(pipe: Pipeline, scheds: list[_Schedule], seed: int, seconds: float) -> list[Part]:
    """(label, round function) per part; each part is ROUNDS rounds of about seconds / ROUNDS."""
    per = seconds / ROUNDS
    return [
        ("first frame", lambda i: _part_first_frame(pipe, scheds, seed, per, i)),
        ("stream", lambda i: _part_stream(pipe, scheds, per, i)),
        ("overhead", lambda i: _part_overhead(pipe, scheds, per, i)),
    ]


def run_bench(
    model: str = "tiny",
    random_weights: bool = False,
    device: str = "cpu",
    seconds: float = 5.0,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    pipeline: Pipeline | None = None,
    threads: int | None = None,
) -> BenchResult:
    """Measure `model` (or the given `pipeline`, labelled `model`) for about `seconds` per part.

    `threads` sets torch's CPU threads for the run (restored after); None keeps the current setting.
    """
    pipe = pipeline if pipeline is not None else Pipeline.load(model, device=device, random_weights=random_weights)
    with _torch_threads(threads):
        return _run(pipe, model, random_weights, seconds, steps, seed, progress)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(
    pipe: Pipeline, model: str, random_weights: bool, seconds: float, steps: int | None, seed: int, progress: bool
) -> BenchResult:
    scheds, load = [_make_schedule(pipe, name, seed, steps) for name in SCHEDULES], _load()
    parts = _parts(pipe, scheds, seed, seconds)
    with tqdm(total=1 + ROUNDS * len(parts), file=sys.stderr, disable=not progress, desc="warm-up") as bar:
        for s in scheds:
            _warm_up(s.stream, s.log, pipe.device)
        _part_overhead(pipe, scheds, seconds / ROUNDS, -1)  # warm the recorder and the bare loop too
        bar.update()
        for label, run_round in parts:
            bar.set_description(label)
            for i in range(ROUNDS):
                run_round(i)
                bar.update()
    result = _result(pipe, model, random_weights, seconds, scheds)
    result.load_average = load + _load()
    return result


# -- output --------------------------------------------------------------------------------------------

_ROWS: list[tuple[str, str, str]] = [  # (label, ScheduleResult field, format)
    ("frames per second (DiT + decode)", "fps", "{:.1f}"),
    ("time to first frame (s)", "first_frame_s", "{:.3f}"),
    ("chunk latency p50 (ms)", "latency_p50_ms", "{:.1f}"),
    ("chunk latency p99 (ms)", "latency_p99_ms", "{:.1f}"),
    ("between chunks p50 (ms)", "interval_p50_ms", "{:.1f}"),
    ("between chunks p99 (ms)", "interval_p99_ms", "{:.1f}"),
    ("engine DiT-only fps", "engine_fps", "{:.1f}"),
    ("bare forward loop fps", "bare_fps", "{:.1f}"),
    ("engine / bare throughput", "engine_vs_bare", "{:.3f}"),
    ("engine overhead (%)", "overhead_pct", "{:+.1f}"),
    ("passes per chunk", "passes_per_chunk", "{}"),
]


def _header(r: BenchResult) -> str:
    weights = "random weights" if r.random_weights else "trained weights"
    h, w = r.frame_size
    return (
        f"framecast bench: {r.model} ({weights}) on {r.device}, {r.dtype}, "
        f"{r.threads} CPU threads, torch {r.torch_version}, load {'/'.join(map(str, r.load_average)) or '?'}\n"
        f"{w}x{h} frames, {r.steps} steps, {r.frames_per_chunk} frames per chunk, ~{r.seconds:g} s per part"
    )


def format_table(result: BenchResult) -> str:
    """An aligned table: one column per schedule, then the stream batch / sequential throughput ratio."""
    cols = result.schedules()
    width = max(len(label) for label, _, _ in _ROWS)
    lines = [_header(result), "", f"{'':<{width}}" + "".join(f"  {name:>14}" for name in cols)]
    for label, attr, fmt in _ROWS:
        cells = "".join(f"  {fmt.format(getattr(s, attr)):>14}" for s in cols.values())
        lines.append(f"{label:<{width}}{cells}")
    lines += ["", f"stream batch / sequential throughput: {result.batch_vs_sequential:.2f}x"]
    return "\n".join(lines)
