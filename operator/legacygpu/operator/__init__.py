"""The Kubernetes operator: reconcilers for InferenceCluster and InferenceTask (kopf for clusters and pods).

Layout (one topic per module):

* ``schema``, ``schema_cluster``, ``schema_task``, ``crdgen`` — the one CRD source and its YAML
* ``clusterstate``, ``taskstate``, ``conditions``, ``pods`` — pure decisions and child manifests
* ``reconciler``, ``cluster_handlers``, ``task_handlers`` — the handlers (kopf's for clusters and pods)
* ``taskwatch`` — the operator's own list and watch of tasks, and the task index the passes read
* ``runtime``, ``leader``, ``metrics``, ``events``, ``app``, ``config``, ``rbac``, ``errors`` — running it

What the worker and the facade share with the operator (API coordinates, labels, status
builders, the API client) lives in :mod:`legacygpu.core.kube`; the benchmark is
:mod:`legacygpu.testing.bench_operator`, which runs against the stand-ins in
:mod:`legacygpu.testing` (not part of this package: they are in no image).

Importing this package loads neither kopf nor the Kubernetes client; modules do, as needed.
"""

from __future__ import annotations

from legacygpu.core.kube.contract import API_VERSION, CLUSTER_KIND, GROUP, TASK_KIND, VERSION

__all__ = ["API_VERSION", "CLUSTER_KIND", "GROUP", "TASK_KIND", "VERSION"]
