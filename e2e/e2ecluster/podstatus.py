"""The simulated kubelet's per-pod record, the status it reports and readiness probes.

Design: :class:`PodRecord` is everything the simulator tracks about one pod bound to a
simulated node (its loopback pod IP, GPU indices, local process, restarts, readiness).
:func:`desired_status` turns a record into the ``status`` a kubelet would write (phase,
conditions, containerStatuses with running/waiting/terminated states and restart
counts); the simulator patches it only when it differs from what it last wrote.
Only the first container of a worker pod is backed by a process; other containers are
reported running. :func:`probe_ready` runs a container's ``readinessProbe`` (``httpGet``
and ``tcpSocket`` for real; ``exec`` and ``grpc`` count as passing) against the pod IP,
honouring ``initialDelaySeconds`` and ``periodSeconds`` but not thresholds;
:func:`probe_alive` runs its ``livenessProbe`` the same way and reports it dead after
``failureThreshold`` (default 3) failures in a row, whereupon the simulator restarts it.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PodRecord", "desired_status", "now_rfc3339", "probe_alive", "probe_ready"]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodRecord:
    """What the simulator knows and did about one pod."""

    uid: str
    namespace: str
    name: str
    node: str
    pod_ip: str
    host_ip: str
    pod_dir: Path
    gpu_ids: list[int]
    worker: bool
    start_time: str = field(default_factory=now_rfc3339)
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    last_exit: int | None = None
    last_finished: str = ""
    waiting_reason: str = ""
    waiting_message: str = ""
    restart_at: float = 0.0
    terminated: bool = False
    ready: bool = False
    ready_changed: str = field(default_factory=now_rfc3339)
    next_probe: float = 0.0
    written: str = ""
    container: str = ""  # the buildah working container, when the pod runs from its image
    next_liveness: float = 0.0
    liveness_failures: int = 0

    def set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self.ready_changed = now_rfc3339()


def _container_state(rec: PodRecord) -> tuple[dict[str, Any], bool]:
    if rec.terminated:
        state = {
            "terminated": {
                "exitCode": rec.last_exit if rec.last_exit is not None else 0,
                "reason": "Completed" if rec.last_exit == 0 else "Error",
                "startedAt": rec.started_at or rec.start_time,
                "finishedAt": rec.last_finished or now_rfc3339(),
            }
        }
        return state, False
    if rec.proc is None and rec.worker:
        return {"waiting": {"reason": rec.waiting_reason or "ContainerCreating", "message": rec.waiting_message}}, False
    return {"running": {"startedAt": rec.started_at or rec.start_time}}, True


def desired_status(pod: dict[str, Any], rec: PodRecord) -> dict[str, Any]:
    """The pod status a kubelet would report for ``rec``."""
    statuses: list[dict[str, Any]] = []
    all_ready = True
    for index, container in enumerate(pod["spec"].get("containers") or []):
        if index == 0:
            state, started = _container_state(rec)
            ready = started and (rec.ready or not rec.worker)
            restarts = rec.restarts
        else:
            state, started, ready, restarts = {"running": {"startedAt": rec.start_time}}, True, True, 0
        status: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": f"e2ecluster://{container.get('image', '')}",
            "containerID": f"e2ecluster://{rec.uid}/{container['name']}",
            "ready": ready,
            "started": started,
            "restartCount": restarts,
            "state": state,
        }
        if index == 0 and rec.last_exit is not None and not rec.terminated:
            status["lastState"] = {
                "terminated": {
                    "exitCode": rec.last_exit,
                    "reason": "Completed" if rec.last_exit == 0 else "Error",
                    "startedAt": rec.start_time,
                    "finishedAt": rec.last_finished,
                }
            }
        all_ready = all_ready and ready
        statuses.append(status)
    if rec.terminated:
        phase = "Succeeded" if rec.last_exit == 0 else "Failed"
    elif rec.worker and rec.proc is None and rec.restarts == 0:
        phase = "Pending"
    else:
        phase = "Running"
    ready_text = "True" if all_ready else "False"

    def cond(kind: str, status: str, since: str) -> dict[str, Any]:
        return {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}

    return {
        "phase": phase,
        "conditions": [
            cond("PodReadyToStartContainers", "True", rec.start_time),
            cond("Initialized", "True", rec.start_time),
            cond("Ready", ready_text, rec.ready_changed),
            cond("ContainersReady", ready_text, rec.ready_changed),
            cond("PodScheduled", "True", rec.start_time),
        ],
        "hostIP": rec.host_ip,
        "hostIPs": [{"ip": rec.host_ip}],
        "podIP": rec.pod_ip,
        "podIPs": [{"ip": rec.pod_ip}],
        "startTime": rec.start_time,
        "containerStatuses": statuses,
    }


def _port(container: dict[str, Any], port: Any) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def probe_ready(container: dict[str, Any], rec: PodRecord) -> bool | None:
    """Run the readiness probe if one is due; None when no probe ran this time."""
    probe = container.get("readinessProbe")
    if not probe:
        return True
    now = time.monotonic()
    if now < rec.next_probe:
        return None
    rec.next_probe = now + float(probe.get("periodSeconds", 10))
    return _passes(probe, container, rec)


def probe_alive(container: dict[str, Any], rec: PodRecord) -> bool:
    """Run the liveness probe if one is due; False once it failed ``failureThreshold`` times in a row."""
    probe = container.get("livenessProbe")
    now = time.monotonic()
    if not probe or now < rec.next_liveness:
        return True
    rec.next_liveness = now + float(probe.get("periodSeconds", 10))
    rec.liveness_failures = 0 if _passes(probe, container, rec) else rec.liveness_failures + 1
    return rec.liveness_failures < int(probe.get("failureThreshold", 3))


def _passes(probe: dict[str, Any], container: dict[str, Any], rec: PodRecord) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            host = get.get("host") or rec.pod_ip
            url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{_port(container, get['port'])}{get.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return 200 <= resp.status < 400
        if "tcpSocket" in probe:
            tcp = probe["tcpSocket"]
            with socket.create_connection((tcp.get("host") or rec.pod_ip, _port(container, tcp["port"])), timeout):
                return True
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return True
