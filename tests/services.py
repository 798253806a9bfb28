"""What the real services of the tests share (tests/slurm_cluster.py, tests/orthanc_server.py).

Each service runs from its own folder, on ports free at its start, and is stopped by the
PID it recorded, checked first to still be that service (its command line names a marker,
e.g. its folder). Standard library only: both modules also run as plain scripts
(``python tests/slurm_cluster.py up DIR``).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on localhost now (bound, read, released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def alive(pid: int, marker: str) -> bool:
    """pid is a live (not zombie) process whose command line contains ``marker``."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and marker in cmdline


def terminate(pid: int, marker: str, timeout: float) -> bool:
    """SIGTERM ``pid`` if it is still the process of ``marker``, SIGKILL after ``timeout``
    seconds; True if there was such a process."""
    if not alive(pid, marker):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid, marker):
        os.kill(pid, signal.SIGKILL)
    return True


def log_tails(paths, lines: int) -> str:
    """The last ``lines`` lines of each existing file, each under its path."""
    parts = []
    for path in map(Path, paths):
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path}\n" + "\n".join(tail))
    return "\n".join(parts)


def unavailable(what: str, reason: str) -> None:
    """In a fixture: skip with the reason, or fail when ``CI=true`` (CI installs every
    service, so a missing one there is a failure, never a silent skip)."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} unavailable in CI: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")
