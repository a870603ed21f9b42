"""Bad input and rough clients: clear errors to the sender only, nobody else notices, memory back to baseline."""

from __future__ import annotations

import base64
import json
import socket
import struct

import pytest

from tests.test_server_support import Client, live_states, running, tiny_pipeline, wait_until

websockets_exceptions = pytest.importorskip("websockets.exceptions")

BAD = [
    ("{not json", "bad_json"),
    ('["start"]', "bad_message"),
    ('{"type": "explode"}', "bad_message"),
    (json.dumps({"type": "prompt", "text": "x" * 6000}), "too_large"),
    ('{"type": "start", "prompt": "red", "colour": "blue"}', "invalid"),
    ('{"type": "start", "prompt": "red", "steps": 1000}', "invalid"),
    ('{"type": "start", "prompt": "red", "seed": 99999999999999999999}', "invalid"),
    ('{"type": "start", "prompt": "red", "fps": 1e9}', "invalid"),
    ('{"type": "start", "prompt": "red", "fps": 5000}', "invalid"),  # above this server's max_fps
    ('{"type": "prompt", "text": "blue"}', "not_streaming"),
]


def _watch(srv_url: str) -> Client:
    """A session that streams through the whole test; its frame indices must stay gap-free."""
    a = Client(srv_url)
    a.send({"type": "start", "prompt": "a red circle", "seed": 0, "steps": 1, "fps": 60})
    a.wait_for(lambda c: len(c.frames) >= 4)
    return a


def _still_streaming(a: Client, more: int = 8) -> None:
    n = len(a.frames)
    a.wait_for(lambda c: len(c.frames) >= n + more)
    assert [i for i, _ in a.frames] == list(range(len(a.frames))), "the watching session lost frames"
    assert not [m for m in a.messages if m["type"] == "error"], "an error reached the wrong session"


def test_bad_messages_answered_to_the_sender_only() -> None:
    with running(tiny_pipeline()) as srv:
        a, b = _watch(srv.ws_url), Client(srv.ws_url)
        for raw, code in BAD:
            b.send(raw)
            err = b.message("error")
            assert err["code"] == code and len(err["message"]) > 10, err
        b.ws.send(b"\x00\x01binary")
        assert b.message("error")["code"] == "binary"
        b.send({"type": "start", "prompt": "a blue square", "seed": 1, "steps": 2, "fps": 60})  # b still works
        b.wait_for(lambda c: len(c.frames) >= 4)
        _still_streaming(a)
        refused = srv.app.state.manager.metrics.render().decode()
        assert 'framecast_bad_messages_total{code="invalid"} 5.0' in refused


def test_message_over_the_socket_limit_closes_only_that_connection() -> None:
    with running(tiny_pipeline(), ws_max_bytes=16384) as srv:
        a, b = _watch(srv.ws_url), Client(srv.ws_url)
        b.send("x" * 100_000)
        with pytest.raises(websockets_exceptions.ConnectionClosed) as e:
            b.wait_for(lambda c: False)
        assert e.value.rcvd is None or e.value.rcvd.code == 1009
        _still_streaming(a)
        wait_until(lambda: len(srv.app.state.manager.sessions) == 1)


def _handshake(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(b"0123456789abcdef").decode()
    s.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert b" 101 " in s.recv(4096).split(b"\r\n")[0]
    return s


def _masked_text(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)) + mask + body


def _reset(s: socket.socket) -> None:
    """Close with a TCP reset, no WebSocket close frame."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_abrupt_disconnects_and_rapid_reconnects_return_to_baseline() -> None:
    with running(tiny_pipeline(), max_sessions=8) as srv:
        manager, engine = srv.app.state.manager, srv.app.state.manager.engine
        base_states = live_states()
        a = _watch(srv.ws_url)
        one_stream = engine.state_bytes()
        # cut off in the middle of a frame we send: a header announcing 300 bytes, then 10 of them
        s = _handshake(srv.port)
        s.sendall(_masked_text(b'{"type": "stop"}' * 20)[:14])
        _reset(s)
        # cut off while the server is sending frames to us
        s = _handshake(srv.port)
        s.sendall(_masked_text(json.dumps({"type": "start", "prompt": "x", "steps": 1, "fps": 200}).encode()))
        s.recv(2048)
        _reset(s)
        for i in range(100):  # rapid connects and disconnects, a third of them mid-stream
            c = Client(srv.ws_url)
            if i % 3 == 0:
                c.send({"type": "start", "prompt": f"prompt {i}", "seed": i, "steps": 1, "fps": 100})
                c.message("started")
            if i % 2:
                c.close()
            else:
                _reset(c.ws.socket)
        _still_streaming(a)
        wait_until(lambda: len(manager.sessions) == 1 and engine.live_count() == 1 and engine.attached_count() == 1)
        assert engine.state_bytes() == one_stream and live_states() == base_states + 1
        a.close()
        wait_until(lambda: not manager.sessions and engine.live_count() == 0 and engine.attached_count() == 0)
        assert live_states() == base_states and engine.state_bytes() == 0
