"""nginx in front of many `framecast serve` replicas: the configuration (from the templates in `deploy/`) and
nginx run in the foreground as the current user, with every file of its own in one folder.

    conf = render_http([("127.0.0.1", 8001), ("127.0.0.1", 8002)], "127.0.0.1", 8000, "/tmp/x/access.log")
    with Nginx(find_nginx(), Path("/tmp/x"), conf, ("127.0.0.1", 8000)):
        ...

The pinning (a cookie naming the replica, falling over to a live one) is explained in
`deploy/framecast.conf.template` and docs/server.md ("Many replicas").
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from framecast.errors import FramecastError, InputError

DEPLOY = Path(__file__).parent / "deploy"
COOKIE = "framecast_replica"
Backend = tuple[str, int]  # (host, port) of one replica


def replica_name(i: int) -> str:
    """The name of the i-th replica in the cookie and in `framecast replicas`' output: r0, r1, ..."""
    return f"r{i}"


def find_nginx() -> str:
    """The nginx binary (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin")
    if found is None:
        raise InputError("nginx is not installed: apt-get install nginx (Debian's package), then try again")
    return found


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _fill(template: str, fields: dict[str, str]) -> str:
    text = (DEPLOY / template).read_text()
    for key, value in fields.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{\w+\}\}", text)
    assert not left, f"{template}: fields not filled: {left}"
    return text


def render_http(backends: list[Backend], host: str, port: int, access_log: str) -> str:
    """The http-level framecast configuration: nginx on host:port in front of `backends` (r0, r1, ...)."""
    if not backends:
        raise InputError("nginx needs at least one replica behind it")
    addrs = [_address(h, p) for h, p in backends]
    names = [replica_name(i) for i in range(len(addrs))]
    server = "    server {} max_fails=1 fail_timeout=5s;"
    upstreams = []
    for name, addr in zip(names, addrs, strict=True):
        others = [f"    server {a} backup;" for a in addrs if a != addr]  # where its pinned sessions fall over
        lines = [f"upstream framecast_{name} {{", f"    zone framecast_{name} 64k;", server.format(addr), *others, "}"]
        upstreams.append("\n".join(lines))
    cookies = [
        f'    "~(^|\\s){re.escape(addr)}$" "{COOKIE}={name}; Path=/; HttpOnly; SameSite=Lax";'
        for name, addr in zip(names, addrs, strict=True)
    ]
    return _fill("framecast.conf.template", {
        "pins": "\n".join(f"    {name} framecast_{name};" for name in names),
        "cookies": "\n".join(cookies),
        "servers": "\n".join(server.format(a) for a in addrs),
        "upstreams": "\n\n".join(upstreams),
        "listen": _address(host, port),
        "access_log": access_log,
    })  # fmt: skip


def render_main(folder: Path) -> str:
    """nginx.conf for `Nginx`: everything in `folder`, the framecast part included from folder/framecast.conf."""
    user = ""
    if os.geteuid() == 0:  # nginx would switch its workers to `nobody`: keep the current user instead
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    return _fill("nginx.conf.template", {"dir": str(folder), "user": user})


def check_port_free(host: str, port: int, flag: str) -> None:
    """InputError naming `flag` when host:port cannot be bound (another server on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx and uvicorn bind
        try:
            s.bind((host, port))
        except OSError as e:
            reason = e.strerror or str(e)
            raise InputError(f"port {port} on {host} is busy or not allowed ({reason}): pick another {flag}") from None


def wait_listening(host: str, port: int, alive: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """True once host:port accepts connections; False when `alive` exits first or the time is up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive.poll() is None:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Nginx:
    """nginx in the foreground with `http_conf` as its framecast part; a context manager. Its pid, logs
    and temporary files are in `folder`."""

    def __init__(self, binary: str, folder: Path, http_conf: str, listen: Backend) -> None:
        self.binary, self.folder, self.listen = binary, folder, listen
        (folder / "framecast.conf").write_text(http_conf)
        self.conf = folder / "nginx.conf"
        self.conf.write_text(render_main(folder))
        self.error_log = folder / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        cmd = [self.binary, "-p", str(self.folder), "-c", str(self.conf), "-e", str(self.error_log)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)  # not sent Ctrl-C
        if not wait_listening(*self.listen, self.process, timeout_s):
            code = self.process.poll()
            self.stop()
            raise FramecastError(f"nginx did not start (exit code {code}): {self.last_error()}")

    def last_error(self) -> str:
        lines = self.error_log.read_text(errors="replace").splitlines() if self.error_log.exists() else []
        errors = [line for line in lines if "[emerg]" in line or "[alert]" in line or "[crit]" in line]
        return (errors or lines or [f"no log in {self.error_log}"])[-1]

    def stop(self, timeout_s: float = 5.0) -> None:
        """Fast shutdown (SIGTERM: open WebSockets are cut, they would hold a graceful one), SIGKILL after
        `timeout_s`."""
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
