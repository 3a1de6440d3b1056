"""values.yaml, values.schema.json and the chart's early failures agree with each other.

The schema is checked the way helm uses it (a real ``helm template`` refuses a typo'd key,
a wrong enum, a wrong type) and against values.yaml itself: every key of values.yaml has
a schema entry and a ``# --`` description, every object in the schema refuses unknown
keys except the free-form maps (labels, annotations) and Kubernetes-typed values
(resources, affinity...), which the API server validates. Conflicting values make
``helm template`` fail with a message that names the fix.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from .helmchart import CHART, HelmError, render

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Objects whose keys are the user's (maps) or Kubernetes' (typed by the API server).
OPEN_OBJECTS = {"commonLabels", "annotations", "podAnnotations", "podLabels", "nodeSelector", "labels", "affinity",
                "resources", "securityContext", "podSecurityContext", "livenessProbe", "readinessProbe",
                "modelVolume", "updateStrategy", "global"}  # fmt: skip


def _walk(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems between a values mapping and its schema node."""
    problems = []
    props = schema.get("properties", {})
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        if key not in props:
            problems.append(f"{here}: in values.yaml but not in values.schema.json")
            continue
        if isinstance(value, dict) and key not in OPEN_OBJECTS:
            problems += _walk(value, props[key], here)
    for key in props:
        if key not in values:
            problems.append(f"{path}.{key}: in values.schema.json but not in values.yaml")
    if schema.get("additionalProperties") is not False and path.rsplit(".", 1)[-1] not in OPEN_OBJECTS:
        problems.append(f"{path or '<root>'}: the schema does not refuse unknown keys")
    return problems


def test_schema_mirrors_values_yaml_and_refuses_unknown_keys() -> None:
    assert _walk(VALUES, SCHEMA) == []


def test_default_values_satisfy_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA)


def test_every_value_has_a_helm_docs_description() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    # Documented as a whole: their insides are Kubernetes' or the user's (maps, typed objects, lists of objects).
    lists = {"tolerations", "topologySpreadConstraints", "extraEnv", "hosts", "tls"}
    documented_whole = (OPEN_OBJECTS - {"global"}) | lists
    undocumented, stack = [], []  # stack: (indent, key) of the enclosing keys
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inside_open = any(k in documented_whole for _, k in stack)
        stack.append((indent, key))
        if inside_open:
            continue
        nxt = next((n for n in lines[i + 1:] if n.strip() and not n.strip().startswith("#")), "")
        has_children = rest.strip() == "" and len(nxt) - len(nxt.lstrip()) > indent and not nxt.strip().startswith("-")
        if has_children and key not in documented_whole:
            continue  # a group of values: its leaves carry the descriptions
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        if j < 0 or not lines[j].strip().startswith("# --"):
            undocumented.append(f"{'.'.join(k for _, k in stack)} (line {i + 1})")
    assert undocumented == []


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operater": {"replicas": 1}}, "additional properties 'operater' not allowed"),
        ({"operator": {"replica": 1}}, "additional properties 'replica' not allowed"),
        ({"api": {"auth": {"existingSecrets": "x"}}}, "additional properties 'existingSecrets' not allowed"),
        ({"nodeAgent": {"healthChecks": ["sysfs", "cuda"]}}, "nodeAgent/healthChecks/1"),
        ({"nodeAgent": {"healthChecks": []}}, "nodeAgent/healthChecks"),
        ({"images": {"operator": {"pullPolicy": "Sometimes"}}}, "images/operator/pullPolicy"),
        ({"operator": {"replicas": "two"}}, "operator/replicas"),
        ({"api": {"service": {"port": 70000}}}, "api/service/port"),
        ({"operator": {"watchNamespaces": ["ML_Team"]}}, "operator/watchNamespaces/0"),
        ({"metrics": {"serviceMonitor": {"interval": "30 seconds"}}}, "metrics/serviceMonitor/interval"),
        ({"images": {"worker": {"digest": "sha256:abc"}}}, "images/worker/digest"),
    ],
    ids=["top-level typo", "nested typo", "deep typo", "enum item", "empty checks", "pull policy", "type",
         "port range", "namespace name", "duration", "digest"],
)
def test_helm_refuses_values_the_schema_forbids(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError) as refused:
        render(values)
    assert "don't meet the specifications of the schema" in refused.value.stderr
    assert message in refused.value.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": 3, "leaderElection": {"enabled": False}}},
         "operator.replicas=3 needs operator.leaderElection.enabled=true"),
        ({"api": {"auth": {"generateToken": False}}}, "api.enabled=true needs an API token source"),
        ({"api": {"auth": {"existingSecret": "mine", "token": "abc"}}},
         "api.auth.existingSecret and api.auth.token are both set"),
        ({"api": {"service": {"nodePort": 30080}}}, "api.service.nodePort is set but api.service.type is ClusterIP"),
        ({"api": {"ingress": {"enabled": True}}},
         "api.ingress.enabled=true needs at least one entry in api.ingress.hosts"),
        ({"operator": {"watchNamespaces": ["ml"]}},
         'api.clusterNamespace "legacygpu-system" is not in operator.watchNamespaces [ml]'),
        ({"operator": {"watchNamespaces": ["ml"]}, "api": {"clusterNamespace": "ml"},
          "worker": {"namespaces": ["batch"]}},
         'worker.namespaces contains "batch", which operator.watchNamespaces [ml] does not serve'),
        ({"metrics": {"prometheusRule": {"enabled": True}}},
         "metrics.prometheusRule.enabled=true needs metrics.serviceMonitor.enabled=true"),
    ],
    ids=["replicas without election", "no token source", "two token sources", "nodePort on ClusterIP",
         "ingress without hosts", "facade namespace not served", "worker namespace not served",
         "rules without scraping"],
)
def test_conflicting_values_fail_early_naming_the_fix(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError) as refused:
        render(values)
    assert message in refused.value.stderr


def test_the_same_values_without_the_conflict_render() -> None:
    """The failures above come from the conflict, not from the keys: each fix renders."""
    render({"operator": {"replicas": 3, "leaderElection": {"enabled": True}}})
    render({"operator": {"replicas": 1, "leaderElection": {"enabled": False}}})
    render({"api": {"enabled": False, "auth": {"generateToken": False}}})
    render({"api": {"auth": {"existingSecret": "mine", "generateToken": False}}})
    render({"api": {"service": {"type": "NodePort", "nodePort": 30080}}})
    render({"operator": {"watchNamespaces": ["ml"]}, "api": {"clusterNamespace": "ml"},
            "worker": {"namespaces": ["ml"]}})  # fmt: skip
    render({"metrics": {"prometheusRule": {"enabled": True}, "serviceMonitor": {"enabled": True}}})


def test_api_token_secret_generated_given_or_existing() -> None:
    import base64

    generated = next(d for d in render() if d["kind"] == "Secret")
    token = base64.b64decode(generated["data"]["token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{43}", token), "a generated token is 43 random alphanumerics"
    again = next(d for d in render() if d["kind"] == "Secret")
    assert again["data"]["token"] != generated["data"]["token"], "no fixed default token"

    given = [d for d in render({"api": {"auth": {"token": "s3cret-token", "secretKey": "key"}}})
             if d["kind"] == "Secret"]  # fmt: skip
    assert base64.b64decode(given[0]["data"]["key"]).decode() == "s3cret-token"

    existing = render({"api": {"auth": {"existingSecret": "mine", "secretKey": "k"}}})
    assert not [d for d in existing if d["kind"] == "Secret"]
    api = next(d for d in existing if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api"))
    env = {e["name"]: e for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LEGACYGPU_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "k"}
    assert "value" not in env["LEGACYGPU_API_TOKEN"], "the token never appears in the pod spec"
    assert "token" not in VALUES["api"]["auth"] or VALUES["api"]["auth"]["token"] == "", "no default token in values"


def test_docs_list_every_value() -> None:
    doc = (CHART.parents[1] / "docs" / "helm-chart.md").read_text()
    missing = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "properties" not in node or path.rsplit(".", 1)[-1] in OPEN_OBJECTS - {"global"}:
            if f"`{path}`" not in doc:
                missing.append(path)
            return
        for key, sub in node["properties"].items():
            walk(sub, f"{path}.{key}" if path else key)

    walk(SCHEMA, "")
    assert missing == [], "values missing from docs/helm-chart.md"
