"""The InferenceTask's batch fields: ``spec.batch`` and ``status.progress``/``failures``/``output``.

A batch task carries many inputs in one object; the operator shards it into
child InferenceTasks (see :mod:`legacygpu.operator.batch`), which the
workers run as ordinary tasks. The fields here are the contract:

* ``spec.batch.inputs`` (an inline list of keyed inputs) or
  ``spec.batch.source`` (``configmap://<name>``: every key of the ConfigMap
  is one input file; an ``http(s)://`` URL serving a JSON list of URLs,
  or of ``{key, url}`` objects, one input file each; or
  ``pvc://<claim>/<folder>``: every input file of the folder, in name order,
  on a claim the cluster mounts, ``spec.batchClaims``). A file is decoded by
  its extension: an image (``.png``/``.jpg``/``.jpeg``/``.bmp``/``.gif``)
  becomes a BYTES tensor named ``inputName``; ``.npy`` becomes a tensor of
  its own dtype and shape; ``.json`` is a list of tensors or an Open
  Inference Protocol request;
* ``shardSize`` inputs per shard task; ``maxFailedInputs`` (unset: none
  fails the job) is how many inputs may fail before the job ends ``Failed``;
* ``output``: ``configmap://<prefix>``: shard ``n`` writes ConfigMap
  ``<prefix>-<n>`` (default prefix ``results-<task>``), one ``<key>.json``
  entry per input (its result, or ``{"error": {reason, message}}``); or
  ``pvc://<claim>/<folder>``: one file ``<key>.json`` per input there;
* ``shard`` is set by the operator on the shard tasks it creates, never by users.
"""

from __future__ import annotations

from legacygpu.core.kube.batch import OBJECT_NAME
from legacygpu.operator.schema import DNS_SUBDOMAIN, Schema, array, boolean, cel, integer, obj, string

__all__ = [
    "BATCH_SOURCE_PATTERN",
    "INPUT_KEY_PATTERN",
    "OUTPUT_PATTERN",
    "batch_spec_schema",
    "batch_status_fields",
]

INPUT_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
"""What a ConfigMap key may be (an input's key names its result entry)."""

_PVC = rf"pvc://{OBJECT_NAME}(/[^/\s]+)*/?"
BATCH_SOURCE_PATTERN = rf"^(configmap://{OBJECT_NAME}|https?://\S+|{_PVC})$"
OUTPUT_PATTERN = rf"^(configmap://{OBJECT_NAME}|{_PVC})$"
_PVC_INSIDE = "!self.startsWith('pvc://') || !self.matches('/[.][.]?(/|$)')"
"""A pvc:// path never leaves its claim: no '.' or '..' segment."""


def batch_spec_schema(tensor: Schema) -> Schema:
    """``spec.batch``; ``tensor`` is the task's own input tensor schema."""
    return obj(
        "Many inputs in one task: the operator splits them into shards of shardSize inputs, runs "
        "each shard on a worker as a child task, reports progress in status.progress and writes one "
        "result per input to output. Exactly one of inputs and source is set.",
        {
            "inputs": array(
                "Inline inputs, each with its key and its tensors.",
                obj(
                    "One input.",
                    {
                        "key": string(
                            "Unique name of the input; its result is stored under <key>.json.",
                            pattern=INPUT_KEY_PATTERN, min_length=1, max_length=200,
                        ),
                        "inputs": array("The input's tensors.", tensor, min_items=1, max_items=64),
                    },
                    required=["key", "inputs"],
                ),
                min_items=1,
                max_items=10_000,
            ),
            "source": string(
                "Where the inputs are: configmap://<name> (every data and binaryData key of the "
                "ConfigMap, in the task's namespace, is one input file), an http(s) URL serving a "
                "JSON list of file URLs (or of {key, url} objects), or pvc://<claim>/<folder> (every "
                "image, .npy and .json file of the folder, in name order; the claim must be in the "
                "cluster's spec.batchClaims). Files are decoded by extension: images become a BYTES "
                "tensor named inputName, .npy a tensor of its dtype and shape, .json a tensor, a list "
                "of tensors or an Open Inference Protocol request.",
                pattern=BATCH_SOURCE_PATTERN,
                max_length=2048,
                rules=[cel(_PVC_INSIDE, "a pvc:// path must stay inside its claim (no '.' or '..' segments)")],
            ),
            "inputName": string(
                "The model input that image and .npy files feed.", default="input", min_length=1, max_length=253
            ),
            "shardSize": integer(
                "Inputs per shard; each shard is one child task on one worker, and its progress and "
                "results are written once, when it ends.",
                default=25, minimum=1, maximum=1000, fmt="int32",
            ),
            "maxFailedInputs": integer(
                "How many inputs may fail before the job ends Failed (InputsFailed) and its unfinished "
                "shards are cancelled; unset: failed inputs are recorded and the job still succeeds.",
                minimum=0, fmt="int32",
            ),
            "output": string(
                "configmap://<prefix>: shard n writes the ConfigMap <prefix>-<n> (default prefix "
                "results-<task name>), one <key>.json entry per input; pvc://<claim>/<folder>: one file "
                "<key>.json per input in that folder (made if missing; the claim must be in the "
                "cluster's spec.batchClaims).",
                pattern=OUTPUT_PATTERN,
                max_length=2048,
                rules=[cel(_PVC_INSIDE, "a pvc:// path must stay inside its claim (no '.' or '..' segments)")],
            ),
            "shard": obj(
                "Set by the operator on the shard tasks it creates (never by users): which part of "
                "the parent's inputs this task runs.",
                {
                    "parent": string("Name of the batch task this shard belongs to.", pattern=DNS_SUBDOMAIN,
                                     max_length=253),
                    "index": integer("Shard number, from 0.", minimum=0, fmt="int32"),
                    "listing": boolean("The listing task of a pvc:// source: lists the folder's input "
                                       "files instead of running the model."),
                    "keys": array(
                        "Keys of the source's inputs this shard runs (with source).",
                        string("One key.", max_length=253), max_items=1000,
                    ),
                },
                required=["parent", "index"],
            ),
        },
        rules=[
            cel("has(self.inputs) != has(self.source)", "exactly one of spec.batch.inputs and spec.batch.source "
                "must be set", reason="FieldValueRequired"),
        ],
    )


def batch_status_fields() -> dict[str, Schema]:
    """The status fields of a batch task (merged into the task's status schema)."""
    return {
        "progress": obj(
            "How far a batch task is, counted per shard when it ends (never per input).",
            {
                "total": integer("Inputs in the batch.", minimum=0, fmt="int64"),
                "completed": integer("Inputs with a result.", minimum=0, fmt="int64"),
                "failed": integer("Inputs that failed (see failures).", minimum=0, fmt="int64"),
                "shards": integer("Shard tasks.", minimum=0, fmt="int32"),
                "shardsFinished": integer("Shard tasks that ended.", minimum=0, fmt="int32"),
                "summary": string("completed/total, as the Progress column shows it.", max_length=64),
            },
        ),
        "failures": array(
            "The first failed inputs, with why (all of them are in the output).",
            obj(
                "One failed input.",
                {
                    "key": string("The input's key."),
                    "reason": string("Why it failed (CamelCase)."),
                    "message": string("Details.", max_length=1024),
                },
            ),
            max_items=100,
        ),
        "output": obj(
            "Where a batch task's results are.",
            {
                "configMaps": array(
                    "The result ConfigMaps, one per shard, in shard order.", string("A name."), max_items=10_000
                ),
                "uri": string("pvc://<claim>/<folder> holding one <key>.json per input (a pvc:// output).",
                              max_length=2048),
            },
        ),
    }
