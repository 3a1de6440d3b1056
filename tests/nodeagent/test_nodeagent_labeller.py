"""Node labels computed from fixture nodes, and the merge patch the labeller sends.

Applying the patch to a real Node needs an API server, which this test tier
does not start. :class:`RecordingClient` stands in for ``CoreV1Api`` and
records the exact ``patch_node`` calls; the last test sends the patch through
the real kubernetes client to an HTTP server on 127.0.0.1 that records the
request the API server would get.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from legacygpu.testing.sysfs_tree import FakeCard, NodeTree, rx580
from legacygpu.worker.nodeagent import LABEL_KEYS, HealthChecker, NodeLabeller, compute_labels, label_patch
from legacygpu.worker.nodeagent.errors import LabelError
from legacygpu.worker.nodeagent.health import CardStatus
from legacygpu.worker.nodeagent.labeller import MERGE_PATCH
from legacygpu.worker.nodeagent.openclprobe import OpenCLDevice

P = "legacygpu.io/gpu"


class RecordingClient:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.content_types: list[str] = []
        self.fail = fail

    def patch_node(self, name: str, body: dict, *, _content_type: str) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("API server unreachable")
        self.calls.append((name, body))
        self.content_types.append(_content_type)


def labels_of(node: NodeTree) -> dict[str, str]:
    return compute_labels(HealthChecker(node.sysfs, node.dev, checks=("sysfs",)).check_round())


def test_two_rx580s(node: NodeTree) -> None:
    node.plug(rx580(0))
    node.plug(rx580(1))
    assert labels_of(node) == {
        f"{P}.present": "true", f"{P}.count": "2", f"{P}.family": "polaris", f"{P}.model": "rx580",
        f"{P}.vram-mib": "8192", f"{P}.compute-units": "36",
    }


def test_no_gpu_node_and_its_patch_removes_stale_labels(node: NodeTree) -> None:
    labels = labels_of(node)
    assert labels == {f"{P}.present": "false", f"{P}.count": "0"}
    assert label_patch(labels) == {"metadata": {"labels": {
        f"{P}.present": "false", f"{P}.count": "0", f"{P}.family": None, f"{P}.model": None,
        f"{P}.vram-mib": None, f"{P}.compute-units": None, f"{P}.opencl-version": None,
    }}}


def test_mixed_cards_use_minimums_and_say_mixed(node: NodeTree) -> None:
    node.plug(rx580(0))
    node.plug(FakeCard(pci_address="0000:02:00.0", root_port="0000:00:02.0", card_index=1, render_minor=129,
                       revision=0xEF, vram_bytes=4 * 1024**3, hwmon_index=1))  # a 4 GiB RX 570
    labels = labels_of(node)
    assert labels[f"{P}.model"] == "mixed"
    assert labels[f"{P}.family"] == "polaris"
    assert labels[f"{P}.vram-mib"] == "4096"
    assert labels[f"{P}.compute-units"] == "32"


def test_opencl_values_override_the_table(node: NodeTree) -> None:
    node.plug(rx580(0))
    (status,) = HealthChecker(node.sysfs, node.dev, checks=("sysfs",)).check_round().values()
    device = OpenCLDevice("0:0", "AMD Accelerated Parallel Processing", "Ellesmere", 0x1002,
                          "OpenCL 2.0 AMD-APP (3423.0)", 32, 8 * 1024**3, "0000:01:00.0")
    joined = CardStatus(status.card, present=True, healthy=True, opencl=device)
    labels = compute_labels({"0000:01:00.0": joined})
    assert labels[f"{P}.compute-units"] == "32"
    assert labels[f"{P}.opencl-version"] == "2.0"
    assert set(labels) == set(LABEL_KEYS)


def test_labeller_patches_only_on_change_and_retries_after_failure(node: NodeTree) -> None:
    node.plug(rx580(0))
    client = RecordingClient(fail=1)
    labeller = NodeLabeller("gpu-node-1", client)
    labels = labels_of(node)
    with pytest.raises(LabelError, match="gpu-node-1"):
        labeller.apply(labels)
    assert labeller.apply(labels) is True
    assert labeller.apply(labels) is False
    assert client.calls == [("gpu-node-1", label_patch(labels))]
    assert client.content_types == [MERGE_PATCH]
    assert client.calls[0][1]["metadata"]["labels"][f"{P}.opencl-version"] is None

    node.unplug("0000:01:00.0")
    fewer = compute_labels({})
    assert labeller.apply(fewer) is True
    assert client.calls[-1][1]["metadata"]["labels"][f"{P}.count"] == "0"


class _Recorder(BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str, dict]] = []

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.command, self.path, self.headers["Content-Type"], body))
        labels = {k: v for k, v in body["metadata"]["labels"].items() if v is not None}  # null deletes
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.path.rsplit("/", 1)[1],
                                                                  "labels": labels}}
        payload = json.dumps(node).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_the_real_kubernetes_client_sends_a_merge_patch(node: NodeTree) -> None:
    from kubernetes import client

    node.plug(rx580(0))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
        api = client.CoreV1Api(client.ApiClient(configuration))
        labels = labels_of(node)
        assert NodeLabeller("gpu-node-1", api).apply(labels)
    finally:
        server.shutdown()
        server.server_close()
    ((method, path, content_type, body),) = _Recorder.requests
    assert (method, path, content_type) == ("PATCH", "/api/v1/nodes/gpu-node-1", MERGE_PATCH)
    assert body == label_patch(labels)
