"""Who may drive the server (issue 20, item 6): Host and Origin checks and the access token on /ws, /upload and
/rtc/offer, the upload's content type, and a non-loopback bind without a token. Loopback only, bounded."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from framecast.cli import main
from tests.test_server_support import Client, running, tiny_pipeline

OFFER = {"sdp": "v=0\r\n", "type": "offer"}  # not a usable offer: a 400 once past the guard


def _ws_handshake(port: int, host: str, origin: str | None = None, query: str = "") -> tuple[int, dict[str, Any]]:
    """A raw WebSocket upgrade with these Host and Origin headers: (HTTP status, JSON body or {})."""
    lines = [
        f"GET /ws{query} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *([f"Origin: {origin}"] if origin else []),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        f = s.makefile("rb")
        status = int(f.readline().split()[1])
        headers = dict(_header(line) for line in iter(f.readline, b"\r\n"))
        body = f.read(int(headers.get("content-length", 0)))
    return status, json.loads(body) if body else {}


def _header(line: bytes) -> tuple[str, str]:
    name, _, value = line.decode().partition(":")
    return name.strip().lower(), value.strip()


def _sessions(srv: Any) -> int:
    return len(srv.app.state.manager.sessions)


def test_a_websocket_from_another_origin_is_refused() -> None:
    with running(tiny_pipeline()) as srv:
        status, body = _ws_handshake(srv.port, f"127.0.0.1:{srv.port}", "http://evil.example")
        assert (status, body["code"]) == (403, "forbidden"), body
        assert "Origin 'http://evil.example' is not allowed" in body["message"]
        for origin in ("null", f"http://127.0.0.1:{srv.port + 1}", f"http://localhost.evil.example:{srv.port}"):
            assert _ws_handshake(srv.port, f"127.0.0.1:{srv.port}", origin)[0] == 403, origin
        assert _sessions(srv) == 0  # no session, no upload token handed out
        for origin in (f"http://127.0.0.1:{srv.port}", f"http://localhost:{srv.port}", f"http://[::1]:{srv.port}"):
            assert _ws_handshake(srv.port, f"localhost:{srv.port}", origin)[0] == 101, origin
        assert _ws_handshake(srv.port, f"127.0.0.1:{srv.port}")[0] == 101  # no Origin: not a browser


def test_a_foreign_host_is_refused_dns_rebinding() -> None:
    with running(tiny_pipeline()) as srv:
        for host in ("attacker.example", f"attacker.example:{srv.port}", f"127.0.0.1:{srv.port + 1}", "", "a b"):
            status, body = _ws_handshake(srv.port, host)
            assert (status, body.get("code")) == (403, "forbidden"), (host, status, body)
        c = Client(srv.ws_url)
        token = c.message("hello")["upload_token"]
        rebound = {"Host": f"attacker.example:{srv.port}"}
        r = httpx.post(srv.url + "/upload", params={"token": token}, content=b"x", headers=rebound, timeout=10)
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert "Host 'attacker.example:" in r.json()["message"]
        r = httpx.post(srv.url + "/rtc/offer", json=OFFER, headers=rebound, timeout=10)
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        r = httpx.post(srv.url + "/rtc/offer", json=OFFER, headers={"Origin": "http://evil.example"}, timeout=10)
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
        assert _sessions(srv) == 1  # only the client above
        c.close()


def test_an_upload_must_be_sent_as_a_video_not_text() -> None:
    with running(tiny_pipeline()) as srv:
        c = Client(srv.ws_url)
        token = c.message("hello")["upload_token"]
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": kind} if kind else {}
            r = httpx.post(srv.url + "/upload", params={"token": token}, content=b"x", headers=headers, timeout=10)
            assert (r.status_code, r.json()["code"]) == (415, "bad_content_type"), (kind, r.text)
        r = httpx.post(srv.url + "/upload", params={"token": token}, content=b"x", timeout=10,
                       headers={"Content-Type": "video/mp4"})  # fmt: skip
        assert (r.status_code, r.json()["code"]) == (400, "bad_input")  # past the check: not a video
        c.close()


def test_the_access_token_is_required_when_set() -> None:
    with running(tiny_pipeline(), token="s3cret") as srv:
        for query in ("", "?access_token=wrong", "?token=s3cret"):
            status, body = _ws_handshake(srv.port, f"127.0.0.1:{srv.port}", query=query)
            assert (status, body["code"]) == (401, "unauthorized"), (query, body)
        assert _ws_handshake(srv.port, f"127.0.0.1:{srv.port}", query="?access_token=s3cret")[0] == 101
        c = Client(srv.ws_url + "?access_token=s3cret")
        token = c.message("hello")["upload_token"]
        video = {"Content-Type": "application/octet-stream"}
        r = httpx.post(srv.url + "/upload", params={"token": token}, content=b"x", headers=video, timeout=10)
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
        r = httpx.post(srv.url + "/upload", params={"token": token, "access_token": "s3cret"}, content=b"x",
                       headers=video, timeout=10)  # fmt: skip
        assert (r.status_code, r.json()["code"]) == (400, "bad_input")
        r = httpx.post(srv.url + "/rtc/offer", json=OFFER, timeout=10)
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
        r = httpx.post(srv.url + "/rtc/offer", json=OFFER, headers={"Authorization": "Bearer nope"}, timeout=10)
        assert (r.status_code, r.json()["message"]) == (401, "wrong access token")
        r = httpx.post(srv.url + "/rtc/offer", json=OFFER, headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert r.status_code == 400  # past the guard: a bad offer
        c.close()


def test_allow_origin_adds_an_origin_and_its_host() -> None:
    with running(tiny_pipeline(), allow_origins=("http://studio.example:9000",)) as srv:
        assert _ws_handshake(srv.port, "studio.example:9000", "http://studio.example:9000")[0] == 101
        assert _ws_handshake(srv.port, f"127.0.0.1:{srv.port}", "http://studio.example:9000")[0] == 101
        assert _ws_handshake(srv.port, "studio.example:9000", "http://evil.example")[0] == 403
        assert _ws_handshake(srv.port, "other.example:9000", "http://studio.example:9000")[0] == 403


def _never_serve(*args: Any) -> None:
    raise AssertionError("the server started")


def test_a_non_loopback_bind_without_a_token_refuses_to_start(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRAMECAST_TOKEN", raising=False)
    monkeypatch.setattr("framecast.server.run.serve", _never_serve)  # whatever happens, nothing binds here
    assert main(["serve", "--host", "0.0.0.0", "--random-weights", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("framecast: error: --host 0.0.0.0 is not a loopback"), err
    assert "--token" in err
    assert main(["serve", "--host", "127.0.0.1", "--port", "8000", "--allow-origin", "ftp://x"]) == 2
    assert "not an origin: 'ftp://x'" in capsys.readouterr().err
