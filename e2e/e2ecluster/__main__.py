"""Command line: ``python -m e2ecluster {build,up,down,status,kubeconfig,simulate}``.

Run with ``PYTHONPATH=e2e`` from the repository root (``make e2e-cluster`` does). ``up``
starts the control plane detached and returns once it is usable; ``down`` stops it;
``simulate`` is the node simulator's own entry point (started by ``up``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from e2ecluster.cluster import Cluster, NodePool
from e2ecluster.errors import ClusterError

__all__ = ["main"]

log = logging.getLogger("e2ecluster")


def _pool_args(parser: argparse.ArgumentParser) -> None:
    defaults = NodePool()
    parser.add_argument("--nodes", type=int, default=defaults.count, help="simulated GPU nodes")
    parser.add_argument("--gpus", type=int, default=defaults.gpus, help="GPUs per node")
    parser.add_argument("--resource", default=defaults.resource, help="extended resource name")
    parser.add_argument("--cpu", default=defaults.cpu)
    parser.add_argument("--memory", default=defaults.memory)
    parser.add_argument("--pods", default=defaults.pods)
    parser.add_argument("--family", default=defaults.family, help="legacygpu.io/gpu.family label")
    parser.add_argument("--prefix", default=defaults.prefix, help="node name prefix")


def _pool(ns: argparse.Namespace) -> NodePool:
    return NodePool(ns.nodes, ns.gpus, ns.resource, ns.cpu, ns.memory, ns.pods, ns.family, ns.prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2ecluster", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="state directory (default .cache/e2e-cluster)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build the kube-* binaries if missing; print their directory")
    up = sub.add_parser("up", help="start the control plane and node simulator (detached)")
    _pool_args(up)
    up.add_argument("--worker-command", default=None, help="worker pod command template (default '{command}')")
    sub.add_parser("down", help="stop everything started by 'up'")
    sub.add_parser("status", help="show which components run")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig path")
    sim = sub.add_parser("simulate", help="run the node simulator in the foreground")
    _pool_args(sim)
    sim.add_argument("--gpu-env", default="LEGACYGPU_VISIBLE_DEVICES",
                     help="env var with a pod's GPUs (fake PCI addresses)")  # fmt: skip
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)  # fmt: skip

    pool = _pool(ns) if ns.cmd in ("up", "simulate") else None
    cluster = Cluster(ns.root, nodes=pool, worker_command=getattr(ns, "worker_command", None))
    try:
        if ns.cmd == "build":
            sys.stdout.write(f"{cluster.kube_bin()}\n")
        elif ns.cmd == "up":
            start = time.monotonic()
            state = cluster.up()
            log.info("control plane ready in %.1f s", time.monotonic() - start)
            sys.stdout.write(f"export KUBECONFIG={state.kubeconfig}\n")
        elif ns.cmd == "down":
            stopped = cluster.down()
            log.info("stopped: %s", ", ".join(stopped) or "nothing was running")
        elif ns.cmd == "status":
            for name, alive in cluster.status().items():
                sys.stdout.write(f"{name:26} {'running' if alive else 'stopped'}\n")
            return 0 if cluster.is_running() else 1
        elif ns.cmd == "kubeconfig":
            sys.stdout.write(f"{cluster.root / 'admin.kubeconfig'}\n")
        elif ns.cmd == "simulate":
            from e2ecluster.simulator import Simulator

            state = cluster.load_state()
            Simulator(cluster.root, _pool(ns), gpu_env=ns.gpu_env,
                      version=state.kube_version if state else "v0.0.0-sim").run()  # fmt: skip
    except ClusterError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
