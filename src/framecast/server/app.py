"""The FastAPI app: the page, /ws, /rtc/offer, /upload, /healthz and /metrics over one `SessionManager`.

    app = create_app(Pipeline.load("tiny"), ServerSettings(max_sessions=4))

Everything the server holds lives in the app (`app.state.manager`); nothing is global.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import ClientDisconnect

from framecast.pipeline import Pipeline
from framecast.server.guard import Denied, Guard
from framecast.server.logs import LineLimit, log_event, session_event
from framecast.server.manager import RefusedError, SessionManager, log
from framecast.server.protocol import error_json
from framecast.server.rtc import MAX_OFFER_BYTES, OfferError, RtcHub, parse_offer
from framecast.server.settings import ServerSettings
from framecast.server.upload import receive_upload
from framecast.server.ws import serve_websocket

STATIC = Path(__file__).parent / "static"
POLICY_VIOLATION = 1008  # WebSocket close code: refused by the Host, Origin or token check


class _BodyTooLargeError(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or `_BodyTooLargeError` as soon as it passes `limit` bytes (never held whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLargeError
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLargeError
    return bytes(body)


def create_app(pipeline: Pipeline, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    manager = SessionManager(pipeline, settings)
    rtc = RtcHub(manager)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(manager.startup)
        log_event(log, "server_ready", host=settings.host, port=settings.port, max_sessions=settings.max_sessions)
        try:
            yield
        finally:
            await rtc.close_all()
            await asyncio.to_thread(manager.shutdown)
            log_event(log, "server_stopped")

    app = FastAPI(title="framecast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager, app.state.rtc, app.state.settings = manager, rtc, settings
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _routes(app, manager, rtc, Guard.from_settings(settings))
    return app


def _denied(guard: Guard, conn: Request | WebSocket, manager: SessionManager, lines: LineLimit) -> Denied | None:
    """The guard's verdict on a request to /ws, /upload or /rtc/offer (counted, and logged within `lines`)."""
    server = conn.scope.get("server")
    denied = guard.check(conn.headers, conn.query_params, server[1] if server else None)
    if denied is not None:
        manager.metrics.refused.labels(denied.code).inc()
        session_event(log, lines, "request_refused", logging.WARNING, session="-", code=denied.code, path=conn.url.path)
    return denied


async def _deny_websocket(ws: WebSocket, denied: Denied) -> None:
    """Refuse a WebSocket at the handshake: an HTTP error with the JSON body where the server can send one."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(JSONResponse(denied.to_json(), status_code=denied.status))
    else:
        await ws.close(POLICY_VIOLATION, denied.code)


def _routes(app: FastAPI, manager: SessionManager, rtc: RtcHub, guard: Guard) -> None:
    st = manager.settings
    lines = LineLimit(st.log_lines, st.log_window_s)  # requests refused by the guard: no session to count them

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = manager.engine.alive()
        body = {
            "status": "ok" if ok else "engine_down",
            "sessions": len(manager.sessions),
            "streaming": sum(s.streaming for s in manager.sessions.values()),
            "passes": manager.engine.passes,
            "replica": manager.settings.replica,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        manager.refresh_gauges()
        return Response(manager.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/ws")
    async def websocket(ws: WebSocket) -> None:
        if (denied := _denied(guard, ws, manager, lines)) is not None:
            return await _deny_websocket(ws, denied)
        await serve_websocket(ws, manager)

    @app.post("/upload")
    async def upload(request: Request, token: str = "") -> JSONResponse:
        if (denied := _denied(guard, request, manager, lines)) is not None:
            return JSONResponse(denied.to_json(), status_code=denied.status)
        return await receive_upload(request, manager, token)

    @app.post("/rtc/offer")
    async def offer(request: Request) -> Any:
        if (denied := _denied(guard, request, manager, lines)) is not None:
            return JSONResponse(denied.to_json(), status_code=denied.status)
        try:
            body = parse_offer(await _read_body(request, MAX_OFFER_BYTES))
        except _BodyTooLargeError:
            return JSONResponse(error_json("too_large", f"an offer is limited to {MAX_OFFER_BYTES} bytes"), 413)
        except OfferError as e:
            return JSONResponse(error_json(e.code, e.message), status_code=400)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            return await rtc.answer(body.sdp)
        except RefusedError as e:
            return JSONResponse(manager.refusal(e), status_code=503)
        except ValueError as e:
            return JSONResponse(error_json("bad_offer", f"could not use this offer: {e}"), status_code=400)
