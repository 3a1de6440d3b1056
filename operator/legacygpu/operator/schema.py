"""The one source of the CRDs: schema builders and the CustomResourceDefinition assembly.

The OpenAPI v3 schemas of both kinds are written in Python with the small
builders below (:func:`obj`, :func:`string`, :func:`integer`, ...), each of
which insists on a description, so ``kubectl explain`` has something to say
about every field. :func:`crd` wraps a kind's spec and status schemas into a
CustomResourceDefinition with the status (and optionally scale)
subresource, printer columns, short names and the ``legacygpu`` category.
:mod:`legacygpu.operator.crdgen` renders them to ``crds/``; a test fails
when the files there drift from what this code produces.

Validation is split the way the API server does it: structure, types,
enums, ranges, patterns and required fields in OpenAPI; rules that relate
fields (min ≤ max, exactly one of, immutability) as CEL
``x-kubernetes-validations`` with a ``message`` naming the field and a
``fieldPath`` pointing at it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from legacygpu.core.kube.contract import CATEGORY, GROUP, VERSION

__all__ = [
    "DNS_LABEL",
    "DNS_SUBDOMAIN",
    "Schema",
    "array",
    "boolean",
    "cel",
    "conditions_schema",
    "crd",
    "integer",
    "number",
    "obj",
    "preserved",
    "printer_column",
    "string",
    "string_map",
    "timestamp",
]

Schema = dict[str, Any]

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _described(schema: Schema, description: str, rules: Iterable[Schema] = ()) -> Schema:
    """``schema`` with its description first and its CEL ``rules`` (if any) last."""
    if not description.strip():
        raise ValueError("every schema field needs a description")
    rules = list(rules)
    if rules:
        schema = {**schema, "x-kubernetes-validations": rules}
    return {"description": description.strip(), **schema}


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> Schema:
    """One ``x-kubernetes-validations`` entry."""
    entry: Schema = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def obj(
    description: str,
    properties: Mapping[str, Schema],
    *,
    required: Sequence[str] = (),
    rules: Iterable[Schema] = (),
) -> Schema:
    """An object with known properties (unknown ones are pruned by the API server)."""
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        missing = [name for name in required if name not in properties]
        if missing:
            raise ValueError(f"required fields {missing} are not among the properties")
        schema["required"] = list(required)
    return _described(schema, description, rules)


def string(
    description: str,
    *,
    enum: Sequence[str] | None = None,
    default: str | None = None,
    pattern: str | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    fmt: str | None = None,
    rules: Iterable[Schema] = (),
) -> Schema:
    schema: Schema = {"type": "string"}
    if enum is not None:
        schema["enum"] = list(enum)
    if default is not None:
        schema["default"] = default
    if pattern is not None:
        schema["pattern"] = pattern
    if min_length is not None:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    if fmt is not None:
        schema["format"] = fmt
    return _described(schema, description, rules)


def timestamp(description: str) -> Schema:
    return string(description, fmt="date-time")


def integer(
    description: str,
    *,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    fmt: str | None = None,
) -> Schema:
    schema: Schema = {"type": "integer"}
    if fmt is not None:
        schema["format"] = fmt
    if default is not None:
        schema["default"] = default
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return _described(schema, description)


def number(description: str, *, minimum: float | None = None) -> Schema:
    schema: Schema = {"type": "number"}
    if minimum is not None:
        schema["minimum"] = minimum
    return _described(schema, description)


def boolean(description: str, *, default: bool | None = None, rules: Iterable[Schema] = ()) -> Schema:
    schema: Schema = {"type": "boolean"}
    if default is not None:
        schema["default"] = default
    return _described(schema, description, rules)


def array(
    description: str,
    items: Schema,
    *,
    min_items: int | None = None,
    max_items: int | None = None,
    list_type: str | None = None,
    map_keys: Sequence[str] | None = None,
) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if min_items is not None:
        schema["minItems"] = min_items
    if max_items is not None:
        schema["maxItems"] = max_items
    if list_type is not None:
        schema["x-kubernetes-list-type"] = list_type
    if map_keys is not None:
        schema["x-kubernetes-list-map-keys"] = list(map_keys)
    return _described(schema, description)


def string_map(description: str, *, max_properties: int | None = None) -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
    if max_properties is not None:
        schema["maxProperties"] = max_properties
    return _described(schema, description)


def preserved(description: str, *, typed: str | None = "object") -> Schema:
    """A field kept as given (a Kubernetes type the operator passes through, or free-form data)."""
    schema: Schema = {"x-kubernetes-preserve-unknown-fields": True}
    if typed is not None:
        schema = {"type": typed, **schema}
    return _described(schema, description)


def conditions_schema(description: str) -> Schema:
    """``metav1.Condition`` list, keyed by type, as ``kubectl wait --for=condition=...`` expects."""
    condition = obj(
        "One aspect of the object's current state.",
        {
            "type": string("Condition type in CamelCase, e.g. Ready.", max_length=316),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string(
                "Machine-readable CamelCase reason for the last transition.",
                max_length=1024,
                pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            ),
            "message": string("Human-readable details about the last transition.", max_length=32768),
            "lastTransitionTime": timestamp("When the status last changed."),
            "observedGeneration": integer(
                "The .metadata.generation the condition was computed from.", minimum=0, fmt="int64"
            ),
        },
        required=["type", "status", "lastTransitionTime", "reason", "message"],
    )
    return array(description, condition, max_items=16, list_type="map", map_keys=["type"])


def printer_column(
    name: str, json_path: str, type_: str, description: str, *, priority: int = 0
) -> Schema:
    column: Schema = {"name": name, "type": type_, "jsonPath": json_path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: Sequence[str],
    description: str,
    spec: Schema,
    status: Schema,
    columns: Sequence[Schema],
    scale: Mapping[str, str] | None = None,
    selectable_fields: Sequence[str] = (),
) -> Schema:
    """A namespaced, single-version CustomResourceDefinition of ``legacygpu.io``.

    ``selectable_fields`` are JSON paths clients may use in a ``fieldSelector``
    (``.status.workerRef.pod`` lets a worker watch only its own tasks).
    """
    subresources: Schema = {"status": {}}
    if scale is not None:
        subresources["scale"] = dict(scale)
    root = obj(
        description,
        {
            "apiVersion": string("The versioned schema of this representation of an object."),
            "kind": string("The REST resource this object represents."),
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        required=["spec"],
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "legacygpu"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": list(columns),
                    **({"selectableFields": [{"jsonPath": p} for p in selectable_fields]} if selectable_fields else {}),
                }
            ],
        },
    }
