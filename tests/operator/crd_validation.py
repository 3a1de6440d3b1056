"""Validate a custom resource offline against the generated CRD, as the API server would.

Three steps, in the API server's order: defaults from the schema are applied;
the OpenAPI schema is checked with jsonschema (unknown fields rejected, as
``kubectl apply`` does with strict field validation); the CEL
``x-kubernetes-validations`` are evaluated with cel-python (transition rules
only when an old object is given). Each problem is reported as
``<field path>: <message>``, the field path in the API server's dotted form.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from legacygpu.operator.crdgen import all_crds

_PASSTHROUGH = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")


def schema_for(kind: str) -> dict[str, Any]:
    for crd in all_crds():
        if crd["spec"]["names"]["kind"] == kind:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise KeyError(kind)


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema copy in which objects with known properties refuse unknown ones."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if not any(schema.get(flag) for flag in _PASSTHROUGH):
            out["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        out["items"] = _strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"])
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def _dotted(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def _cel(schema: dict[str, Any], new: Any, old: Any, path: str, problems: list[str], env: celpy.Environment) -> None:
    for rule in schema.get("x-kubernetes-validations") or ():
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": celpy.json_to_cel(new)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = env.program(env.compile(rule["rule"])).evaluate(activation)
        if not bool(result):
            where = path + rule.get("fieldPath", "")
            problems.append(f"{where}: {rule['message']}")
    if isinstance(new, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in new:
                child_old = old.get(name) if isinstance(old, dict) else None
                _cel(sub, new[name], child_old, f"{path}.{name}" if path else name, problems, env)
    elif isinstance(new, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(new):
            child_old = old[index] if isinstance(old, list) and index < len(old) else None
            _cel(schema["items"], item, child_old, f"{path}[{index}]", problems, env)


def validate(manifest: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Every problem the API server would report for creating (or updating from ``old``) ``manifest``."""
    schema = schema_for(manifest["kind"])
    new = apply_defaults(schema, copy.deepcopy(manifest))
    previous = apply_defaults(schema, copy.deepcopy(old)) if old is not None else None
    validator = jsonschema.Draft7Validator(_strict(schema))
    problems = [f"{_dotted(e.absolute_path)}: {e.message}" for e in validator.iter_errors(new)]
    if not problems:
        _cel(schema, new, previous, "", problems, celpy.Environment())
    return problems
