"""Running the app: `serve` in the foreground (Ctrl-C or SIGTERM shut it down gracefully), or
`ServerThread` in the background on a free loopback port (tests and `framecast bench-serve`)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from framecast.errors import FramecastError
from framecast.pipeline import Pipeline
from framecast.server.app import create_app
from framecast.server.logs import setup_logging
from framecast.server.settings import ServerSettings


def uvicorn_config(app: FastAPI, settings: ServerSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        ws_max_size=settings.ws_max_bytes,
        ws_per_message_deflate=False,  # frames are JPEG/PNG already: deflate would cost CPU on both ends for nothing
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        lifespan="on",
    )


def serve(pipeline: Pipeline, settings: ServerSettings) -> None:
    """Serve until SIGINT or SIGTERM: uvicorn stops taking connections, closes the open ones, then the app
    closes its peer connections and stops the engine thread."""
    setup_logging()
    uvicorn.Server(uvicorn_config(create_app(pipeline, settings), settings)).run()


class ServerThread:
    """The app served from a background thread on 127.0.0.1 and a free port; a context manager."""

    def __init__(self, app: FastAPI, settings: ServerSettings, start_timeout_s: float = 120.0) -> None:
        self.app, self.settings, self.start_timeout_s = app, settings, start_timeout_s
        self.server = uvicorn.Server(uvicorn_config(app, settings))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise FramecastError("the server did not start (see the log above)")
            time.sleep(0.02)
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(self.settings.shutdown_timeout_s + 10)
        self._sock.close()
