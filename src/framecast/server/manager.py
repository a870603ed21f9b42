"""Sessions of one server: open and close them, admit their streams, turn control messages into commands.

Runs on the server's event loop; the torch work runs in `EngineLoop`'s thread. See docs/server.md for the
admission policy.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from framecast.errors import InputError
from framecast.pipeline import Pipeline
from framecast.sampling.flow import MAX_STEPS
from framecast.server.capacity import CostModel, Demand
from framecast.server.engine_loop import EngineLoop
from framecast.server.logs import LineLimit, log_event, session_event
from framecast.server.metrics import Metrics
from framecast.server.outbox import MAX_MESSAGES, Outbox
from framecast.server.pixels import decode_webcam_jpeg
from framecast.server.protocol import ControlError, PromptMsg, StartMsg, StopMsg, error_json, parse_control
from framecast.server.ratelimit import MessageLimit
from framecast.server.session import Close, Session, SetPrompt, Start, Stop, StreamParams
from framecast.server.settings import MAX_CONTROL_BYTES, MAX_PROMPT_CHARS, MAX_SEED, MIN_FPS, ServerSettings
from framecast.v2v import LiveSource

log = logging.getLogger("framecast.server")


class RefusedError(Exception):
    """A new session was refused: `reason` is full or capacity."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class SessionManager:
    def __init__(self, pipeline: Pipeline, settings: ServerSettings, metrics: Metrics | None = None) -> None:
        self.pipeline, self.settings = pipeline, settings
        self.metrics = metrics or Metrics()
        self.cost = CostModel()
        self.engine = EngineLoop(pipeline, settings, self.metrics, self.cost)
        self.sessions: dict[str, Session] = {}
        self.default_steps = pipeline.stream_config().steps
        self.default_fps = settings.fps or min(pipeline.config.fps, settings.max_fps)
        self._uploads: Path | None = None  # a private temporary folder, made at the first upload

    # -- lifecycle --------------------------------------------------------------------------------
    def startup(self) -> None:
        """Calibrate the cost model and start the engine thread (blocking: run it off the event loop)."""
        self.engine.claim_threads()
        self.engine.calibrate()
        self.engine.start()

    def shutdown(self) -> None:
        for s in list(self.sessions.values()):
            self.close(s)
        self.engine.stop(self.settings.shutdown_timeout_s)
        if self._uploads is not None:
            shutil.rmtree(self._uploads, ignore_errors=True)

    def open(self, transport: str) -> Session:
        """A new session for a connection, or `RefusedError` when the server is full or out of capacity."""
        s = self.new_session(transport)
        self.admit(s)
        return s

    def check_room(self) -> None:
        """`RefusedError` when one more session would not fit now (`--max-sessions`, or the predicted load)."""
        if len(self.sessions) >= self.settings.max_sessions:
            self.refuse("full", f"the server is full: {len(self.sessions)} sessions (--max-sessions)")
        load = self._load_with(self._demand(self.default_fps, self.default_steps), None)
        if load > self.settings.max_utilization:
            self.refuse("capacity", self._capacity_message(load))

    def new_session(self, transport: str) -> Session:
        """A session that neither counts nor is served until `admit` (a WebRTC peer before it connects)."""
        st = self.settings
        s = Session(
            Outbox(asyncio.get_running_loop(), st.queue_chunks * self.pipeline.frames_per_chunk),
            transport,
            MessageLimit(st.control_rate, st.control_burst),
            LineLimit(st.log_lines, st.log_window_s),
        )
        s.outbox.on_message_dropped = lambda count: self._message_dropped(s, count)
        return s

    def admit(self, s: Session) -> None:
        """Count and serve a session (`RefusedError` when it does not fit)."""
        self.check_room()
        self.sessions[s.id] = s
        self.engine.attach(s)
        self._gauges()
        log_event(log, "session_open", session=s.id, transport=s.transport, sessions=len(self.sessions))

    def discard(self, s: Session) -> None:
        """Let go of a session that was never admitted (or `close` it if it was)."""
        self.close(s)
        s.outbox.close()
        if s.live_input is not None:
            s.live_input.end()

    def close(self, s: Session) -> None:
        """End a session (disconnect, close or shutdown): its stream and state are freed by the engine."""
        if self.sessions.pop(s.id, None) is None:
            return
        s.params, s.demand = None, None
        s.commands.append(Close())
        s.outbox.close()
        if s.live_input is not None:
            s.live_input.end()
        if s.upload is not None:
            s.upload.unlink(missing_ok=True)
        self.engine.notify()
        self._gauges()
        log_event(
            log,
            "session_close",
            session=s.id,
            frames=s.stats.frames,
            dropped=s.outbox.dropped,
            misses=s.stats.misses,
            seconds=round(time.monotonic() - s.opened, 2),
            rate_limited=s.limit.dropped,
            messages_dropped=s.outbox.messages_dropped,
            log_suppressed=s.log.suppressed,
        )

    def _message_dropped(self, s: Session, count: int) -> None:
        """A reply did not fit the session's message queue (any thread): counted; logged once a session."""
        self.metrics.messages_dropped.inc()
        if count == 1:
            log_event(log, "messages_dropped", logging.WARNING, session=s.id, limit=MAX_MESSAGES)

    # -- control messages -------------------------------------------------------------------------
    def handle(self, s: Session, raw: str | bytes) -> dict[str, Any] | None:
        """Apply one control message; the reply (an ack or a clear error) goes back to this client only.
        None: the message was over the session's rate limit, and the client was told already."""
        ok, tell = s.limit.take()
        if not ok:
            self.metrics.bad_messages.labels("rate_limited").inc()
            if not tell:
                return None
            st = self.settings
            e = ControlError(
                "rate_limited",
                f"too many control messages: at most {st.control_rate:g} a second and {st.control_burst} at once; "
                "messages over the limit are dropped (this error comes once a burst)",
            )
            session_event(log, s.log, "control_refused", logging.WARNING, session=s.id, code=e.code)
            return e.to_json()
        try:
            msg = parse_control(raw)
            if isinstance(msg, StartMsg):
                return self._start(s, msg)
            if isinstance(msg, PromptMsg):
                return self._prompt(s, msg)
            return self._stop(s, msg)
        except ControlError as e:
            self.metrics.bad_messages.labels(e.code).inc()
            session_event(log, s.log, "control_refused", session=s.id, code=e.code, message=e.message)
            return e.to_json()

    def _start(self, s: Session, msg: StartMsg) -> dict[str, Any]:
        fps, steps = msg.fps or self.default_fps, msg.steps or self.default_steps
        if fps > self.settings.max_fps:
            raise ControlError("invalid", f"invalid start message: fps must be at most {self.settings.max_fps:g}")
        self._check_source(s, msg.source)
        demand = self._demand(fps, steps)
        load = self._load_with(demand, s)
        if load > self.settings.max_utilization:
            self.metrics.refused.labels("capacity").inc()
            raise ControlError("over_capacity", self._capacity_message(load))
        s.params = StreamParams(msg.prompt, msg.seed, steps, fps, msg.format, msg.quality, msg.source, msg.strength)
        s.demand = demand
        self._post(s, Start(s.params))
        session_event(
            log, s.log, "stream_start", session=s.id, seed=msg.seed, steps=steps, fps=fps, load=round(load, 3)
        )
        return {
            "type": "started",
            "prompt": msg.prompt,
            "seed": msg.seed,
            "steps": steps,
            "fps": fps,
            "format": msg.format,
            "source": msg.source,
            "strength": msg.strength,
        }

    def _check_source(self, s: Session, source: str) -> None:
        """A start that asks for an input must have one: an upload, or webcam frames on this connection."""
        if source == "file" and s.upload is None:
            raise ControlError("no_file", "no video uploaded: POST it to /upload?token=... first (token in hello)")
        if source != "webcam":
            return
        if s.transport == "ws" and (s.live_input is None or s.live_input.ended):
            s.live_input = LiveSource(self.input_capacity)  # the client sends JPEG frames as binary messages
        elif s.live_input is None:
            raise ControlError("no_webcam", "this connection sends no video: offer a webcam track (sendrecv)")
        elif s.live_input.ended:
            raise ControlError("no_webcam", "the webcam track of this connection ended: reconnect to use it again")

    @property
    def input_capacity(self) -> int:
        """Frames a session's live input buffers before it drops the oldest."""
        return self.settings.input_chunks * self.pipeline.frames_per_chunk

    # -- video-to-video input -------------------------------------------------------------------------
    def push_frame(self, s: Session, frame: np.ndarray) -> None:
        """A webcam frame for the session, fitted to the model's size already (`pixels`); ignored when no webcam
        stream runs."""
        if s.live_input is not None and not s.live_input.ended:
            s.live_input.push(frame)
            self.engine.notify()

    async def handle_binary(self, s: Session, data: bytes) -> dict[str, Any] | None:
        """A binary message: a webcam frame (JPEG) while a webcam stream runs over the WebSocket, else refused.
        None when the frame was taken (no reply: frames are not acknowledged). The frame's size is checked
        from its header, then it is decoded and fitted in a worker thread, off the event loop."""
        if s.params is None or s.params.source != "webcam" or s.live_input is None or s.live_input.ended:
            return self.handle(s, data)
        limit, size = self.settings.max_input_pixels, self.pipeline.frame_size
        try:
            frame = await asyncio.to_thread(decode_webcam_jpeg, data, limit, size)
        except (ValueError, InputError) as e:
            self.metrics.bad_messages.labels("bad_frame").inc()
            return error_json("bad_frame", f"a binary message must be one JPEG webcam frame: {e}")
        self.push_frame(s, frame)
        return None

    def by_token(self, token: str) -> Session | None:
        return next((s for s in self.sessions.values() if _same(s.upload_token, token)), None)

    def upload_path(self, s: Session) -> Path:
        """Where the session's upload goes: a name the server makes, in a folder only it uses."""
        if self._uploads is None:
            self._uploads = Path(tempfile.mkdtemp(prefix="framecast-uploads-"))
        return self._uploads / f"{s.id}.video"

    def is_open(self, s: Session) -> bool:
        return self.sessions.get(s.id) is s

    def _prompt(self, s: Session, msg: PromptMsg) -> dict[str, Any]:
        if s.params is None:
            raise ControlError("not_streaming", "no stream is running: send a start message first")
        self._post(s, SetPrompt(msg.text, msg.blend, time.monotonic()))
        session_event(log, s.log, "prompt", session=s.id, chars=len(msg.text))
        return {"type": "prompt", "text": msg.text}

    def _stop(self, s: Session, msg: StopMsg) -> dict[str, Any]:
        s.params, s.demand = None, None
        self._post(s, Stop())
        session_event(log, s.log, "stream_stop", session=s.id)
        return {"type": "stopped", "reason": "stop"}

    def _post(self, s: Session, cmd: Start | SetPrompt | Stop) -> None:
        s.commands.append(cmd)
        self.engine.notify()
        self._gauges()

    # -- replies ------------------------------------------------------------------------------------
    def hello(self, s: Session) -> dict[str, Any]:
        h, w = self.pipeline.frame_size
        return {
            "type": "hello",
            "session": s.id,
            "replica": self.settings.replica,
            "frame_size": [h, w],
            "frames_per_chunk": self.pipeline.frames_per_chunk,
            "defaults": {"fps": self.default_fps, "steps": self.default_steps},
            "sources": ["none", "webcam", "file"],
            "upload_token": s.upload_token,
            "max_upload_bytes": int(self.settings.max_upload_mb * 1e6),
            "limits": {
                "min_fps": MIN_FPS,
                "max_fps": self.settings.max_fps,
                "max_steps": MAX_STEPS,
                "max_seed": MAX_SEED,
                "max_prompt_chars": MAX_PROMPT_CHARS,
                "max_message_bytes": MAX_CONTROL_BYTES,
                "messages_per_second": self.settings.control_rate,
                "message_burst": self.settings.control_burst,
            },
        }

    def stats(self, s: Session, sent_fps: float) -> dict[str, Any]:
        st = s.stats
        return {
            "type": "stats",
            "streaming": s.streaming,
            "fps": round(sent_fps, 2),
            "latency_ms": round(st.latency_ms, 1),
            "prompt_latency_ms": _round(st.prompt_latency_ms),
            "frames": st.frames,
            "chunks": st.chunks,
            "misses": st.misses,
            "dropped": s.outbox.dropped,
            "queue": s.outbox.frames_waiting(),
            "input": st.input,
        }

    @staticmethod
    def refusal(e: RefusedError) -> dict[str, Any]:
        return error_json("over_capacity" if e.reason == "capacity" else "server_full", e.message)

    # -- admission ----------------------------------------------------------------------------------
    def _demand(self, fps: float, steps: int) -> Demand:
        cfg = self.pipeline.stream_config(steps=steps, batch_steps=True)
        return Demand(fps / self.pipeline.frames_per_chunk, self.pipeline.family.schedule(cfg).chunk_units)

    def _load_with(self, new: Demand | None, replacing: Session | None) -> float:
        """Predicted engine load of the streaming sessions (minus `replacing`), plus `new`.

        0 when nobody else streams: one session alone slows nobody down, and it keeps the cost model fed
        (a model that only ever refused would never measure again).
        """
        demands = [s.demand for s in self.sessions.values() if s.demand is not None and s is not replacing]
        if not self.settings.admission or (new is not None and not demands):
            return 0.0
        return self.cost.load(demands + ([new] if new else []))

    def _capacity_message(self, load: float) -> str:
        return (
            f"over capacity: with this stream the engine would be {load:.0%} busy (limit "
            f"{self.settings.max_utilization:.0%}), so sessions would miss their frame rate; "
            "try a lower fps or fewer steps, or come back later"
        )

    def refuse(self, reason: str, message: str) -> None:
        self.metrics.refused.labels(reason).inc()
        log_event(log, "session_refused", reason=reason, sessions=len(self.sessions))
        raise RefusedError(reason, message)

    def _gauges(self) -> None:
        self.metrics.sessions.labels("connected").set(len(self.sessions))
        self.metrics.sessions.labels("streaming").set(sum(s.streaming for s in self.sessions.values()))
        demands = [s.demand for s in self.sessions.values() if s.demand is not None]
        self.metrics.utilization.set(self.cost.load(demands))  # 0 with nobody streaming

    def refresh_gauges(self) -> None:
        """Gauges as of now (before a scrape): sessions, predicted load and the frames waiting in outboxes."""
        self._gauges()
        self.metrics.queue_depth.set(sum(s.outbox.frames_waiting() for s in self.sessions.values()))


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
