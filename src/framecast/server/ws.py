"""The WebSocket transport: JSON control messages in, JSON replies and binary frames (see `encode`) out.
While a webcam stream runs, binary messages from the client are its webcam frames (JPEG).

One task reads control messages; one task writes (replies, stats, frames paced to their play time), so
sends never interleave. The session ends when either side closes, whatever state the socket is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.websockets import WebSocket, WebSocketDisconnect

from framecast.server.encode import encode_frame
from framecast.server.manager import RefusedError, SessionManager
from framecast.server.outbox import Frame, OutboxClosedError
from framecast.server.ratemeter import RateMeter
from framecast.server.session import Session

TRY_AGAIN_LATER = 1013  # WebSocket close code for a refused session
GOING_AWAY = 1001


async def serve_websocket(ws: WebSocket, manager: SessionManager) -> None:
    await ws.accept()
    try:
        s = manager.open("ws")
    except RefusedError as e:
        await ws.send_json(manager.refusal(e))
        await ws.close(TRY_AGAIN_LATER, e.reason)
        return
    s.outbox.put_message(manager.hello(s))
    tasks = {asyncio.create_task(_receive(ws, s, manager)), asyncio.create_task(_send(ws, s, manager))}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        manager.close(s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await ws.close(GOING_AWAY)


async def _receive(ws: WebSocket, s: Session, manager: SessionManager) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text, data = msg.get("text"), msg.get("bytes")
            if isinstance(text, str):
                reply = manager.handle(s, text)
            else:  # a webcam frame: decoded off the event loop, one at a time per session
                reply = await manager.handle_binary(s, bytes(data or b""))
            if reply is not None:
                s.outbox.put_message(reply)
            await asyncio.sleep(0)  # messages already received would not yield: let other sessions' sends run


async def _send(ws: WebSocket, s: Session, manager: SessionManager) -> None:
    meter, interval = RateMeter(), manager.settings.stats_interval_s
    next_stats = time.monotonic() + interval
    with contextlib.suppress(OutboxClosedError, WebSocketDisconnect, RuntimeError):
        while True:
            item = await s.outbox.get_any(timeout=max(next_stats - time.monotonic(), 0.0))
            if time.monotonic() >= next_stats:
                await ws.send_json(manager.stats(s, meter.rate()))
                next_stats = time.monotonic() + interval
            if isinstance(item, dict):
                await ws.send_json(item)
            elif isinstance(item, Frame):
                await _send_frame(ws, s, item, manager, meter)


async def _send_frame(ws: WebSocket, s: Session, frame: Frame, manager: SessionManager, meter: RateMeter) -> None:
    params = s.params
    if params is None:  # stopped: frames still queued are stale
        return
    delay = frame.pts - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    t0 = time.perf_counter()
    data = encode_frame(frame.image, frame.index, params.format, params.quality)
    t1 = time.perf_counter()
    await ws.send_bytes(data)
    stage = manager.metrics.stage_seconds
    stage.labels("encode").observe(t1 - t0)
    stage.labels("send").observe(time.perf_counter() - t1)
    manager.metrics.frames_sent.inc()
    meter.tick()
