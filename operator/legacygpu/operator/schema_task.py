"""The InferenceTask schema: one inference job and what became of it.

Enumerations come from the shared core, never retyped here: the phases and
reasons from :mod:`legacygpu.core.tasks`, the tensor datatypes from
:mod:`legacygpu.core.modelcards`. What the schema cannot say (a tensor's
shape against its data length, the model's own inputs) the operator and the
worker check, ending the task ``Failed`` with reason ``InvalidInput``.
"""

from __future__ import annotations

from legacygpu.core.kube.contract import TASK_KIND, TASK_PLURAL, WORKER_FIELD
from legacygpu.core.modelcards import DATATYPES
from legacygpu.core.tasks import Phase, Reason
from legacygpu.operator.schema import (
    DNS_SUBDOMAIN,
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
    timestamp,
)
from legacygpu.operator.schema_batch import batch_spec_schema, batch_status_fields

__all__ = ["MODEL_NAME_PATTERN", "task_crd", "task_spec_schema", "task_status_schema"]

MODEL_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
"""The model repository's naming rule (legacygpu.core.modelcards)."""

INPUTS_URI_PATTERN = r"^(configmap://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[-._a-zA-Z0-9]+|https?://\S+)$"


def _tensor() -> Schema:
    return obj(
        "One input tensor in the Open Inference Protocol (v2) form. An image is a BYTES tensor "
        "of shape [1] whose only element is the base64 of the image file.",
        {
            "name": string("The model input this tensor feeds.", min_length=1, max_length=253),
            "shape": array(
                "Dimensions, outermost first; their product is the number of elements in data.",
                integer("One dimension.", minimum=0, fmt="int64"),
                max_items=16,
            ),
            "datatype": string("Element type of data.", enum=list(DATATYPES)),
            "data": array(
                "The elements, flattened in row-major order: numbers (or true/false for BOOL), "
                "or strings for BYTES.",
                preserved("One element.", typed=None),
                max_items=4_194_304,
            ),
            "parameters": preserved("Optional per-tensor parameters passed to the model's pre-processing."),
        },
        required=["name", "shape", "datatype", "data"],
    )


def task_spec_schema() -> Schema:
    return obj(
        "What to run and under which limits. clusterRef and model cannot change after creation; "
        "set cancel to stop the task.",
        {
            "clusterRef": string(
                "Name of the InferenceCluster, in the task's namespace, whose workers run the task.",
                pattern=DNS_SUBDOMAIN,
                min_length=1,
                max_length=253,
            ),
            "model": string(
                "Model name in the workers' model repository, e.g. digits.",
                pattern=MODEL_NAME_PATTERN,
                min_length=1,
                max_length=63,
            ),
            "inputs": array(
                "Inline input tensors. Exactly one of inputs, inputsUri and batch is set.",
                _tensor(),
                min_items=1,
                max_items=64,
            ),
            "inputsUri": string(
                "Where the worker reads the inputs from instead: configmap://<name>/<key> (a "
                "ConfigMap in the task's namespace whose key holds a JSON list of tensors, or an "
                "Open Inference Protocol request with an inputs list), or an http(s) URL serving "
                "the same JSON.",
                pattern=INPUTS_URI_PATTERN,
                max_length=2048,
            ),
            "batch": batch_spec_schema(_tensor()),
            "parameters": preserved("Free-form parameters passed to the model's pre- and post-processing."),
            "priority": integer(
                "Scheduling priority; higher runs first, ties go to the older task.",
                default=0,
                minimum=-1000,
                maximum=1000,
                fmt="int32",
            ),
            "timeoutSeconds": integer(
                "Seconds from creation after which an unfinished task ends Failed with reason "
                "DeadlineExceeded (time in the queue counts).",
                default=600,
                minimum=1,
                maximum=604800,
                fmt="int64",
            ),
            "maxRetries": integer(
                "Retries after the first attempt when a worker is lost or fails in a retryable way; "
                "each retry waits an exponential backoff with jitter.",
                default=3,
                minimum=0,
                maximum=20,
                fmt="int32",
            ),
            "requirements": obj(
                "What a worker must offer to take the task; workers that fall short are never chosen.",
                {
                    "minVramMiB": integer(
                        "Least GPU memory, in MiB, the worker's device must have.",
                        minimum=0,
                        maximum=1_048_576,
                        fmt="int64",
                    ),
                    "gpuFamily": string(
                        "GPU family the worker's device must belong to, e.g. polaris (case-insensitive).",
                        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
                        max_length=63,
                    ),
                },
            ),
            "ttlSecondsAfterFinished": integer(
                "Seconds after the task finishes (Succeeded, Failed or Cancelled) when it is deleted; "
                "unset keeps it.",
                minimum=0,
                maximum=31_536_000,
                fmt="int64",
            ),
            "cancel": boolean(
                "Set to true to cancel the task; a running attempt's result is then discarded. "
                "Cannot be set back to false.",
                default=False,
                rules=[cel("self || !oldSelf", "cancel cannot be set back to false once the task is cancelled")],
            ),
        },
        required=["clusterRef", "model"],
        rules=[
            cel(
                "(has(self.inputs) ? 1 : 0) + (has(self.inputsUri) ? 1 : 0) + (has(self.batch) ? 1 : 0) == 1",
                "exactly one of spec.inputs, spec.inputsUri and spec.batch must be set",
                reason="FieldValueRequired",
            ),
            cel(
                "self.clusterRef == oldSelf.clusterRef",
                "spec.clusterRef is immutable",
                field_path=".clusterRef",
            ),
            cel("self.model == oldSelf.model", "spec.model is immutable", field_path=".model"),
        ],
    )


def task_status_schema() -> Schema:
    return obj(
        "What happened to the task, written by the operator (Queued, Scheduled, retries, deadlines) "
        "and by the worker that runs it (Running, Succeeded, Failed).",
        {
            "phase": string(
                "Pending → Queued → Scheduled → Running → Succeeded | Failed | Cancelled.",
                enum=[p.value for p in Phase],
            ),
            "reason": string("Why the task is in its phase (CamelCase).", enum=[r.value for r in Reason]),
            "message": string("Human-readable details, e.g. the model loader's error.", max_length=32768),
            "attempts": integer("Attempts assigned to a worker so far.", minimum=0, fmt="int32"),
            "workerRef": obj(
                "The worker running the current attempt.",
                {
                    "pod": string("Name of the worker pod."),
                    "node": string("Node the worker pod runs on."),
                },
            ),
            "queuedTime": timestamp("When the task was accepted into the queue."),
            "scheduledTime": timestamp("When the current attempt was assigned to a worker."),
            "startTime": timestamp("When the worker started the current attempt."),
            "completionTime": timestamp("When the task reached its final phase."),
            "retryAfter": timestamp("Earliest time of the next attempt after a retryable failure."),
            "latency": obj(
                "Time spent, in seconds, from the timestamps above.",
                {
                    "queueSeconds": number("Creation to the start of the last attempt.", minimum=0),
                    "runSeconds": number("Start of the last attempt to completion.", minimum=0),
                    "totalSeconds": number("Creation to completion.", minimum=0),
                    "computeSeconds": number(
                        "The model's own time in the last attempt, as the worker measured it.", minimum=0
                    ),
                },
            ),
            "history": array(
                "Every attempt so far, oldest first (the same record the local backend keeps).",
                obj(
                    "One attempt.",
                    {
                        "attempt": integer("Its number, from 1.", minimum=1, fmt="int32"),
                        "worker": string("The worker pod that ran it."),
                        "startTime": timestamp("When the worker started it."),
                        "outcome": string("How it ended (a reason); absent while it runs."),
                        "completionTime": timestamp("When it ended."),
                        "reported": boolean("True when the worker itself reported the outcome."),
                    },
                ),
            ),
            "result": preserved(
                "The result: model, outputs (Open Inference Protocol tensors) and, for classifiers, "
                "top_k labels with scores. Outputs over the inline limit are left out here and stored "
                "at resultRef."
            ),
            "resultRef": string("configmap://<name>/<key> holding the full result when it is too large inline."),
            **batch_status_fields(),
            "conditions": conditions_schema("Latest observations of the task's state."),
            "observedGeneration": integer("The .metadata.generation last acted on.", minimum=0, fmt="int64"),
        },
    )


def task_crd() -> Schema:
    return crd(
        kind=TASK_KIND,
        plural=TASK_PLURAL,
        singular="inferencetask",
        short_names=["itask"],
        description="An InferenceTask runs one model on given inputs on a worker of an InferenceCluster "
        "and records the result in its status.",
        spec=task_spec_schema(),
        status=task_status_schema(),
        columns=[
            printer_column("Cluster", ".spec.clusterRef", "string", "The InferenceCluster.", priority=1),
            printer_column("Model", ".spec.model", "string", "Model to run."),
            printer_column("Phase", ".status.phase", "string", "Where the task is in its life."),
            printer_column("Worker", ".status.workerRef.pod", "string", "Worker pod of the current attempt."),
            printer_column("Attempts", ".status.attempts", "integer", "Attempts so far."),
            printer_column("Progress", ".status.progress.summary", "string", "Batch tasks: inputs done/total."),
            printer_column("Failed", ".status.progress.failed", "integer", "Batch tasks: inputs failed.",
                           priority=1),
            printer_column("Reason", ".status.reason", "string", "Why it is in its phase.", priority=1),
            printer_column("Age", ".metadata.creationTimestamp", "date", "Time since creation."),
        ],
        selectable_fields=[f".{WORKER_FIELD}", ".spec.clusterRef"],
    )
