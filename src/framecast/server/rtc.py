"""The WebRTC transport (aiortc): the browser posts an SDP offer, gets an answer; video goes out on a track
fed by the session's frames, control messages and replies go over a data channel (same JSON as the
WebSocket). No STUN or TURN: `iceServers` is empty. When the server listens on loopback, ICE uses loopback
candidates only, on both sides (aioice skips 127.0.0.1 by default, so it is told to use it).

`POST /rtc/offer` takes `{"sdp", "type": "offer"}` (`parse_offer`); a body that is not one gets the documented
error JSON (`bad_json`, `bad_message`, `invalid`), never the input echoed back.

A client that offers a sendrecv video transceiver with its webcam gets it read into the session's live
input (video to video); when that track ends, the input ends with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import ipaddress
import json
import logging
import time
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from av import VideoFrame
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framecast.server.logs import log_event, session_event
from framecast.server.manager import RefusedError, SessionManager
from framecast.server.outbox import OutboxClosedError
from framecast.server.pixels import too_many, webcam_array
from framecast.server.protocol import error_json
from framecast.server.ratemeter import RateMeter
from framecast.server.session import Session
from framecast.v2v import LiveSource

log = logging.getLogger("framecast.server.rtc")
CLOCK = 90_000  # RTP video clock
TIME_BASE = fractions.Fraction(1, CLOCK)
MAX_SDP_CHARS = 65536
REFUSED_LINGER_S = 1.0  # a peer refused when it connected is closed this long after (its refusal goes first)
MAX_OFFER_BYTES = 2 * MAX_SDP_CHARS  # the JSON body of /rtc/offer: an SDP of at most MAX_SDP_CHARS, escaped


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: str = Field(pattern="^offer$")


class OfferError(ValueError):
    """A `/rtc/offer` body that is not an offer: `code` and `message` of the documented error JSON."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def parse_offer(body: bytes) -> Offer:
    """The offer of a `/rtc/offer` body, or `OfferError`."""
    try:
        return Offer.model_validate_json(body)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):
            raise OfferError("bad_json", "the offer is not valid JSON (or is nested too deeply)") from None
        if any(err["type"] == "model_type" for err in e.errors()):
            raise OfferError("bad_message", 'an offer is a JSON object {"sdp": ..., "type": "offer"}') from None
        raise OfferError("invalid", f"invalid offer: {_offer_problems(e)}") from None


def _offer_problems(e: ValidationError) -> str:
    """What is wrong with an offer, field by field, without echoing the SDP back."""
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "offer"
        if err["type"] in ("extra_forbidden", "missing"):
            parts.append(f"{'unknown' if err['type'] == 'extra_forbidden' else 'missing'} field {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg'].lower()}")
    return "; ".join(parts)


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def use_loopback_ice() -> None:
    """Make aioice gather 127.0.0.1 only (it is a process-wide switch of that library; idempotent)."""
    aioice.ice.get_host_addresses = _loopback_addresses  # type: ignore[attr-defined]


def loopback_candidates_only(sdp: str) -> str:
    """Drop remote candidates that are not loopback addresses, so ICE checks go nowhere else."""
    return "\r\n".join(line for line in sdp.splitlines() if not _foreign_candidate(line)) + "\r\n"


def _foreign_candidate(line: str) -> bool:
    if not line.startswith("a=candidate:"):
        return False
    parts = line.split()
    try:
        return not ipaddress.ip_address(parts[4]).is_loopback
    except (IndexError, ValueError):
        return True  # mDNS names (x.local) and garbage


class SessionTrack(VideoStreamTrack):
    """Video of one session: its frames at their play times."""

    def __init__(self, session: Session, manager: SessionManager, meter: RateMeter) -> None:
        super().__init__()
        self.session, self.manager, self.meter = session, manager, meter
        self._t0, self._last_pts = time.monotonic(), -1

    async def recv(self) -> VideoFrame:
        try:
            frame = await self.session.outbox.get_frame()
            while self.session.params is None:  # stopped: skip stale frames
                frame = await self.session.outbox.get_frame()
        except OutboxClosedError:
            self.stop()
            raise MediaStreamError from None
        delay = frame.pts - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        out = VideoFrame.from_ndarray(frame.image, format="rgb24")
        self._last_pts = max(self._last_pts + 1, int((time.monotonic() - self._t0) * CLOCK))
        out.pts, out.time_base = self._last_pts, TIME_BASE
        self.manager.metrics.stage_seconds.labels("encode").observe(time.perf_counter() - t0)
        self.manager.metrics.frames_sent.inc()
        self.meter.tick()
        return out


class RtcHub:
    """The peer connections of one server.

    A peer holds no session slot until it connects (ICE and DTLS up): its session is admitted then, or refused
    over its data channel if the server filled up meanwhile. One still not connected `rtc_connect_timeout_s`
    after its offer is closed; at most `max_pending_offers` wait at once.
    """

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.loopback = manager.settings.loopback
        self.peers: dict[RTCPeerConnection, Session] = {}
        self.pending: dict[RTCPeerConnection, asyncio.Task[None]] = {}  # not connected yet: their expiry
        self._refusals: dict[RTCPeerConnection, dict[str, Any]] = {}  # refused when they connected
        self._inputs: set[asyncio.Task[None]] = set()  # webcam readers, one per session that sends video
        if self.loopback:
            use_loopback_ice()

    async def answer(self, sdp: str) -> dict[str, Any]:
        """Answer a browser's offer with a new session (raises `manager.RefusedError` when there is no room)."""
        self._check_room()
        s = self.manager.new_session("webrtc")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.peers[pc] = s
        self.pending[pc] = asyncio.create_task(self._expire(pc, self.manager.settings.rtc_connect_timeout_s))
        self._gauge()
        meter = RateMeter()
        pc.on("datachannel", lambda ch: self._bind(pc, s, ch, meter))
        pc.on("track", lambda track: self._receive(s, track))
        pc.on("connectionstatechange", lambda: self._state_changed(pc))
        try:
            offer = loopback_candidates_only(sdp) if self.loopback else sdp
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise ValueError("the offer has no video transceiver")
            pc.addTrack(SessionTrack(s, self.manager, meter))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await self.end(pc)
            raise
        log_event(log, "rtc_answer", session=s.id, pending=len(self.pending))
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": s.id}

    def _check_room(self) -> None:
        """Refuse an offer now if its session would not fit, or too many peers are waiting to connect."""
        self.manager.check_room()
        limit = self.manager.settings.max_pending_offers
        if len(self.pending) >= limit:
            self.manager.refuse("full", f"{len(self.pending)} WebRTC peers are waiting to connect (at most {limit}); "
                                "try again in a few seconds")  # fmt: skip

    async def _expire(self, pc: RTCPeerConnection, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        s = self.peers.get(pc)
        if self.pending.pop(pc, None) is not None and s is not None:
            log_event(log, "rtc_timeout", logging.WARNING, session=s.id, seconds=timeout_s)
            self.manager.metrics.refused.labels("rtc_timeout").inc()
            await self.end(pc)

    def _admit(self, pc: RTCPeerConnection) -> None:
        """The peer connected: its session counts from now on, or is refused (and closed) when there is no room."""
        task, s = self.pending.pop(pc, None), self.peers.get(pc)
        if task is None or s is None:
            return  # admitted (or refused) already, or gone
        task.cancel()
        self._gauge()
        try:
            self.manager.admit(s)
        except RefusedError as e:
            self._refusals[pc] = self.manager.refusal(e)
            asyncio.get_running_loop().call_later(REFUSED_LINGER_S, lambda: asyncio.ensure_future(self.end(pc)))

    def _gauge(self) -> None:
        self.manager.metrics.sessions.labels("connecting").set(len(self.pending))

    def _bind(self, pc: RTCPeerConnection, s: Session, channel: Any, meter: RateMeter) -> None:
        self._admit(pc)  # the channel may open before the state change is seen
        if pc in self._refusals:  # no room when it connected: say so; it closes shortly
            _send(channel, self._refusals[pc])
            return

        def on_message(raw: str | bytes) -> None:
            reply = self.manager.handle(s, raw)
            if reply is not None:  # None: over the rate limit, the client was told already
                s.outbox.put_message(reply)

        def on_close() -> None:  # the client closed the channel or its peer connection: end the session
            task.cancel()
            asyncio.ensure_future(self.end(pc))

        channel.on("message", on_message)
        s.outbox.put_message(self.manager.hello(s))
        task = asyncio.ensure_future(self._pump(s, channel, meter))
        channel.on("close", on_close)

    async def _pump(self, s: Session, channel: Any, meter: RateMeter) -> None:
        """Replies and stats to the data channel."""
        interval = self.manager.settings.stats_interval_s
        next_stats = time.monotonic() + interval
        with contextlib.suppress(OutboxClosedError):
            while True:
                msg = await s.outbox.get_message(timeout=max(next_stats - time.monotonic(), 0.0))
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + interval
                    _send(channel, self.manager.stats(s, meter.rate()))
                if msg is not None:
                    _send(channel, msg)

    def _receive(self, s: Session, track: MediaStreamTrack) -> None:
        """The client's webcam: read it into the session's live input."""
        if track.kind != "video" or s.live_input is not None:
            return
        s.live_input = LiveSource(self.manager.input_capacity)
        task = asyncio.ensure_future(self._read_webcam(s, track, s.live_input))
        self._inputs.add(task)
        task.add_done_callback(self._inputs.discard)

    async def _read_webcam(self, s: Session, track: MediaStreamTrack, source: LiveSource) -> None:
        limit, size = self.manager.settings.max_input_pixels, self.manager.pipeline.frame_size
        try:
            while not source.ended:
                frame = await track.recv()
                if not isinstance(frame, VideoFrame):
                    continue
                if frame.width * frame.height > limit:  # before its pixels are converted (or kept)
                    self._oversized(s, source, too_many("the webcam sends frames of", frame.width, frame.height, limit))
                    return
                self.manager.push_frame(s, await asyncio.to_thread(webcam_array, frame, size))
        except MediaStreamError:
            source.end("the webcam track ended (the camera was closed or disconnected)")
            session_event(log, s.log, "webcam_ended", session=s.id)
        finally:
            self.manager.engine.notify()

    def _oversized(self, s: Session, source: LiveSource, message: str) -> None:
        """End a webcam input whose frames are over the pixel limit; the client is told why."""
        self.manager.metrics.bad_messages.labels("bad_frame").inc()
        s.outbox.put_message(error_json("bad_frame", f"{message}: send smaller frames (reconnect to use the webcam)"))
        source.end(message)
        session_event(log, s.log, "webcam_refused", logging.WARNING, session=s.id, reason="pixels")

    async def _state_changed(self, pc: RTCPeerConnection) -> None:
        if pc.connectionState == "connected":
            self._admit(pc)
        elif pc.connectionState in ("failed", "closed"):
            await self.end(pc)

    async def end(self, pc: RTCPeerConnection) -> None:
        task = self.pending.pop(pc, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._gauge()
        self._refusals.pop(pc, None)
        s = self.peers.pop(pc, None)
        if s is not None:
            self.manager.discard(s)
        await pc.close()

    async def close_all(self) -> None:
        await asyncio.gather(*(self.end(pc) for pc in list(self.peers)), return_exceptions=True)
        for task in list(self._inputs):
            task.cancel()


def _send(channel: Any, message: dict[str, Any]) -> None:
    if channel.readyState == "open":
        channel.send(json.dumps(message))
