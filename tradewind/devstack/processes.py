"""Background processes of the dev stack: start detached, log to files, check, stop.

Each process runs in its own session (process group) so `down` stops it with everything it
spawned (MLflow's workers), and so it outlives the `tradewind dev up` that started it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class StackError(RuntimeError):
    """The dev stack cannot start or is not healthy; the message says why and what to do."""


@dataclass
class ManagedProcess:
    """A long-running component: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    ready_timeout: float = 60.0


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this process has not
    handed out before. A stack picks all its ports before it starts anything, and the kernel
    offers a port again once the probe's socket is closed: 25 picks in a row held a repeat
    ~3% of the time, and the component started second found its port taken."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with _HANDED_OUT_LOCK:
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().split(") ")[-1].startswith("Z"))


def start(proc: ManagedProcess) -> int:
    """Start `proc` detached; wait until it is ready. Returns its pid."""
    if not Path(proc.argv[0]).is_file():
        raise StackError(
            f"{proc.name}: binary {proc.argv[0]} not found; run hack/build-binaries.sh"
        )
    for port in proc.ports:
        if port_in_use(port):
            raise StackError(
                f"{proc.name}: port 127.0.0.1:{port} is already in use by another process"
            )
    proc.log.parent.mkdir(parents=True, exist_ok=True)
    with proc.log.open("ab") as log:
        child = subprocess.Popen(
            proc.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **proc.env},
            start_new_session=True,
        )
    deadline = time.monotonic() + proc.ready_timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise StackError(f"{proc.name} exited with code {child.returncode}; {_tail(proc.log)}")
        if proc.ready():
            return child.pid
        time.sleep(0.2)
    stop(child.pid)
    raise StackError(
        f"{proc.name} was not ready after {proc.ready_timeout:.0f}s; {_tail(proc.log)}"
    )


def stop(pid: int | None, timeout: float = 15.0) -> None:
    """Stop a process group started by `start`: SIGTERM, then SIGKILL."""
    if not pid_alive(pid):
        return
    assert pid is not None
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def _tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"no log at {log}"
    return f"last lines of {log}:\n" + "\n".join(text)


def http_ok(url: str, context: ssl.SSLContext | None = None, expect: str | None = None) -> bool:
    """True if GET `url` answers 200 (and the body holds `expect`, when given)."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            body = resp.read().decode(errors="replace")
            return resp.status == 200 and (expect is None or expect in body)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def insecure_tls() -> ssl.SSLContext:
    """For the health endpoints of components that serve a self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
