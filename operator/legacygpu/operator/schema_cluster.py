"""The InferenceCluster schema: a pool of worker pods on legacy-GPU nodes.

The scheduling strategies offered are exactly those of
:mod:`legacygpu.core.scheduling`; the backends are those of the worker
(``legacygpu.worker.backends.BACKENDS``, checked equal by a test since the
operator does not import the worker). Pod-level Kubernetes types
(affinity, tolerations, resources, volumes) are passed through as given.
"""

from __future__ import annotations

from legacygpu.core.kube.batch import CLAIMS_DIR
from legacygpu.core.kube.contract import CLUSTER_KIND, CLUSTER_PLURAL, DEFAULT_DEVICE_RESOURCE
from legacygpu.core.modelsources import CACHE_DIR
from legacygpu.core.scheduling import STRATEGIES
from legacygpu.operator.conditions import CLUSTER_CONDITIONS
from legacygpu.operator.schema import (
    Schema,
    array,
    boolean,
    cel,
    conditions_schema,
    crd,
    integer,
    number,
    obj,
    preserved,
    printer_column,
    string,
    string_map,
)
from legacygpu.operator.schema_task import MODEL_NAME_PATTERN

__all__ = ["BACKENDS", "DEFAULT_STRATEGY", "cluster_crd", "cluster_spec_schema", "cluster_status_schema"]

BACKENDS = ("onnxruntime", "opencl", "auto")
DEFAULT_STRATEGY = "least-loaded"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""An RFC 1123 subdomain: what Kubernetes accepts as the name of a ServiceAccount (and most objects)."""
RESOURCE_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


def cluster_spec_schema() -> Schema:
    return obj(
        "The desired pool of workers.",
        {
            "replicas": integer(
                "Number of worker pods wanted (kubectl scale changes it).",
                default=1,
                minimum=0,
                maximum=1024,
                fmt="int32",
            ),
            "minReplicas": integer(
                "Lower bound for replicas.", default=0, minimum=0, maximum=1024, fmt="int32"
            ),
            "maxReplicas": integer(
                "Upper bound for replicas.", default=64, minimum=0, maximum=1024, fmt="int32"
            ),
            "autoscaling": obj(
                "autoscaling: the operator sets replicas from the load (tasks waiting and in flight); "
                "+optional: without it replicas is set by hand, kubectl scale or an HPA through /scale.",
                {
                    "minReplicas": integer("minReplicas: fewest workers.", default=1, minimum=0, maximum=1024,
                                           fmt="int32"),
                    "maxReplicas": integer("maxReplicas: most workers.", minimum=1, maximum=1024, fmt="int32"),
                    "targetLoadPerWorker": integer(
                        "targetLoadPerWorker: tasks waiting plus in flight one worker should carry.",
                        default=4, minimum=1, maximum=100000, fmt="int32",
                    ),
                    "scaleDownDelaySeconds": integer(
                        "scaleDownDelaySeconds: how long fewer workers must have sufficed before scaling down.",
                        default=60, minimum=0, maximum=86400, fmt="int32",
                    ),
                },
                required=["maxReplicas"],
                rules=[
                    cel(
                        "self.minReplicas <= self.maxReplicas",
                        "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas",
                        field_path=".minReplicas",
                    )
                ],
            ),
            "gpusPerWorker": integer(
                "Devices each worker pod requests from deviceResource; 0 runs CPU-only workers "
                "with no device request and no GPU node affinity.",
                default=1,
                minimum=0,
                maximum=16,
                fmt="int32",
            ),
            "deviceResource": string(
                "Extended resource name the node agent advertises for legacy GPUs.",
                default=DEFAULT_DEVICE_RESOURCE,
                pattern=RESOURCE_NAME_PATTERN,
                max_length=253,
            ),
            "backend": string(
                "Inference backend of the workers: opencl (the project's OpenCL executor), onnxruntime "
                "(CPU), or auto (opencl when a GPU is visible).",
                enum=list(BACKENDS),
                default="auto",
            ),
            "models": array(
                "Models the workers load at start so the first task does not wait for loading.",
                string("A model name in the model repository.", pattern=MODEL_NAME_PATTERN, max_length=63),
                max_items=64,
                list_type="set",
            ),
            "modelSources": array(
                "modelSources: models the workers fetch at start from a storageUri (not in the image's "
                "repository), loaded like spec.models; +optional.",
                _model_source(),
                max_items=64,
                list_type="map",
                map_keys=["name"],
            ),
            "modelCache": preserved(
                "modelCache: a core/v1 volume source (e.g. {persistentVolumeClaim: {claimName: cache}}) "
                f"mounted at {CACHE_DIR} where workers keep the models of modelSources, by sha256; "
                "+optional: unset uses an emptyDir (kept across container restarts, not pod replacements)."
            ),
            "batchClaims": array(
                "batchClaims: PersistentVolumeClaims every worker mounts read-write at "
                f"{CLAIMS_DIR}/<claim>, for batch tasks whose spec.batch.source or output is "
                "pvc://<claim>/<folder>; +optional. Listed here, not added per batch task, so a batch "
                "never rolls the worker pods.",
                string("A claim name in the cluster's namespace.", pattern=DNS_SUBDOMAIN_PATTERN, max_length=253),
                max_items=16,
                list_type="set",
            ),
            "schedulingStrategy": string(
                "How the operator picks a worker for a task: round-robin, least-loaded (smallest share "
                "of capacity in use), capability-match (least VRAM that meets the task), adaptive "
                "(recent latency times load).",
                enum=sorted(STRATEGIES),
                default=DEFAULT_STRATEGY,
            ),
            "tasksPerWorker": integer(
                "Tasks a worker holds at once: one running, the rest assigned and waiting on it.",
                default=2,
                minimum=1,
                maximum=64,
                fmt="int32",
            ),
            "suspend": boolean(
                "Set to true to remove all worker pods and keep the cluster; queued tasks wait.",
                default=False,
            ),
            "image": string(
                "Worker container image; defaults to the operator's --worker-image.", min_length=1, max_length=1024
            ),
            "imagePullPolicy": string(
                "When the kubelet pulls the image.", enum=["Always", "IfNotPresent", "Never"]
            ),
            "serviceAccountName": string(
                "ServiceAccount of the worker pods (needs to watch and patch InferenceTasks).",
                pattern=DNS_SUBDOMAIN_PATTERN,
                max_length=253,
            ),
            "modelVolume": preserved(
                "A core/v1 volume source (e.g. {persistentVolumeClaim: {claimName: models}}) mounted "
                "read-only at /var/lib/legacygpu/models as the model repository; unset uses the image's."
            ),
            "nodeSelector": string_map("Node labels a worker pod's node must have.", max_properties=64),
            "affinity": preserved(
                "A core/v1 Affinity for worker pods; replaces the default node affinity to nodes "
                "labelled legacygpu.io/gpu.present=true."
            ),
            "tolerations": array(
                "core/v1 Tolerations for worker pods.", preserved("One toleration."), max_items=64
            ),
            "resources": preserved(
                "core/v1 ResourceRequirements (cpu, memory) of the worker container; the device "
                "request is added by the operator."
            ),
            "template": obj(
                "Overrides merged into the generated worker pods.",
                {
                    "metadata": obj(
                        "Extra pod metadata.",
                        {
                            "labels": string_map("Extra pod labels.", max_properties=64),
                            "annotations": string_map("Extra pod annotations.", max_properties=64),
                        },
                    ),
                    "spec": preserved(
                        "core/v1 PodSpec fields set on top of the generated spec; a container named "
                        "worker is merged into the generated worker container (env and volumeMounts "
                        "appended)."
                    ),
                },
            ),
        },
        rules=[
            cel(
                "self.minReplicas <= self.maxReplicas",
                "spec.minReplicas must be less than or equal to spec.maxReplicas",
                field_path=".minReplicas",
            ),
            cel(
                "!has(self.autoscaling) || self.autoscaling.maxReplicas <= self.maxReplicas",
                "spec.autoscaling.maxReplicas must not exceed spec.maxReplicas",
                field_path=".autoscaling.maxReplicas",
            ),
            cel(
                "self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas",
                "spec.replicas must be between spec.minReplicas and spec.maxReplicas",
                field_path=".replicas",
            ),
        ],
    )


def _model_source() -> Schema:
    uri_rule = r"^(pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+|configmap://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+|https?://[^/].*)$"
    return obj(
        "One model fetched from a storageUri.",
        {
            "name": string(
                "name: the model's name in the repository (what tasks and /v2 requests use).",
                pattern=MODEL_NAME_PATTERN,
                max_length=63,
            ),
            "storageUri": string(
                "storageUri: where the model file is: pvc://<claim>/<path> (the claim is mounted read-only), "
                "configmap://<name>/<key> (a small model in binaryData), or http(s)://... (downloaded; "
                "needs sha256).",
                min_length=1,
                max_length=2048,
            ),
            "sha256": string(
                "sha256: the file's SHA-256 in 64 lowercase hex digits; required for http(s), checked when "
                "given; the cache is keyed by it.",
                pattern=r"^[0-9a-f]{64}$",
            ),
            "card": preserved(
                "card: model card fields (inputs, outputs, postprocess, max_batch_size... as in card.yaml); "
                "+optional: unset uses the card of the image's model of the same name, else a generic card."
            ),
        },
        required=["name", "storageUri"],
        rules=[
            cel(
                f"self.storageUri.matches('{uri_rule}')",
                "storageUri must be pvc://<claim>/<path>, configmap://<name>/<key>, http://... or https://...",
                field_path=".storageUri",
            ),
            cel(
                "!self.storageUri.matches('^https?://') || has(self.sha256)",
                "sha256 is required when storageUri is http:// or https://",
                field_path=".sha256",
            ),
        ],
    )


def _worker_summary() -> Schema:
    return obj(
        "One worker pod as the operator last saw it.",
        {
            "name": string("Pod name."),
            "node": string("Node it runs on."),
            "phase": string("Pod phase."),
            "ready": boolean("Whether the pod is Ready and takes tasks."),
            "assignedTasks": integer("Tasks scheduled to or running on it.", minimum=0),
            "completed": integer("Tasks it finished since it started.", minimum=0),
            "failed": integer("Tasks that failed on it since it started.", minimum=0),
            "recentLatencyMs": number("Moving average of its recent task latency.", minimum=0),
            "gpuFamily": string("GPU family of its device."),
            "vramMiB": integer("Memory of its device in MiB.", minimum=0),
            "backend": string("Backend it runs."),
        },
    )


def cluster_status_schema() -> Schema:
    return obj(
        "The observed pool, written by the operator.",
        {
            "desiredWorkers": integer("Worker pods wanted now (0 while suspended).", minimum=0),
            "autoscaling": obj(
                "What the autoscaler remembers between passes (with spec.autoscaling).",
                {"lowSince": string("When fewer workers first sufficed (the scale-down delay counts from it).",
                                    fmt="date-time")},
            ),
            "replicas": integer("Worker pods that exist and are not terminating.", minimum=0),
            "readyWorkers": integer("Worker pods that are Ready.", minimum=0),
            "devices": integer("Devices held by ready workers (readyWorkers times gpusPerWorker).", minimum=0),
            "queuedTasks": integer("Tasks of this cluster waiting for a worker.", minimum=0),
            "runningTasks": integer("Tasks of this cluster scheduled to or running on a worker.", minimum=0),
            "selector": string("Label selector of the worker pods (for the scale subresource)."),
            "workers": array("Per-worker summary.", _worker_summary(), max_items=1024),
            "conditions": conditions_schema(
                "Conditions: " + ", ".join(CLUSTER_CONDITIONS) + "."
            ),
            "observedGeneration": integer("The .metadata.generation last acted on.", minimum=0, fmt="int64"),
        },
    )


def cluster_crd() -> Schema:
    return crd(
        kind=CLUSTER_KIND,
        plural=CLUSTER_PLURAL,
        singular="inferencecluster",
        short_names=["icl"],
        description="An InferenceCluster is a pool of worker pods on legacy-GPU nodes that run "
        "InferenceTasks.",
        spec=cluster_spec_schema(),
        status=cluster_status_schema(),
        columns=[
            printer_column("Ready", ".status.readyWorkers", "integer", "Ready worker pods."),
            printer_column("Desired", ".status.desiredWorkers", "integer", "Wanted worker pods."),
            printer_column("Queued", ".status.queuedTasks", "integer", "Tasks waiting for a worker."),
            printer_column("Strategy", ".spec.schedulingStrategy", "string", "Scheduling strategy.", priority=1),
            printer_column("Backend", ".spec.backend", "string", "Inference backend.", priority=1),
            printer_column("Suspended", ".spec.suspend", "boolean", "Whether workers are removed."),
            printer_column("Age", ".metadata.creationTimestamp", "date", "Time since creation."),
        ],
        scale={
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    )
