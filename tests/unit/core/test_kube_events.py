"""The one Event body the operator and the workers post (:func:`legacygpu.core.kube.contract.event_manifest`).

The API server takes a core/v1 Event only with a name (or ``generateName``), a namespace that is
the involved object's, and the legacy timestamps when ``eventTime`` is absent; ``kubectl describe``
finds it by ``involvedObject``. Each of those is checked here, so dropping one fails a test.
"""

from __future__ import annotations

import datetime

from legacygpu.core.kube.contract import (
    API_VERSION,
    EVENT_MESSAGE_LIMIT,
    TASK_KIND,
    event_manifest,
    format_time,
)

TASK = {"apiVersion": API_VERSION, "kind": TASK_KIND, "metadata": {"name": "t1", "namespace": "ml", "uid": "u-1"}}
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)


def test_an_event_names_its_object_in_its_namespace_with_the_legacy_timestamps() -> None:
    event = event_manifest(TASK, "Warning", "ModelError", "boom", component="legacygpu-operator", now=NOW)
    assert (event["apiVersion"], event["kind"]) == ("v1", "Event")
    assert event["metadata"] == {"generateName": "t1.", "namespace": "ml"}
    assert event["involvedObject"] == {
        "apiVersion": API_VERSION, "kind": TASK_KIND, "name": "t1", "namespace": "ml", "uid": "u-1",
    }
    assert event["metadata"]["namespace"] == event["involvedObject"]["namespace"]  # the API server insists
    assert (event["type"], event["reason"], event["message"]) == ("Warning", "ModelError", "boom")
    stamp = format_time(NOW)
    assert (event["firstTimestamp"], event["lastTimestamp"], event["count"]) == (stamp, stamp, 1)
    assert "eventTime" not in event and "series" not in event  # with eventTime the server wants action etc. too
    assert event["source"] == {"component": "legacygpu-operator"}
    assert event["reportingComponent"] == "legacygpu-operator"
    assert "reportingInstance" not in event  # left out, not sent empty, when not given


def test_a_workers_event_names_its_instance_and_host() -> None:
    event = event_manifest(TASK, "Normal", "Completed", "ok", component="legacygpu-worker",
                           instance="pod-a", host="node-1", now=NOW)
    assert event["source"] == {"component": "legacygpu-worker", "host": "node-1"}
    assert (event["reportingComponent"], event["reportingInstance"]) == ("legacygpu-worker", "pod-a")


def test_a_long_message_is_cut_and_a_nameless_object_still_gets_a_generated_name() -> None:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "ml"}}
    event = event_manifest(body, "Warning", "X", "m" * (EVENT_MESSAGE_LIMIT + 10), component="c", now=NOW)
    assert event["message"] == "m" * EVENT_MESSAGE_LIMIT
    assert event["metadata"]["generateName"] == "object."


def test_the_time_defaults_to_now() -> None:
    before = datetime.datetime.now(datetime.UTC)
    event = event_manifest(TASK, "Normal", "X", "m", component="c")
    after = datetime.datetime.now(datetime.UTC)
    assert before <= datetime.datetime.fromisoformat(event["firstTimestamp"].replace("Z", "+00:00")) <= after
