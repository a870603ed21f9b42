"""The engine loop: one thread runs every session's torch work, batching sessions into shared passes.

Each iteration applies the sessions' pending commands (start, prompt, stop, close; `session.coalesce`: a
session's last start/stop/close and its last prompt after it), at most `prompts_per_pass` text encodings of
them over all sessions in turn (the rest wait for the next iteration), picks the sessions
that are due (`pacing.pick_due`, earliest deadline first) and runs ONE driver step over all of them
(`engine.driver`: inputs, one batched pass, one batched decode; each stream its own row: its own prompt,
steps, seed and warm-up phase), then hands each session's frames to its bounded outbox with their play
times. The server keeps sessions, pacing, admission and metrics; the path from input to frames is the
driver's. Nothing else in the server touches a `Stream`.

A video-to-video session (webcam or uploaded file) is a stream with an input feed that goes on from the prompt
alone when its input ends (`input_end="prompt"`): the driver re-emits its last chunk when the similarity filter
skips the model and leaves it out while its live input has no whole chunk; the server tells the client when
the input ends, breaks or sends nothing for `input_timeout_s` (an `input_ended` message).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from framecast.engine.live import Emitted, Stream
from framecast.errors import InputError
from framecast.pipeline import Pipeline
from framecast.server.capacity import CostModel
from framecast.server.logs import log_event, session_event
from framecast.server.metrics import Metrics
from framecast.server.outbox import Frame
from framecast.server.pacing import PlaybackClock, next_ready, pick_due
from framecast.server.protocol import error_json
from framecast.server.session import Close, Command, Session, SessionStats, SetPrompt, Start, Stop, coalesce
from framecast.server.settings import ServerSettings
from framecast.v2v import Action, FrameSource, LiveSource, V2VConfig, VideoFileSource

log = logging.getLogger("framecast.server.engine")
IDLE_WAIT_S = 0.1  # longest sleep with nothing due; commands wake the loop at once
LATENCY_EMA = 0.2


@dataclass
class Live:
    """A streaming session as the engine thread sees it."""

    session: Session
    stream: Stream
    clock: PlaybackClock
    admitted: deque[float] = field(default_factory=deque)  # admission time of each chunk in flight
    frames_out: int = 0
    chunks_out: int = 0
    prompt_mark: tuple[int, float] | None = None  # (first chunk with the new prompt, when it was asked for)
    source: str = "none"  # video-to-video input: none, webcam or file


class EngineLoop:
    def __init__(self, pipeline: Pipeline, settings: ServerSettings, metrics: Metrics, cost: CostModel) -> None:
        self.pipeline, self.settings, self.metrics, self.cost = pipeline, settings, metrics, cost
        self._inbox: deque[Session] = deque()
        self._sessions: dict[str, Session] = {}
        self._live: dict[str, Live] = {}
        self._deferred: dict[str, list[Command]] = {}  # commands over an iteration's encoding budget
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.max_rows = 0  # most sessions seen in one pass
        self._threads_before: int | None = None

    # -- control (any thread) -------------------------------------------------------------------
    def claim_threads(self) -> None:
        """Set torch's CPU threads for the server's lifetime (`settings.engine_threads`); `stop` restores them.

        On a small CPU machine torch's default (a thread per core) fights the event loop for the last core:
        a pass stalls whenever one of its threads is descheduled for a JPEG encode or a send.
        """
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(self.settings.engine_threads or max(1, self._threads_before - 1))
        log_event(log, "engine_threads", threads=torch.get_num_threads())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="framecast-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._live.clear()
        self._sessions.clear()
        self._deferred.clear()
        self.metrics.kv_cache_bytes.set(0)
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def attach(self, session: Session) -> None:
        self._inbox.append(session)
        self._wake.set()

    def notify(self) -> None:
        """A session has a new command."""
        self._wake.set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def live_count(self) -> int:
        return len(self._live)

    def attached_count(self) -> int:
        return len(self._sessions)

    def state_bytes(self) -> int:
        """Bytes of the per-stream state of all live streams on the device (the KV caches, for the causal family)."""
        fam = self.pipeline.family
        return sum(fam.memory_bytes(lv.stream.state) for lv in list(self._live.values()))

    # -- the loop (engine thread) ---------------------------------------------------------------
    def _run(self) -> None:
        log_event(log, "engine_started")
        while not self._stop.is_set():
            try:
                self._iterate()
            except Exception:  # a bug must not stop every stream; log it and go on
                log.exception("event=engine_error")
                time.sleep(IDLE_WAIT_S)
        log_event(log, "engine_stopped", passes=self.passes)

    def _iterate(self) -> None:
        self._apply_commands()
        now, lead = time.monotonic(), self.settings.lead_chunks
        clocks = {k: lv.clock for k, lv in self._live.items()}
        keys = pick_due(clocks, now, lead, self.settings.max_batch_rows)
        if keys:
            waiting = self._pass([self._live[k] for k in keys])
            if len(waiting) < len(keys):
                return
            clocks = {k: c for k, c in clocks.items() if k not in waiting}  # they wait for input frames
        wait = 0.0 if self._deferred else next_ready(clocks, lead) - now  # deferred prompts: go on at once
        self._wake.wait(min(max(wait, 0.0), IDLE_WAIT_S))
        self._wake.clear()

    def _apply_commands(self) -> None:
        """Apply the sessions' pending commands, coalesced; at most `prompts_per_pass` of them that encode a
        prompt (starts and prompt changes), the rest wait for the next iteration. Sessions take turns: one
        that got an encoding goes to the back of the line, so a flood of prompts from many sessions delays
        the next pass by `prompts_per_pass` encodings, not one per session."""
        while self._inbox:
            s = self._inbox.popleft()
            self._sessions[s.id] = s
        budget, applied = self.settings.prompts_per_pass, False
        for s in list(self._sessions.values()):
            todo = coalesce(self._deferred.pop(s.id, []) + _drain(s.commands))
            for i, cmd in enumerate(todo):
                if isinstance(cmd, Start | SetPrompt):
                    if budget == 0:
                        self._deferred[s.id] = todo[i:]
                        break
                    budget -= 1
                    self._sessions[s.id] = self._sessions.pop(s.id)  # to the back of the line
                self._apply(s, cmd)
                applied = True
        if applied:
            self.metrics.kv_cache_bytes.set(self.state_bytes())

    def _apply(self, s: Session, cmd: Command) -> None:
        try:
            if isinstance(cmd, Start):
                self._start(s, cmd)
            elif isinstance(cmd, SetPrompt):
                self._set_prompt(s, cmd)
            elif isinstance(cmd, Stop):
                self._live.pop(s.id, None)
            elif isinstance(cmd, Close):
                self._live.pop(s.id, None)
                self._sessions.pop(s.id, None)
                self._deferred.pop(s.id, None)
        except InputError as e:  # e.g. an uploaded file that cannot be read: this session only
            session_event(log, s.log, "command_failed", logging.WARNING, session=s.id, error=repr(e))
            self._end(s, "bad_input", str(e))
        except Exception as e:  # e.g. a prompt the text encoder refuses: this session only
            session_event(log, s.log, "command_failed", logging.WARNING, session=s.id, error=repr(e))
            self._end(s, "engine", f"could not apply {type(cmd).__name__.lower()}: {e}")

    def _start(self, s: Session, cmd: Start) -> None:
        p, pipe = cmd.params, self.pipeline
        cfg = pipe.stream_config(steps=p.steps, batch_steps=True)
        if p.source == "none":
            stream = pipe.stream(p.prompt, p.seed, cfg)
        else:
            fixed = {} if p.strength is None else {"enabled": False, "fixed": p.strength}
            v2v = V2VConfig(pipe.motion_config(**fixed))
            source = self._open_input(s, p.source)
            stream = pipe.video_stream(p.prompt, source, p.seed, v2v, cfg, input_end="prompt")
        s.stats = SessionStats()
        s.outbox.clear_frames()
        self._live[s.id] = Live(s, stream, PlaybackClock(p.fps, self.pipeline.frames_per_chunk), source=p.source)

    def _open_input(self, s: Session, kind: str) -> FrameSource:
        """The session's upload, opened (`InputError` when unreadable), or its webcam frames from now on."""
        if kind == "file":
            if s.upload is None:
                raise InputError("no video uploaded for this session")
            return VideoFileSource(s.upload)
        if s.live_input is None or s.live_input.ended:
            raise InputError("no webcam frames on this connection")
        s.live_input.clear()  # frames from before this start are stale
        return s.live_input

    def _set_prompt(self, s: Session, cmd: SetPrompt) -> None:
        lv = self._live.get(s.id)
        if lv is None:
            return  # stopped meanwhile; the transport already told the client
        lv.stream.set_prompt(cmd.text, blend_chunks=cmd.blend)
        lv.prompt_mark = (lv.chunks_out + len(lv.admitted), cmd.received)  # the next chunk admitted

    def _end(self, s: Session, code: str, message: str) -> None:
        """Stop a session's stream because of an error, and tell its client."""
        self._live.pop(s.id, None)
        s.params, s.demand = None, None
        s.outbox.put_message(error_json(code, message))
        s.outbox.put_message({"type": "stopped", "reason": code})

    # -- video-to-video input ---------------------------------------------------------------------
    def _check_webcam(self, lv: Live) -> None:
        """End a webcam input that sent nothing for `input_timeout_s` (the driver then goes on from the prompt)."""
        feed = lv.stream.feed
        src, limit = (None if feed is None else feed.source), self.settings.input_timeout_s
        if isinstance(src, LiveSource) and not src.ended and time.monotonic() - src.last_push > limit:
            src.end(f"no webcam frame for {limit:g} s: the camera stopped or disconnected")

    def _input_ended(self, lv: Live, error: str | None) -> None:
        """Tell the client its input ended or broke; the stream goes on from the prompt, cache kept."""
        reason = error or ("the video ended" if lv.source == "file" else "the input ended")
        message = f"{lv.source}: {reason}; the stream goes on from the prompt alone"
        lv.session.outbox.put_message({"type": "input_ended", "source": lv.source, "message": message})
        session_event(log, lv.session.log, "input_ended", session=lv.session.id, source=lv.source, reason=reason)

    def _input_stats(self, lv: Live) -> None:
        st = lv.stream.input_stats
        if st is None:
            return
        lv.session.stats.input = {
            "source": lv.source,
            "frames": st.frames_in,
            "dropped": st.dropped,
            "skipped": st.skipped,
            "strength": st.strength,
            "motion": round(st.motion, 4),
            "lag_frames": st.max_latency_frames,
            "latency_ms": round(st.mean_latency_s * 1000, 1),
        }

    # -- one pass ---------------------------------------------------------------------------------
    def _pass(self, lives: list[Live]) -> set[str]:
        """One driver step over the due sessions; returns the ones that wait for input frames."""
        for lv in lives:
            self._check_webcam(lv)
        fam = self.pipeline.family
        work = [fam.pass_units(lv.stream.state) for lv in lives]  # before the step: what its pass will run
        t0 = time.perf_counter()
        try:
            out = self.pipeline.driver.step([lv.stream for lv in lives])
        except Exception as e:
            log.exception("event=pass_failed rows=%d", len(lives))
            for lv in lives:
                self._end(lv.session, "engine", f"the engine failed on this stream: {e}")
            return set()
        t1 = time.perf_counter()
        for lv, em in zip(lives, out, strict=True):
            self._emit(lv, em, t0)
        ran = sum(em.action is Action.RUN for em in out)
        if ran:
            self.cost.observe(sum(w for w, em in zip(work, out, strict=True) if em.action is Action.RUN), t1 - t0)
            self.passes += 1
            self.max_rows = max(self.max_rows, ran)
            self.metrics.pass_done(ran, t1 - t0, time.perf_counter() - t1)
        self.metrics.kv_cache_bytes.set(self.state_bytes())
        return {lv.session.id for lv, em in zip(lives, out, strict=True) if em.action is Action.WAIT}

    def _emit(self, lv: Live, em: Emitted, t0: float) -> None:
        """One session's part of a step: its chunk clock, input messages and frames."""
        lv.admitted.extend([t0] * em.admitted)
        if em.input_ended:
            self._input_ended(lv, em.input_error)
        for chunk in em.chunks:
            self._deliver(lv, chunk, model=em.action is not Action.SKIP)
        self._input_stats(lv)

    def _deliver(self, lv: Live, frames: np.ndarray, model: bool = True) -> None:
        """Frames (T, H, W, 3) of one finished chunk, to the session's outbox with their play times.
        `model=False`: a chunk re-emitted without the model (no chunk latency to measure)."""
        if not len(frames):
            return
        s, now = lv.session, time.monotonic()
        start, missed = lv.clock.emit(now)
        self._count_chunk(lv, now, missed, model)
        dt = 1.0 / lv.clock.fps
        chunk = [Frame(img, lv.frames_out + i, start + i * dt, now) for i, img in enumerate(frames)]
        dropped = s.outbox.put_frames(chunk)
        if dropped:
            self.metrics.frames_dropped.inc(dropped)
        lv.frames_out += len(frames)
        s.stats.frames = lv.frames_out
        self.metrics.frames_emitted.inc(len(frames))

    def _count_chunk(self, lv: Live, now: float, missed: bool, model: bool) -> None:
        st = lv.session.stats
        if model and lv.admitted:
            latency = now - lv.admitted.popleft()
            st.latency_ms += (latency * 1000 - st.latency_ms) * (1.0 if st.chunks == 0 else LATENCY_EMA)
            self.metrics.chunk_latency.observe(latency)
        if lv.prompt_mark is not None and lv.chunks_out >= lv.prompt_mark[0]:
            st.prompt_latency_ms = (now - lv.prompt_mark[1]) * 1000
            lv.prompt_mark = None
        if missed:
            st.misses += 1
            self.metrics.deadline_misses.inc()
        lv.chunks_out += 1
        st.chunks = lv.chunks_out

    # -- startup ----------------------------------------------------------------------------------
    def calibrate(self) -> None:
        """Time a few steps of one and of three throwaway streams, to seed the cost model."""
        n, pipe = self.settings.calibrate_passes, self.pipeline
        cfg = pipe.stream_config(batch_steps=True)
        for rows in (1, 3) if n else ():
            streams = [pipe.stream("calibration", seed=i, config=cfg) for i in range(rows)]
            for j in range(n + 1):  # the first pass (allocations, text encoding) is not timed
                units = sum(pipe.family.pass_units(st.state) for st in streams)
                t0 = time.perf_counter()
                pipe.driver.step(streams)
                if j:
                    self.cost.observe(units, time.perf_counter() - t0)
        a, b = self.cost.coefficients()
        log_event(log, "calibrated", fixed_ms=round(a * 1000, 2), per_chunk_ms=round(b * 1000, 2))


def _drain(commands: deque[Command]) -> list[Command]:
    """What is in a session's command queue now (the event loop may append meanwhile)."""
    out: list[Command] = []
    while commands:
        out.append(commands.popleft())
    return out
