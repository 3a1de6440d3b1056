"""The Kubernetes operator: kopf reconcilers for InferenceCluster and InferenceTask.

Layout (one topic per module):

* ``contract`` — API coordinates, labels, status builders shared with the worker and the facade
* ``schema``, ``schema_cluster``, ``schema_task``, ``crdgen`` — the one CRD source and its YAML
* ``clusterstate``, ``taskstate``, ``conditions``, ``pods`` — pure decisions and child manifests
* ``reconciler``, ``cluster_handlers``, ``task_handlers`` — the kopf side
* ``runtime``, ``kubeapi``, ``leader``, ``metrics``, ``events``, ``app``, ``config``, ``rbac`` — running it
* ``emulator``, ``simkubelet``, ``bench`` — the API server and nodes stand-ins for tests and benchmarks

Importing this package loads neither kopf nor the Kubernetes client; modules do, as needed.
"""

from __future__ import annotations

from legacygpu.operator.contract import API_VERSION, CLUSTER_KIND, GROUP, TASK_KIND, VERSION

__all__ = ["API_VERSION", "CLUSTER_KIND", "GROUP", "TASK_KIND", "VERSION"]
