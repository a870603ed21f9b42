"""POST /upload?token=TOKEN: a session's video file for video to video (the token is in its hello message).

The body is the raw file (any container PyAV reads), at most `max_upload_mb`, with the content type
`application/octet-stream` or `video/*` (not one a web page may send cross-origin without asking first).
The server names the file itself (after the session id) in a temporary folder only it uses, so nothing the
client sends becomes a path; it opens the file to check that it is a readable video with frames, keeps one file
per session (a new upload replaces the old one) and deletes it when the session closes. Errors are JSON, as on
the WebSocket.

Nothing outlives its upload or its session: the body goes to a `.part` file of its own (concurrent uploads
of one session never share one), deleted on every way out but success (a refusal, a client that disconnects
mid-body, a cancelled request); a file that finishes after its session closed is deleted, not kept.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from framecast.errors import InputError
from framecast.io.video import VideoReader
from framecast.server.logs import log_event, session_event
from framecast.server.manager import SessionManager, log
from framecast.server.pixels import TooManyPixelsError, check_video_file
from framecast.server.protocol import error_json


class _TooLargeError(Exception):
    pass


async def receive_upload(request: Request, manager: SessionManager, token: str) -> JSONResponse:
    s = manager.by_token(token)
    if s is None:
        return _error(404, "unknown_token", "no open session has this upload token (it is in the hello message)")
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/octet-stream" and not kind.startswith("video/"):
        return _error(415, "bad_content_type", f"an upload is the raw video file, sent as application/octet-stream "
                      f"or video/*, not {kind or 'no content type'!r}")  # fmt: skip
    limit = int(manager.settings.max_upload_mb * 1e6)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _error(413, "too_large", f"uploads are limited to {limit} bytes, this one has {declared}")
    path = manager.upload_path(s)
    part = path.with_name(f"{path.stem}.{secrets.token_hex(4)}.part")
    try:
        size = await _save(request, part, limit)
        info = await asyncio.to_thread(_probe, part, manager.settings.max_input_pixels)
        if not manager.is_open(s):  # it closed while the body came in: keep nothing
            return _error(404, "unknown_token", "the session closed during the upload; the file was not kept")
        os.replace(part, path)  # no await from the check to here: the session cannot close in between
    except _TooLargeError:
        return _error(413, "too_large", f"uploads are limited to {limit} bytes")
    except TooManyPixelsError as e:
        return _error(413, "too_large", str(e))
    except InputError as e:
        return _error(400, "bad_input", str(e).replace(str(part), "the uploaded file"))
    except ClientDisconnect:
        log_event(log, "upload_aborted", session=s.id)
        return _error(400, "bad_input", "the client disconnected before the end of the upload")
    finally:  # every way out: a refusal, a disconnect, a cancelled request, a server shutting down
        part.unlink(missing_ok=True)
    s.upload = path
    session_event(log, s.log, "upload", session=s.id, bytes=size)
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


def _probe(path: Path, max_pixels: int) -> dict[str, Any]:
    """Check the frame size the file declares (before decoding any), then open it as `VideoFileSource` will and
    read its first frame."""
    check_video_file(path, max_pixels)
    with VideoReader(path) as reader:
        frame = reader.read()
        assert frame is not None  # VideoReader refuses files without frames
        return {"fps": reader.fps, "size": [int(frame.shape[0]), int(frame.shape[1])]}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_json(code, message), status_code=status)
