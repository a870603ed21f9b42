"""Origins as the server's Host and Origin checks compare them (`guard.Guard`, `--allow-origin`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from framecast.errors import InputError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    """scheme://host:port, lower case, the port explicit."""

    scheme: str
    host: str
    port: int

    @property
    def netloc(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if DEFAULT_PORTS.get(self.scheme) == self.port else f"{name}:{self.port}"


def parse_origin(text: str, default_scheme: str = "http") -> Origin:
    """`http://host:port`, `https://host` or `host:port` -> Origin; `InputError` when it is not one."""
    raw = text.strip().lower().rstrip("/")
    try:
        parts = urlsplit(raw if "://" in raw else f"{default_scheme}://{raw}")
        port = parts.port
    except ValueError:
        raise InputError(f"not an origin: {text!r} (expected http://HOST:PORT)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise InputError(f"not an origin: {text!r} (expected http://HOST:PORT)")
    return Origin(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme])
