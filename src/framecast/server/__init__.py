"""The live server (the `server` extra): a browser page, WebRTC and WebSocket transports, many sessions
batched on one engine, admission control, Prometheus metrics. See docs/server.md.

    from framecast.server import ServerSettings, create_app
    app = create_app(Pipeline.load("tiny"), ServerSettings())
"""

from __future__ import annotations

from framecast.server._extra import require_server_extra

require_server_extra()

from framecast.server.app import create_app  # noqa: E402
from framecast.server.settings import ServerSettings  # noqa: E402

__all__ = ["ServerSettings", "create_app"]
