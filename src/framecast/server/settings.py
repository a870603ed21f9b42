"""Settings of the live server: where it listens, how many sessions, pacing and admission limits."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from framecast.errors import InputError
from framecast.server.origin import parse_origin

MAX_CONTROL_BYTES = 4096  # a control message larger than this is refused with a JSON error
MAX_PROMPT_CHARS = 500
MAX_SEED = 2**31 - 1
ABSOLUTE_MAX_FPS = 10_000.0  # sanity bound of the protocol; `ServerSettings.max_fps` is the real limit
MIN_FPS = 1.0  # the lowest frame rate a session may ask for (a chunk every few seconds at most)


@dataclass(frozen=True)
class ServerSettings:
    """How the server runs. Times in seconds.

    max_sessions:    hard cap on connected sessions (WebSocket or WebRTC), streaming or not.
    fps:             a session's target frame rate when its start message names none (None: the model's).
    max_fps:         highest target frame rate a client may ask for.
    queue_chunks:    chunks of frames buffered per session before the oldest frame is dropped.
    lead_chunks:     how far ahead of a session's playback the engine may generate, in chunks.
    max_utilization: admission refuses a start that would push the predicted engine load above this.
    admission:       False turns capacity-based admission off (max_sessions still holds).
    max_batch_rows:  most sessions in one forward pass (earliest deadlines first).
    calibrate_passes: forward passes timed at startup to seed the cost model.
    max_upload_mb:   largest video file a session may upload for video to video.
    input_timeout_s: a live input (webcam) that sends no frame for this long counts as disconnected.
    input_chunks:    chunks of live input frames buffered per session before the oldest frame is dropped.
    engine_threads:  torch CPU threads while the server runs (process-wide); 0: one fewer than torch's
                     default (at least 1), so the engine's threads leave a core to the event loop.
    control_rate:    control messages a session may send per second on average (a token bucket) ...
    control_burst:   ... and at once; messages over the limit are dropped (one `rate_limited` error a burst).
    log_lines:       log lines one session may cause per `log_window_s`; the rest are counted and summarised.
    allow_origins:   origins (http://HOST:PORT) whose pages may use the server, and whose host names it answers
                     to, besides the loopback ones (`guard.Guard`).
    token:           the access token `/ws`, `/upload` and `/rtc/offer` require (None: none); required when
                     `host` is not a loopback address.
    max_input_pixels: largest video-to-video input frame (width x height), checked before it is decoded.
    rtc_connect_timeout_s: a WebRTC peer not connected this long after its offer is closed (it holds no
                     session slot meanwhile) ...
    max_pending_offers: ... and at most this many wait to connect at once.
    prompts_per_pass: new prompts (text encodings: starts and prompt changes) the engine applies between two
                     passes, over all sessions in turn; the others wait for the next pass.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_sessions: int = 8
    fps: float | None = None
    max_fps: float = 60.0
    queue_chunks: int = 3
    lead_chunks: float = 1.0
    max_utilization: float = 0.85
    admission: bool = True
    max_batch_rows: int = 16
    calibrate_passes: int = 4
    stats_interval_s: float = 0.5
    shutdown_timeout_s: float = 5.0
    ws_max_bytes: int = 65536  # above this the WebSocket protocol itself closes the connection (1009)
    max_upload_mb: float = 50.0
    input_timeout_s: float = 5.0
    input_chunks: int = 2
    engine_threads: int = 0
    control_rate: float = 10.0
    control_burst: int = 20
    log_lines: int = 20
    log_window_s: float = 10.0
    allow_origins: tuple[str, ...] = ()
    token: str | None = None
    max_input_pixels: int = 1920 * 1080
    rtc_connect_timeout_s: float = 10.0
    max_pending_offers: int = 16
    prompts_per_pass: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be between 0 and 65535, got {self.port}")
        if self.max_sessions < 1:
            raise InputError(f"--max-sessions must be at least 1, got {self.max_sessions}")
        if not MIN_FPS <= self.max_fps <= ABSOLUTE_MAX_FPS:
            raise InputError(f"--max-fps must be in [{MIN_FPS:g}, {ABSOLUTE_MAX_FPS:g}], got {self.max_fps}")
        if self.fps is not None and not MIN_FPS <= self.fps <= self.max_fps:
            raise InputError(f"--fps must be in [{MIN_FPS:g}, {self.max_fps:g}], got {self.fps}")
        if not self.max_upload_mb > 0 or not self.input_timeout_s > 0:
            raise InputError("max_upload_mb and input_timeout_s must be positive")
        for name in ("queue_chunks", "max_batch_rows", "input_chunks"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.max_utilization <= 1.0 or self.lead_chunks < 0 or self.calibrate_passes < 0:
            raise InputError("max_utilization must be in (0, 1], lead_chunks and calibrate_passes >= 0")
        if self.engine_threads < 0:
            raise InputError(f"engine_threads must be at least 0, got {self.engine_threads}")
        if not self.control_rate > 0 or self.control_burst < 1:
            raise InputError("control_rate must be positive and control_burst at least 1")
        if self.log_lines < 1 or not self.log_window_s > 0:
            raise InputError("log_lines must be at least 1 and log_window_s positive")
        if self.ws_max_bytes < MAX_CONTROL_BYTES:
            raise InputError(f"ws_max_bytes must be at least {MAX_CONTROL_BYTES}")
        if self.max_input_pixels < 64 or not self.rtc_connect_timeout_s > 0:
            raise InputError("max_input_pixels must be at least 64 and rtc_connect_timeout_s positive")
        if self.max_pending_offers < 1 or self.prompts_per_pass < 1:
            raise InputError("max_pending_offers and prompts_per_pass must be at least 1")
        self._check_access()

    def _check_access(self) -> None:
        """--allow-origin values must be origins; a non-loopback address needs a token."""
        for origin in self.allow_origins:
            parse_origin(origin)
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise InputError("--token must be a non-empty string without spaces")
        if not self.loopback and self.token is None:
            raise InputError(
                f"--host {self.host} is not a loopback address, so anyone who reaches it could drive this server: "
                "give --token SECRET too (viewers open http://HOST:PORT/?token=SECRET)"
            )

    @property
    def replica(self) -> str:
        """Names this server among replicas behind one endpoint (hello, /healthz): its host name and port."""
        return f"{socket.gethostname()}:{self.port}"

    @property
    def loopback(self) -> bool:
        """True when the server listens on a loopback address only (WebRTC then uses loopback candidates)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
