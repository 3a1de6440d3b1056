"""Runs the embedded local cluster: one facade process and one worker process per device.

Children are real processes (``python -m legacygpu.cli ...``), the same ones
a user could start by hand, so the embedded cluster exercises exactly what a
multi-machine setup would. A worker that crashes (non-zero exit code, or
killed by a signal) is started again; one that exits 0 was drained
(``legacygpu worker stop``) or stopped on purpose and stays stopped.
SIGINT/SIGTERM stop the workers first (each finishes its running task and
deregisters), then the facade. A pidfile in the data dir lets
``legacygpu cluster stop`` find the supervisor from another terminal.

Starting fails fast and says why: a port already taken is found before any
child starts, a facade that exits while starting is reported with the tail
of its log, and a facade answering with someone else's token (another
cluster on the same port) is not taken for ours.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from legacygpu.core.config import Settings, ensure_join_token

__all__ = ["PIDFILE", "Supervisor", "crashed", "local_devices"]

log = logging.getLogger(__name__)

PIDFILE = "cluster.pid"
_STOP_GRACE_SECONDS = 30.0


def local_devices() -> tuple[list[int | None], str]:
    """One entry per worker to start by default: each OpenCL GPU's device index, else ``[None]`` (the CPU)."""
    try:
        from legacygpu.worker.opencl.device import discover

        gpus = [d for d in discover() if d.device_type == "gpu"]
    except Exception as exc:  # no OpenCL at all is normal on a CPU-only host
        log.debug("OpenCL discovery failed: %s", exc)
        gpus = []
    if gpus:
        return [d.index for d in gpus], ", ".join(d.name for d in gpus)
    return [None], "the CPU (no OpenCL GPU found)"


@dataclass
class _Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    finished: bool = False
    """Exited cleanly (drained or stopped on purpose): the supervisor leaves it stopped."""


def _term_when_parent_dies() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the supervisor's (main) thread dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def crashed(code: int | None) -> bool:
    """Whether a child's exit code calls for a restart.

    A worker exits 0 only after a drain or a SIGTERM/SIGINT, both deliberate;
    a non-zero code is a failure and a negative one means a signal killed it.
    """
    return code is not None and code != 0


class Supervisor:
    """Starts, watches and stops the facade and its workers."""

    def __init__(
        self, *, data_dir: Path, host: str, port: int, devices: Sequence[int | None], token: str,
        backend: str = "auto", preload: tuple[str, ...] = (), join_token: str | None = None, grpc_port: int = -1,
    ) -> None:
        """One worker per entry of ``devices``: an OpenCL device index, or None to let the backend choose.

        The facade gets the users' ``token``; the workers get only the join token (by default the one
        stored in ``data_dir``), with which they register and receive their own. ``grpc_port``: where the
        facade serves the Open Inference Protocol over gRPC (-1: not at all).
        """
        self.data_dir = data_dir
        self.host, self.port, self.grpc_port = host, port, grpc_port
        self.url = f"http://{host}:{port}"
        self.token = token
        self._stop = False
        join_token = join_token or ensure_join_token(Settings(data_dir=data_dir))
        env = {"LEGACYGPU_DATA_DIR": str(data_dir), "LEGACYGPU_API_URL": self.url,
               "LEGACYGPU_PRELOAD_MODELS": ",".join(preload)}
        worker_env = {**env, "LEGACYGPU_JOIN_TOKEN": join_token}
        env = {**env, "LEGACYGPU_API_TOKEN": token}
        python = [sys.executable, "-m", "legacygpu.cli"]
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.api = _Child("api", [*python, "api", "serve", "--host", host, "--grpc-port", str(grpc_port),
                                  "--port", str(port),
                                  "--data-dir", str(data_dir), "--log-level", "warning"],
                          log_path=logs / "api.log", env=env)
        self.workers = [
            _Child(
                f"worker-{i}",
                [*python, "worker", "start", "--api", self.url, "--backend", backend,
                 "--name", f"local-{i}", *([] if device is None else ["--device-index", str(device)])],
                log_path=logs / f"worker-{i}.log",
                env=worker_env,
            )
            for i, device in enumerate(devices)
        ]

    def _spawn(self, child: _Child) -> None:
        assert child.log_path is not None
        handle = child.log_path.open("ab")
        # A session of its own keeps Ctrl-C away from the children (the supervisor stops them in order);
        # the parent-death signal stops them if the supervisor itself is killed (kill -9, OOM).
        child.process = subprocess.Popen(
            child.argv, env={**os.environ, **child.env}, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_term_when_parent_dies if sys.platform == "linux" else None,
        )
        handle.close()

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.api.process is not None
            if self.api.process.poll() is not None:
                code = self.api.process.returncode
                raise RuntimeError(f"the facade exited with code {code} while starting; the end of "
                                   f"{self.api.log_path}:\n{_tail(self.api.log_path)}")
            try:
                if httpx.get(f"{self.url}/cluster/health", timeout=1.0).status_code == 200:
                    self._check_ours()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the facade did not answer on {self.url} within {timeout:.0f}s; see {self.api.log_path}")

    def _check_ours(self) -> None:
        """The facade answering on our URL accepts our token (else it is another cluster's)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if httpx.get(f"{self.url}/cluster/models", headers=headers, timeout=2.0).status_code == 401:
            raise RuntimeError(f"another legacygpu facade answers on {self.url} and refuses this cluster's token; "
                               "stop it (legacygpu cluster stop --data-dir <its data dir>) or pick another --port")

    def _check_port_free(self) -> None:
        ports = [(self.port, "--port"), *([(self.grpc_port, "--grpc-port")] if self.grpc_port > 0 else [])]
        for port, flag in ports:
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no clash
                try:
                    probe.bind((self.host, port))
                except OSError as exc:
                    raise RuntimeError(
                        f"cannot listen on {self.host}:{port}: {exc.strerror or exc} (another cluster or program "
                        f"is using it; `legacygpu cluster status --api {self.url}` tells whether it is a cluster); "
                        f"stop it or pick another {flag}"
                    ) from exc

    def start(self) -> None:
        pidfile = self.data_dir / PIDFILE
        if pidfile.exists():
            pid = int(pidfile.read_text().strip() or 0)
            if pid and _alive(pid):
                raise RuntimeError(f"a cluster is already running from {self.data_dir} (pid {pid})")
        self._check_port_free()
        pidfile.write_text(str(os.getpid()))
        self._spawn(self.api)
        self._wait_healthy()
        for worker in self.workers:
            self._spawn(worker)

    def wait_for_workers(self, timeout: float = 120.0) -> int:
        """Block until every worker has registered (or ``timeout``); returns how many did."""
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.token}"}
        active = 0
        while time.monotonic() < deadline and not self._stop:
            try:
                workers = httpx.get(f"{self.url}/cluster/workers", headers=headers, timeout=2.0).json()["data"]
                active = sum(1 for w in workers if w["state"] == "active")
            except (httpx.HTTPError, KeyError, ValueError):
                active = 0
            if active >= len(self.workers):
                break
            time.sleep(0.2)
        return active

    def request_stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        self._stop = True

    def watch(self) -> None:
        """Restart workers that crash, and the facade, until asked to stop."""
        while not self._stop:
            self.watch_once()
            time.sleep(0.5)

    def watch_once(self) -> list[str]:
        """One watch cycle: restart what crashed; returns the names of the children started again."""
        restarted: list[str] = []
        for worker in self.workers:
            assert worker.process is not None
            code = worker.process.poll()
            if code is None or worker.finished or self._stop:
                continue
            if not crashed(code):
                worker.finished = True
                log.info("%s exited cleanly (drained or stopped); not starting it again", worker.name)
                continue
            worker.restarts += 1
            log.warning("%s exited with code %s; starting it again (restart %d)", worker.name, code, worker.restarts)
            self._spawn(worker)
            restarted.append(worker.name)
        assert self.api.process is not None
        if self.api.process.poll() is not None and not self._stop:
            log.warning("the facade exited with code %s; starting it again", self.api.process.returncode)
            self._spawn(self.api)
            restarted.append(self.api.name)
        return restarted

    def shutdown(self) -> None:
        """Workers first (they finish their task and deregister), then the facade."""
        for worker in self.workers:
            _terminate(worker)
        for worker in self.workers:
            _wait(worker)
        _terminate(self.api)
        _wait(self.api)
        pidfile = self.data_dir / PIDFILE
        if pidfile.exists() and pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()


def _terminate(child: _Child) -> None:
    if child.process is not None and child.process.poll() is None:
        child.process.send_signal(signal.SIGTERM)


def _wait(child: _Child) -> None:
    if child.process is None:
        return
    try:
        child.process.wait(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0fs; killing it", child.name, _STOP_GRACE_SECONDS)
        child.process.kill()
        child.process.wait()


def _tail(path: Path | None, lines: int = 10) -> str:
    if path is None or not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
