"""POST /upload?token=TOKEN: a session's video file for video to video (the token is in its hello message).

The body is the raw file (any container PyAV reads), at most `max_upload_mb`. The server names the file
itself (after the session id) in a temporary folder only it uses, so nothing the client sends becomes a
path; it opens the file to check that it is a readable video with frames, keeps one file per session (a new
upload replaces the old one) and deletes it when the session closes. Errors are JSON, as on the WebSocket.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from framecast.errors import InputError
from framecast.io.video import VideoReader
from framecast.server.logs import log_event
from framecast.server.manager import SessionManager, log
from framecast.server.protocol import error_json


class _TooLargeError(Exception):
    pass


async def receive_upload(request: Request, manager: SessionManager, token: str) -> JSONResponse:
    s = manager.by_token(token)
    if s is None:
        return _error(404, "unknown_token", "no open session has this upload token (it is in the hello message)")
    limit = int(manager.settings.max_upload_mb * 1e6)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _error(413, "too_large", f"uploads are limited to {limit} bytes, this one has {declared}")
    path = manager.upload_path(s)
    part = path.with_suffix(".part")
    try:
        size = await _save(request, part, limit)
        info = await asyncio.to_thread(_probe, part)
    except _TooLargeError:
        part.unlink(missing_ok=True)
        return _error(413, "too_large", f"uploads are limited to {limit} bytes")
    except InputError as e:
        part.unlink(missing_ok=True)
        return _error(400, "bad_input", str(e).replace(str(part), "the uploaded file"))
    os.replace(part, path)
    s.upload = path
    log_event(log, "upload", session=s.id, bytes=size)
    return JSONResponse({"type": "uploaded", "bytes": size, **info})


async def _save(request: Request, part: Path, limit: int) -> int:
    size = 0
    with part.open("wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLargeError
            f.write(chunk)
    if size == 0:
        raise InputError("the upload is empty (0 bytes)")
    return size


def _probe(path: Path) -> dict[str, Any]:
    """Open the file as `VideoFileSource` will, and read its first frame."""
    with VideoReader(path) as reader:
        frame = reader.read()
        assert frame is not None  # VideoReader refuses files without frames
        return {"fps": reader.fps, "size": [int(frame.shape[0]), int(frame.shape[1])]}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_json(code, message), status_code=status)
