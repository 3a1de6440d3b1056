"""The chart's ServiceMonitors, PodMonitor and PrometheusRule: off by default, valid, about real series.

The rendered PrometheusRule's groups go through ``promtool check rules`` and a
``promtool test rules`` file that feeds synthetic series (with the job labels the
chart's monitors give them) and expects every alert to fire where it should and not
where it should not; a test fails if an alert has no firing case. Every metric and
label the rules use must be one the facade, the operator or the node agent exports
(``exported_metrics``, which collects their real registries). tests/monitoring fires
an alert in a live Prometheus.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .exported_metrics import problems_in
from .helmchart import find, render

ON = {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True,
                                                                             "queueBacklogThreshold": 10}}}  # fmt: skip
JOB = "lg-legacygpu-operator-metrics"
API_JOB = "lg-legacygpu-api"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (apt prometheus) is not installed")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


@pytest.fixture(scope="module")
def rule_groups() -> list[dict[str, Any]]:
    (rule,) = find(render(ON), "PrometheusRule")
    return rule["spec"]["groups"]  # type: ignore[no-any-return]


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_monitoring_objects_only_when_enabled() -> None:
    assert not [d for d in render() if d["apiVersion"].startswith("monitoring.coreos.com")]
    docs = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitors = {d["metadata"]["name"] for d in find(docs, "ServiceMonitor")}
    assert monitors == {"lg-legacygpu-operator", "lg-legacygpu-api"}
    assert not find(docs, "PrometheusRule")
    assert not find(docs, "PodMonitor")
    api_sm = find(docs, "ServiceMonitor", "lg-legacygpu-api")[0]
    auth = api_sm["spec"]["endpoints"][0]["authorization"]
    assert auth == {"type": "Bearer", "credentials": {"name": "lg-legacygpu-api-token", "key": "token"}}, \
        "the facade's /metrics needs the API token"  # fmt: skip
    op_sm = find(docs, "ServiceMonitor", "lg-legacygpu-operator")[0]
    assert op_sm["spec"]["endpoints"][0]["honorLabels"] is True, "the operator's series carry their own namespace"


def _agent(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = find(docs, "DaemonSet", "lg-legacygpu-node-agent")
    return ds  # type: ignore[no-any-return]


def test_node_agent_metrics_are_scraped_by_annotations_or_a_pod_monitor() -> None:
    plain = render()
    pod = _agent(plain)["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert "--metrics-port=9402" in container["args"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9402, "protocol": "TCP"}]
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9402",
                                              "prometheus.io/path": "/metrics"}  # fmt: skip

    monitored = render({"metrics": {"podMonitor": {"enabled": True, "labels": {"release": "prom"}}},
                        "nodeAgent": {"podAnnotations": {"a": "b"}}})  # fmt: skip
    assert _agent(monitored)["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}, "no double scraping"
    (pm,) = find(monitored, "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "prom"
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "legacygpu",
                                                     "app.kubernetes.io/instance": "lg",
                                                     "app.kubernetes.io/component": "node-agent"}  # fmt: skip
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"} \
        in endpoint["relabelings"]  # fmt: skip

    off = render({"nodeAgent": {"metricsPort": 0}, "metrics": {"podMonitor": {"enabled": True}}})
    container = _agent(off)["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in container["args"] if a.startswith("--metrics-port")] and "ports" not in container
    assert "annotations" not in _agent(off)["spec"]["template"]["metadata"]
    assert not find(off, "PodMonitor")


def test_rule_groups_follow_the_components_enabled() -> None:
    def group_names(values: dict[str, Any]) -> list[str]:
        merged = {**values, "metrics": ON["metrics"]}
        (rule,) = find(render(merged), "PrometheusRule")
        return [g["name"] for g in rule["spec"]["groups"]]

    assert group_names({}) == ["legacygpu.operator", "legacygpu.facade", "legacygpu.gpu"]
    assert group_names({"nodeAgent": {"enabled": False}}) == ["legacygpu.operator", "legacygpu.facade"]
    assert group_names({"api": {"enabled": False}, "nodeAgent": {"metricsPort": 0}}) == ["legacygpu.operator"]


def test_rules_use_only_metrics_and_labels_the_code_exports(rule_groups: list[dict[str, Any]]) -> None:
    problems = [p for name, rule in alerts(rule_groups).items() for p in problems_in(rule["expr"], name)]
    assert problems == []
    for name, rule in alerts(rule_groups).items():
        if "legacygpu_gpu_" not in rule["expr"]:
            assert 'job="' in rule["expr"], f"{name} must select its release's series by job"


def test_every_alert_has_a_runbook_section(rule_groups: list[dict[str, Any]]) -> None:
    text = DOCS.read_text()
    for name, rule in alerts(rule_groups).items():
        assert f"\n### {name}\n" in text, f"docs/monitoring.md has no runbook section for {name}"
        section = text.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert len(section.split()) >= 40, f"the runbook of {name} is too thin"
        if "description" in rule.get("annotations", {}) and name not in _OLDER:
            assert f"docs/monitoring.md#{name.lower()}" in rule["annotations"]["description"]


# The operator's alerts predate the runbook links in descriptions; their runbooks are in the doc all the same.
_OLDER = {"LegacyGPUOperatorNoLeader", "LegacyGPUOperatorReconcileErrors", "LegacyGPUTaskQueueBacklog",
          "LegacyGPUWorkersNotReady", "LegacyGPUTasksWaitingWithoutWorkers"}  # fmt: skip


def _series(metric: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def promtool_cases() -> dict[str, Any]:
    """Synthetic series (1 minute apart) and, for each alert, where it fires and where it must not."""
    op, api, other = {"job": JOB}, {"job": API_JOB}, {"job": "someone-else"}
    A, B = {"gpu": "0000:01:00.0", "instance": "10.0.0.7:9402"}, {"gpu": "0000:02:00.0", "instance": "10.0.0.7:9402"}
    series = [
        # operator: the leader goes away after 5 minutes.
        _series("legacygpu_operator_leader", "1x5 0x60", **op, pod="op-a"),
        # ml/digits: a backlog above the threshold (10), one unready worker, and no ready worker.
        _series("legacygpu_operator_queue_depth", "50x60", **op, namespace="ml", cluster="digits"),
        _series("legacygpu_operator_workers", "0x60", **op, namespace="ml", cluster="digits", state="ready"),
        _series("legacygpu_operator_workers", "1x60", **op, namespace="ml", cluster="digits", state="not_ready"),
        # ml/fine: a small queue with ready workers: nothing fires.
        _series("legacygpu_operator_queue_depth", "3x60", **op, namespace="ml", cluster="fine"),
        _series("legacygpu_operator_workers", "2x60", **op, namespace="ml", cluster="fine", state="ready"),
        _series("legacygpu_operator_workers", "0x60", **op, namespace="ml", cluster="fine", state="not_ready"),
        # Reconcile errors keep coming for tasks, not for clusters.
        _series("legacygpu_operator_reconcile_errors_total", "0+2x60", **op, kind="InferenceTask"),
        _series("legacygpu_operator_reconcile_errors_total", "0x60", **op, kind="InferenceCluster"),
        # Another release's series never trigger this release's alerts.
        _series("legacygpu_operator_queue_depth", "999x60", **other, namespace="x", cluster="y"),
        _series("legacygpu_workers", "0x5 7x60", **other, state="lost"),
        # facade: a worker is lost at minute 10; the queue grows by one task a minute.
        _series("legacygpu_workers", "0x10 1x60", **api, state="lost"),
        _series("legacygpu_workers", "2x10 1x60", **api, state="active"),
        _series("legacygpu_queue_depth", "0+1x60", **api),
        # digits: a third of finished tasks fail; ok: none do.
        _series("legacygpu_tasks_finished_total", "0+10x60", **api, model="digits", phase="Succeeded"),
        _series("legacygpu_tasks_finished_total", "0+5x60", **api, model="digits", phase="Failed"),
        _series("legacygpu_tasks_finished_total", "0+10x60", **api, model="ok", phase="Succeeded"),
        _series("legacygpu_tasks_finished_total", "0x60", **api, model="ok", phase="Failed"),
        # slow: every task takes 1-60 s (p99 about 59 s, over the 30 s target); fast: all under 1 s.
        _series("legacygpu_task_duration_seconds_bucket", "0x60", **api, model="slow", le="1"),
        _series("legacygpu_task_duration_seconds_bucket", "0+10x60", **api, model="slow", le="60"),
        _series("legacygpu_task_duration_seconds_bucket", "0+10x60", **api, model="slow", le="+Inf"),
        _series("legacygpu_task_duration_seconds_bucket", "0+10x60", **api, model="fast", le="1"),
        _series("legacygpu_task_duration_seconds_bucket", "0+10x60", **api, model="fast", le="60"),
        _series("legacygpu_task_duration_seconds_bucket", "0+10x60", **api, model="fast", le="+Inf"),
        # A client with a stale token from minute 5; the rest of the traffic is authorised.
        _series("legacygpu_http_requests_total", "0x5 0+30x60", **api, method="GET", route="/cluster/tasks",
                code="401"),
        _series("legacygpu_http_requests_total", "0+600x60", **api, method="GET", route="/cluster/tasks",
                code="200"),
        # GPUs: A turns Unhealthy after 5 minutes; B runs hot (95 °C over the default 85 °C).
        _series("legacygpu_gpu_healthy", "1x5 0x60", **A),
        _series("legacygpu_gpu_healthy", "1x60", **B),
        _series("legacygpu_gpu_temperature_celsius", "70x60", **A),
        _series("legacygpu_gpu_temperature_celsius", "95x60", **B),
    ]
    w = {"severity": "warning"}
    digits = {**w, "namespace": "ml", "cluster": "digits"}
    expectations: list[tuple[str, str, list[dict[str, str]]]] = [
        ("10m", "LegacyGPUOperatorNoLeader", []),
        ("25m", "LegacyGPUOperatorNoLeader", [w]),
        ("25m", "LegacyGPUTaskQueueBacklog", [digits]),
        ("25m", "LegacyGPUWorkersNotReady", [digits]),
        ("25m", "LegacyGPUTasksWaitingWithoutWorkers", [digits]),
        ("25m", "LegacyGPUOperatorReconcileErrors", [{**w, "kind": "InferenceTask"}]),
        ("5m", "LegacyGPUWorkerLost", []),
        ("15m", "LegacyGPUWorkerLost", [{**w, **api, "state": "lost"}]),  # at once: no `for`
        ("45m", "LegacyGPUWorkerLost", []),  # resolved once the loss left the 30 minute window
        ("10m", "LegacyGPUQueueBacklogGrowing", []),  # growing, but not for 15 minutes yet
        ("30m", "LegacyGPUQueueBacklogGrowing", [w]),
        ("30m", "LegacyGPUTaskFailureRatio", [{**w, "model": "digits"}]),
        ("30m", "LegacyGPUTaskLatencyP99High", [{**w, "model": "slow"}]),
        ("15m", "LegacyGPUApiUnauthorized", []),  # refused for 10 minutes only: not yet
        ("30m", "LegacyGPUApiUnauthorized", [w]),
        ("30m", "LegacyGPUUnhealthy", [{**w, **A}]),
        ("10m", "LegacyGPUTooHot", []),
        ("30m", "LegacyGPUTooHot", [{**w, **B}]),
    ]
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": t, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in exp]}
                            for t, name, exp in expectations],
    }  # fmt: skip


def test_every_alert_has_a_firing_case(rule_groups: list[dict[str, Any]]) -> None:
    fired = {c["alertname"] for c in promtool_cases()["alert_rule_test"] if c["exp_alerts"]}
    assert fired == set(alerts(rule_groups)), "each alert needs a promtool case where it fires"


@needs_promtool
def test_promtool_accepts_the_rules_and_they_fire_as_intended(
    rule_groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr  # expressions and annotation templates parse
    assert f"SUCCESS: {len(alerts(rule_groups))} rules found" in check.stdout

    # The firing test compares labels only (promtool would also compare every annotation text).
    bare = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in rule_groups]  # fmt: skip
    rules.write_text(yaml.safe_dump({"groups": bare}, sort_keys=False))
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m",
                                     "tests": [promtool_cases()]}))  # fmt: skip
    run = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout
