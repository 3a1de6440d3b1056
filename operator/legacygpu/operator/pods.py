"""Building a cluster's children: worker Pods and the headless Service (pure functions).

Worker pods are managed directly, KubeRay-style, rather than through a
Deployment: the operator must choose which worker goes on scale-down (the
idle one, not a random one) and must know which pod an assignment points
at. Each pod:

* runs ``legacygpu worker start --kubernetes --backend <backend>`` with
  ``POD_NAME``/``POD_NAMESPACE`` from the downward API, so the worker can
  watch the tasks assigned to it;
* requests ``gpusPerWorker`` of the device resource (``legacygpu.io/gpu``
  by default) and, unless the spec gives its own affinity, must land on a
  node labelled ``legacygpu.io/gpu.present=true``;
* runs as non-root with no privilege escalation, all capabilities dropped
  and a read-only root file system;
* serves the Open Inference Protocol on the ports named :data:`PORT_HTTP`
  (REST, 8000) and :data:`PORT_GRPC` (gRPC, 8001), Triton's numbers, and is
  probed there: liveness on ``/v2/health/live``, readiness on
  ``/v2/health/ready``, which a worker answers 200 once it has loaded the
  models of ``spec.models`` (those that load) and watches its tasks (so a Ready pod can take
  both real-time requests and tasks; the facade forwards ``/v2`` only to
  Ready pods). A startup probe on the same path gives model loading up to
  ten minutes before liveness counts. The health port (``/healthz``,
  ``/readyz``, 8081) stays declared for tools that used it;
* with ``spec.modelSources`` (:mod:`legacygpu.core.modelsources`): the
  sources as JSON in ``LEGACYGPU_MODEL_SOURCES`` (their names join the
  preloaded models, so the pod turns Ready only once they are fetched and
  loaded), a writable cache volume (``spec.modelCache`` or an emptyDir) and
  each claim (read-only) and ConfigMap (optional) they read, mounted under
  ``/var/lib/legacygpu/sources``; nothing for http(s), which the worker
  downloads;
* mounts each claim of ``spec.batchClaims`` read-write at
  ``/var/lib/legacygpu/claims/<claim>``, for batch tasks' ``pvc://`` sources
  and outputs (:mod:`legacygpu.core.kube.batch`);
* carries the label :data:`LABEL_TEMPLATE_HASH`, a hash of everything in
  the pod that comes from the cluster's spec and the operator's settings
  (image, resources, service account, template...). A pod whose hash is not
  the current one is outdated, and the reconciler rolls it
  (:func:`~legacygpu.operator.clusterstate.plan_scale`), as a Deployment
  rolls a changed pod template.

Owner references (``kopf.adopt``) are added by the caller.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import string
from collections.abc import Mapping
from typing import Any

from legacygpu.core import modelsources
from legacygpu.core.kube.batch import CLAIMS_DIR
from legacygpu.core.kube.contract import (
    DEFAULT_DEVICE_RESOURCE,
    GPU_NODE_LABEL,
    LABEL_CLUSTER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    MANAGER,
    PORT_GRPC,
    PORT_HTTP,
    SERVING_GRPC_PORT,
    SERVING_HTTP_PORT,
)
from legacygpu.operator.config import OperatorConfig

__all__ = [
    "CACHE_VOLUME",
    "DATA_DIR",
    "LABEL_TEMPLATE_HASH",
    "MODEL_DIR",
    "WORKER_CONTAINER",
    "build_service",
    "build_worker_pod",
    "new_pod_name",
    "selector_labels",
    "service_name",
    "template_hash",
]

WORKER_CONTAINER = "worker"
DATA_DIR = "/var/lib/legacygpu"
MODEL_DIR = f"{DATA_DIR}/models"
"""The worker's model repository: ``$LEGACYGPU_DATA_DIR/models`` (baked into the image, or ``modelVolume``)."""
CACHE_VOLUME = "model-cache"
"""The worker's model cache volume (``spec.modelCache`` or an emptyDir), with ``spec.modelSources`` only."""
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
LABEL_TEMPLATE_HASH = "legacygpu.io/template-hash"
"""On worker pods: :func:`template_hash` of the spec and settings the pod was built from."""


def selector_labels(cluster: str) -> dict[str, str]:
    """Labels that select a cluster's worker pods."""
    return {LABEL_CLUSTER: cluster, LABEL_COMPONENT: "worker"}


def service_name(cluster: str) -> str:
    return f"{cluster}-workers"[:63].rstrip("-")


def new_pod_name(cluster: str) -> str:
    """A fresh worker pod name: ``<cluster>-worker-<5 random characters>`` (at most 63)."""
    suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
    return f"{cluster[:50].rstrip('-')}-worker-{suffix}"


def _default_affinity() -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": GPU_NODE_LABEL, "operator": "In", "values": ["true"]}]}
                ]
            }
        }
    }


def _container(spec: Mapping[str, Any], config: OperatorConfig) -> dict[str, Any]:
    backend = spec.get("backend", "auto")
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "LEGACYGPU_HEALTH_PORT", "value": str(config.health_port)},
        {"name": "LEGACYGPU_SERVING_PORT", "value": str(SERVING_HTTP_PORT)},
        {"name": "LEGACYGPU_GRPC_PORT", "value": str(SERVING_GRPC_PORT)},
        {"name": "LEGACYGPU_DATA_DIR", "value": DATA_DIR},
        {"name": "HOME", "value": "/tmp"},
    ]
    sources = list(spec.get("modelSources") or ())
    models = list(spec.get("models") or ())
    preload = models + [entry["name"] for entry in sources if entry["name"] not in models]
    if preload:
        env.append({"name": "LEGACYGPU_PRELOAD_MODELS", "value": ",".join(preload)})
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.get("modelVolume"):
        mounts.append({"name": "models", "mountPath": MODEL_DIR, "readOnly": True})
    if sources:
        env += [
            {"name": modelsources.SOURCES_ENV, "value": modelsources.dump_sources(sources)},
            {"name": modelsources.CACHE_ENV, "value": modelsources.CACHE_DIR},
            {"name": modelsources.SOURCES_DIR_ENV, "value": modelsources.SOURCES_DIR},
        ]
        mounts.append({"name": CACHE_VOLUME, "mountPath": modelsources.CACHE_DIR})
        mounts += [{"name": name, "mountPath": path, "readOnly": True} for name, path, _ in _source_volumes(sources)]
    mounts += [{"name": name, "mountPath": f"{CLAIMS_DIR}/{claim}"} for name, claim in _batch_claims(spec)]
    resources = copy.deepcopy(dict(spec.get("resources") or {}))
    gpus = int(spec.get("gpusPerWorker", 1))
    if gpus > 0:
        device = spec.get("deviceResource") or DEFAULT_DEVICE_RESOURCE
        for section in ("limits", "requests"):
            resources.setdefault(section, {})[device] = str(gpus)
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": spec.get("image") or config.worker_image,
        "command": ["legacygpu", "worker", "start", "--kubernetes", "--backend", backend],
        "env": env,
        "ports": [
            {"name": PORT_HTTP, "containerPort": SERVING_HTTP_PORT, "protocol": "TCP"},
            {"name": PORT_GRPC, "containerPort": SERVING_GRPC_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": config.health_port, "protocol": "TCP"},
        ],
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": PORT_HTTP},
            "periodSeconds": 5,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": PORT_HTTP},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": PORT_HTTP},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": resources,
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.get("imagePullPolicy"):
        container["imagePullPolicy"] = spec["imagePullPolicy"]
    return container


def _source_volumes(sources: list[Mapping[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(volume name, mount path, volume source) for each PVC and ConfigMap the sources read, once each.

    A claim is mounted read-only; a ConfigMap is optional, so a pod whose
    ConfigMap is missing still starts and its worker says what is missing.
    """
    found: dict[tuple[str, str], tuple[str, str, dict[str, Any]]] = {}
    for entry in sources:
        uri = modelsources.parse_storage_uri(str(entry["storageUri"]))
        if uri.remote or (uri.scheme, uri.name) in found:
            continue
        name = f"src-{uri.scheme}-{len(found)}"
        if uri.scheme == "pvc":
            source: dict[str, Any] = {"persistentVolumeClaim": {"claimName": uri.name, "readOnly": True}}
        else:
            source = {"configMap": {"name": uri.name, "optional": True}}
        found[(uri.scheme, uri.name)] = (name, modelsources.mount_dir(modelsources.SOURCES_DIR, uri), source)
    return list(found.values())


def _batch_claims(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(volume name, claim) of each claim in ``spec.batchClaims``, mounted read-write for batch tasks."""
    return [(f"batch-claim-{index}", str(claim)) for index, claim in enumerate(spec.get("batchClaims") or ())]


def _apply_template(pod_spec: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        if key == "containers":
            for extra in value or ():
                target = next((c for c in pod_spec["containers"] if c["name"] == extra.get("name")), None)
                if target is None:
                    pod_spec["containers"].append(copy.deepcopy(extra))
                    continue
                for ckey, cvalue in extra.items():
                    if ckey in ("env", "volumeMounts", "ports"):
                        target[ckey] = target.get(ckey, []) + copy.deepcopy(list(cvalue))
                    else:
                        target[ckey] = copy.deepcopy(cvalue)
        elif key == "volumes":
            pod_spec["volumes"] = pod_spec.get("volumes", []) + copy.deepcopy(list(value))
        else:
            pod_spec[key] = copy.deepcopy(value)


def build_worker_pod(
    *, cluster: str, namespace: str, name: str, spec: Mapping[str, Any], config: OperatorConfig
) -> dict[str, Any]:
    """The Pod manifest for one worker of ``cluster`` (without owner references)."""
    template = spec.get("template") or {}
    template_meta = template.get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), **selector_labels(cluster), LABEL_MANAGED_BY: MANAGER}
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if spec.get("modelVolume"):
        volumes.append({"name": "models", **copy.deepcopy(dict(spec["modelVolume"]))})
    sources = list(spec.get("modelSources") or ())
    if sources:
        cache = copy.deepcopy(dict(spec.get("modelCache") or {"emptyDir": {}}))
        volumes.append({"name": CACHE_VOLUME, **cache})
        volumes += [{"name": name, **source} for name, _, source in _source_volumes(sources)]
    volumes += [{"name": name, "persistentVolumeClaim": {"claimName": claim}} for name, claim in _batch_claims(spec)]
    pod_spec: dict[str, Any] = {
        "containers": [_container(spec, config)],
        "volumes": volumes,
        "restartPolicy": "Always",
        "hostname": name,
        "subdomain": service_name(cluster),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    account = spec.get("serviceAccountName") or config.worker_service_account
    if account:
        pod_spec["serviceAccountName"] = account
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("affinity"):
        pod_spec["affinity"] = copy.deepcopy(dict(spec["affinity"]))
    elif int(spec.get("gpusPerWorker", 1)) > 0:
        pod_spec["affinity"] = _default_affinity()
    if spec.get("tolerations"):
        pod_spec["tolerations"] = copy.deepcopy(list(spec["tolerations"]))
    _apply_template(pod_spec, template.get("spec") or {})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": dict(template_meta.get("annotations") or {}),
        },
        "spec": pod_spec,
    }
    labels[LABEL_TEMPLATE_HASH] = _hash(pod)
    return pod


def _hash(pod: Mapping[str, Any]) -> str:
    """A short stable hash of a worker pod without the fields that carry its own name."""
    # Copies of the two levels that change, not of the whole pod: every reconcile pass hashes
    # the template (twice), and a deep copy was most of that.
    unnamed = {**pod, "metadata": {**pod["metadata"], "name": ""}, "spec": {**pod["spec"], "hostname": ""}}
    text = json.dumps(unnamed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def template_hash(*, cluster: str, namespace: str, spec: Mapping[str, Any], config: OperatorConfig) -> str:
    """The :data:`LABEL_TEMPLATE_HASH` a worker pod built now would carry."""
    pod = build_worker_pod(cluster=cluster, namespace=namespace, name="-", spec=spec, config=config)
    return str(pod["metadata"]["labels"][LABEL_TEMPLATE_HASH])


def build_service(*, cluster: str, namespace: str, health_port: int) -> dict[str, Any]:
    """The headless Service giving each worker a stable DNS name (<pod>.<cluster>-workers) and its ports."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(cluster),
            "namespace": namespace,
            "labels": {**selector_labels(cluster), LABEL_MANAGED_BY: MANAGER},
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": selector_labels(cluster),
            "ports": [
                {"name": PORT_HTTP, "port": SERVING_HTTP_PORT, "targetPort": PORT_HTTP, "protocol": "TCP"},
                {"name": PORT_GRPC, "port": SERVING_GRPC_PORT, "targetPort": PORT_GRPC, "protocol": "TCP"},
                {"name": "health", "port": health_port, "targetPort": "health", "protocol": "TCP"},
            ],
        },
    }
