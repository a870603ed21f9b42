"""Who may drive the server: Host and Origin checks and the access token, on `/ws`, `/upload` and `/rtc/offer`.

- Host: a loopback name (localhost, 127.0.0.1, [::1]) with the port the server listens on, or a host named by
  `--allow-origin`. A web page whose own name was rebound to 127.0.0.1 (DNS rebinding) sends its own name, and
  is refused.
- Origin (browsers send it; other clients need not): a loopback origin with the server's port, or one named by
  `--allow-origin`. Any other web page the user visits is refused, so it cannot drive their local server.
- Token (`--token`, required when the server listens on a non-loopback address): `?access_token=...`, or the
  header `Authorization: Bearer ...`. The page takes it from its own address, `/?token=...`.

    guard = Guard.from_settings(settings)
    denied = guard.check(request.headers, request.query_params, server_port=8000)   # None: allowed
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from framecast.errors import InputError
from framecast.server.origin import LOOPBACK_NAMES, Origin, parse_origin
from framecast.server.protocol import error_json

if TYPE_CHECKING:
    from framecast.server.settings import ServerSettings

TOKEN_PARAM = "access_token"
NEEDS_TOKEN = (
    "this server needs its access token: open the page as /?token=TOKEN, or send ?access_token=TOKEN or the "
    "header Authorization: Bearer TOKEN"
)


@dataclass(frozen=True)
class Denied:
    """A request the guard refuses: HTTP status and the documented error JSON."""

    status: int
    code: str
    message: str

    def to_json(self) -> dict[str, Any]:
        return error_json(self.code, self.message)


def _parse_host(header: str) -> tuple[str, int | None] | None:
    """A Host header -> (name, port or None); None when it is not one."""
    try:
        parts = urlsplit(f"http://{header.strip().lower()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.path or parts.query or parts.username is not None:
        return None
    return parts.hostname, port


@dataclass(frozen=True)
class Guard:
    """The Host, Origin and token rules of one server (see the module docstring)."""

    allowed: frozenset[Origin]
    token: str | None = None

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Guard:
        allowed = {parse_origin(o) for o in settings.allow_origins}
        if not settings.loopback and settings.host not in ("0.0.0.0", "::"):  # its own address is no rebinding
            allowed.add(parse_origin(f"http://{_bracket(settings.host)}:{settings.port}"))
        return cls(frozenset(allowed), settings.token or None)

    def check(self, headers: Mapping[str, str], query: Mapping[str, str], server_port: int | None) -> Denied | None:
        """None when the request may go on, else why not."""
        return (
            self._check_host(headers.get("host", ""), server_port)
            or self._check_origin(headers.get("origin"), server_port)
            or self._check_token(headers, query)
        )

    def _check_host(self, header: str, server_port: int | None) -> Denied | None:
        parsed = _parse_host(header)
        if parsed is not None:
            name, port = parsed
            if name in LOOPBACK_NAMES and server_port in (None, port if port is not None else 80):
                return None
            if any(o.host == name and (port is None or o.port == port) for o in self.allowed):
                return None
        return Denied(
            403, "forbidden", f"Host {header[:100]!r} is not allowed: this server answers to loopback names only "
            "(localhost, 127.0.0.1, [::1]) unless started with --allow-origin http://HOST:PORT"
        )  # fmt: skip

    def _check_origin(self, header: str | None, server_port: int | None) -> Denied | None:
        if header is None:
            return None  # not a browser: the Host and token rules apply
        try:
            origin = parse_origin(header)
        except InputError:
            origin = None
        if origin is not None and "://" in header:
            if origin.host in LOOPBACK_NAMES and server_port in (None, origin.port):
                return None
            if origin in self.allowed:
                return None
        return Denied(
            403, "forbidden", f"Origin {header[:100]!r} is not allowed: only pages of this server (a loopback "
            "origin) may use it, unless it was started with --allow-origin ORIGIN"
        )  # fmt: skip

    def _check_token(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Denied | None:
        if self.token is None:
            return None
        given = query.get(TOKEN_PARAM) or _bearer(headers.get("authorization", ""))
        if not given:
            return Denied(401, "unauthorized", NEEDS_TOKEN)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return Denied(401, "unauthorized", "wrong access token")
        return None


def _bearer(header: str) -> str:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
