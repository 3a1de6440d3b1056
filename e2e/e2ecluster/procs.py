"""Detached local processes: start them, recognise them later, stop them by pid.

Design: every component runs in its own session (``start_new_session``) so it outlives
the ``make`` or pytest process that started it, with stdout/stderr in a log file. A
pid recorded in the state file is only signalled after checking that
``/proc/<pid>/cmdline`` still names the program we started, so a reused pid is never
hit. Stopping sends SIGTERM to the process group, waits, then SIGKILLs it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["free_port", "is_ours", "spawn", "stop", "stop_recorded", "tail"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` detached in a new session, logging to ``log_path``; return its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    return proc.pid


def is_ours(pid: int, marker: str) -> bool:
    """True when ``pid`` is alive and its command line contains ``marker``.

    A marker ``env:NAME=VALUE`` is looked up in the process's environment instead: it
    survives the process exec-ing another program (``sh -c '...; exec sleep 300'``).
    Right after ``exec`` the kernel may briefly show an empty command line; that is
    retried for up to a second rather than taken as "not ours".
    """
    if marker.startswith("env:"):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return False
        return _alive(pid) and marker[4:] in environ
    for _ in range(20):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if not _alive(pid):
            return False
        if cmdline:
            return marker in cmdline
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop(pid: int, marker: str, *, grace: float = 10.0) -> bool:
    """Stop our process ``pid`` (and its process group); False if it was not running."""
    if not is_ours(pid, marker):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        _reap(pid)
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our child (a no-op for detached processes)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def stop_recorded(root: Path) -> None:
    """Stop processes recorded as ``<root>/*/pid`` files ("pid\\nmarker"), then drop the files."""
    for pidfile in root.glob("*/pid"):
        with contextlib.suppress(OSError, ValueError):
            pid, marker = pidfile.read_text().split("\n", 1)
            stop(int(pid), marker.strip(), grace=2.0)
        pidfile.unlink(missing_ok=True)
