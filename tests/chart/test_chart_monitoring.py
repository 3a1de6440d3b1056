"""The chart's ServiceMonitors and PrometheusRule: off by default, valid, and about real series.

The rendered PrometheusRule's groups go through ``promtool check rules`` and a
``promtool test rules`` file that feeds synthetic series (with the job label the
chart's ServiceMonitor gives the operator) and expects each alert to fire, or not.
Every metric and label the rules use must be one the operator exports
(``legacygpu.operator.metrics.OperatorMetrics``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helmchart import find, render

ON = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True,
                                                                             "queueBacklogThreshold": 10}}}  # fmt: skip
JOB = "lg-legacygpu-operator-metrics"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (apt prometheus) is not installed")


@pytest.fixture(scope="module")
def rule_groups() -> list[dict[str, Any]]:
    (rule,) = find(render(ON), "PrometheusRule")
    return rule["spec"]["groups"]  # type: ignore[no-any-return]


def test_monitoring_objects_only_when_enabled() -> None:
    assert not [d for d in render() if d["apiVersion"].startswith("monitoring.coreos.com")]
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitors = {d["metadata"]["name"] for d in find(docs, "ServiceMonitor")}
    assert monitors == {"lg-legacygpu-operator", "lg-legacygpu-api"}
    assert not find(docs, "PrometheusRule")
    api_sm = find(docs, "ServiceMonitor", "lg-legacygpu-api")[0]
    auth = api_sm["spec"]["endpoints"][0]["authorization"]
    assert auth == {"type": "Bearer", "credentials": {"name": "lg-legacygpu-api-token", "key": "token"}}, \
        "the facade's /metrics needs the API token"  # fmt: skip
    op_sm = find(docs, "ServiceMonitor", "lg-legacygpu-operator")[0]
    assert op_sm["spec"]["endpoints"][0]["honorLabels"] is True, "the operator's series carry their own namespace"


def test_rules_use_only_metrics_and_labels_the_operator_exports(rule_groups: list[dict[str, Any]]) -> None:
    from legacygpu.operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    exported: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if hasattr(value, "_labelnames") and hasattr(value, "_name"):
            suffix = "_total" if type(value).__name__ == "Counter" else ""
            exported[value._name + suffix] = set(value._labelnames)
    used = 0
    for rule in rule_groups[0]["rules"]:
        for name in re.findall(r"\blegacygpu_[a-z_]+\b", rule["expr"]):
            assert name in exported, f"{rule['alert']} uses {name}, which the operator does not export"
            used += 1
        for labels in re.findall(r"by \(([^)]*)\)|on \(([^)]*)\)", rule["expr"]):
            for label in ",".join(labels).split(","):
                label = label.strip()
                if label:
                    names = re.findall(r"\blegacygpu_[a-z_]+\b", rule["expr"])
                    assert any(label in exported[n] for n in names), (rule["alert"], label)
        for name, matchers in re.findall(r"(legacygpu_[a-z_]+)\{([^}]*)\}", rule["expr"]):
            for label in re.findall(r'([a-z_]+)="', matchers):
                assert label == "job" or label in exported[name], (rule["alert"], name, label)
    assert used >= 5


@needs_promtool
def test_promtool_accepts_the_rules_and_they_fire_as_intended(
    rule_groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr  # expressions and annotation templates parse
    assert "SUCCESS: 5 rules found" in check.stdout

    # The firing test compares labels only (promtool would also compare every annotation text).
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in rule_groups]  # fmt: skip
    rules.write_text(yaml.safe_dump({"groups": bare}, sort_keys=False))

    job = f'job="{JOB}"'
    other = 'job="someone-else"'
    cases = {
        "interval": "1m",
        "input_series": [
            # The leader goes away after 5 minutes.
            {"series": f"legacygpu_operator_leader{{{job},pod=\"op-a\"}}", "values": "1x5 0x40"},
            # ml/digits: a backlog above the threshold (10), one unready worker, and no ready worker.
            {"series": f'legacygpu_operator_queue_depth{{{job},namespace="ml",cluster="digits"}}', "values": "50x40"},
            {"series": f'legacygpu_operator_workers{{{job},namespace="ml",cluster="digits",state="ready"}}',
             "values": "0x40"},
            {"series": f'legacygpu_operator_workers{{{job},namespace="ml",cluster="digits",state="not_ready"}}',
             "values": "1x40"},
            # ml/fine: a small queue with ready workers: nothing fires.
            {"series": f'legacygpu_operator_queue_depth{{{job},namespace="ml",cluster="fine"}}', "values": "3x40"},
            {"series": f'legacygpu_operator_workers{{{job},namespace="ml",cluster="fine",state="ready"}}',
             "values": "2x40"},
            {"series": f'legacygpu_operator_workers{{{job},namespace="ml",cluster="fine",state="not_ready"}}',
             "values": "0x40"},
            # Reconcile errors keep coming for tasks, not for clusters.
            {"series": f'legacygpu_operator_reconcile_errors_total{{{job},kind="InferenceTask"}}', "values": "0+2x40"},
            {"series": f'legacygpu_operator_reconcile_errors_total{{{job},kind="InferenceCluster"}}', "values": "0x40"},
            # Another release's series never trigger this release's alerts.
            {"series": f'legacygpu_operator_queue_depth{{{other},namespace="x",cluster="y"}}', "values": "999x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "LegacyGPUOperatorNoLeader", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "LegacyGPUOperatorNoLeader",
             "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
            {"eval_time": "25m", "alertname": "LegacyGPUTaskQueueBacklog",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "ml", "cluster": "digits"}}]},
            {"eval_time": "25m", "alertname": "LegacyGPUWorkersNotReady",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "ml", "cluster": "digits"}}]},
            {"eval_time": "25m", "alertname": "LegacyGPUTasksWaitingWithoutWorkers",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "ml", "cluster": "digits"}}]},
            {"eval_time": "25m", "alertname": "LegacyGPUOperatorReconcileErrors",
             "exp_alerts": [{"exp_labels": {"severity": "warning", "kind": "InferenceTask"}}]},
        ],
    }  # fmt: skip
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [cases]}))
    run = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
