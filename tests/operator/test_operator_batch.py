"""Batch tasks: one InferenceTask with many inputs, sharded across the workers.

Real: the kopf operator, the workers' loops with the real TaskRunner and onnxruntime on the demo
digits model, the examples/digits PNGs. Stand-ins (operator_harness): the API server emulator and
the simulated nodes (no kube-apiserver or kubelet here; tests/e2e/test_operator_batch.py runs the
same on the real control plane).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from operator_harness import NS, Deployment, cluster_manifest, eventually, phase, task_manifest

from legacygpu.core.kube.contract import GROUP, TASK_PLURAL, VERSION, now_utc
from legacygpu.operator.batchplan import listing_manifest, shard_manifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "digits"


def digits_configmap(name: str, copies: int) -> tuple[dict[str, Any], dict[str, str]]:
    """A ConfigMap of ``copies`` copies of the ten example PNGs in binaryData, and each key's digit."""
    binary, labels = {}, {}
    for copy in range(copies):
        for path in sorted(EXAMPLES.glob("digit-*.png")):
            key = f"c{copy:02d}-{path.name}"
            binary[key] = base64.b64encode(path.read_bytes()).decode()
            labels[key] = path.stem.split("-")[1]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "binaryData": binary}, labels


def batch_manifest(name: str, cluster: str, **batch: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceTask", "metadata": {"name": name},
            "spec": {"clusterRef": cluster, "model": "digits", "batch": batch}}


async def _finished(dep: Deployment, name: str) -> dict[str, Any] | None:
    body = await dep.task(name)
    return body if phase(body) in ("Succeeded", "Failed", "Cancelled") else None


async def _shards(dep: Deployment, parent: str) -> list[dict[str, Any]]:
    items = await dep.api.list(GROUP, VERSION, TASK_PLURAL, NS, label_selector=f"legacygpu.io/batch={parent}")
    return sorted(items, key=lambda t: t["metadata"]["name"])


async def _results(dep: Deployment, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every result entry of a finished batch task, by input key (asserting no key is stored twice)."""
    found: dict[str, dict[str, Any]] = {}
    for name in body["status"]["output"]["configMaps"]:
        configmap = await dep.api.get("", "v1", "configmaps", NS, name)
        for entry, raw in configmap["data"].items():
            key = entry.removesuffix(".json")
            assert key not in found, f"input {key} has results in two ConfigMaps"
            found[key] = json.loads(raw)
    return found


async def test_a_configmap_of_pngs_is_sharded_across_workers_with_every_result_right(dep: Deployment) -> None:
    configmap, labels = digits_configmap("digits-in", copies=4)  # 40 inputs
    await dep.api.create("", "v1", "configmaps", NS, configmap)
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2))
    await dep.create(batch_manifest("job", "c", source="configmap://digits-in", shardSize=5))
    body = await eventually(lambda: _finished(dep, "job"), timeout=90, what="batch finished")
    status = body["status"]
    assert (phase(body), status["reason"]) == ("Succeeded", "Completed"), status
    assert status["progress"] == {"total": 40, "completed": 40, "failed": 0, "shards": 8, "shardsFinished": 8,
                                  "summary": "40/40"}
    assert status["output"]["configMaps"] == [f"results-job-{i}" for i in range(8)]
    results = await _results(dep, body)
    assert set(results) == set(labels)
    wrong = {key: r["top_k"][0]["label"] for key, r in results.items() if r["top_k"][0]["label"] != labels[key]}
    assert not wrong, wrong
    shards = await _shards(dep, "job")
    assert len(shards) == 8 and all(phase(s) == "Succeeded" for s in shards)
    workers = Counter(s["status"]["history"][-1]["worker"] for s in shards)
    assert len(workers) == 2, workers  # sharded across both workers
    assert all(s["metadata"]["ownerReferences"][0]["name"] == "job" for s in shards)
    # the job's own writes: the split, at most one per finished shard, the end
    assert len(await dep.events("job")) == 1  # "Started"; a success posts none


async def test_failed_inputs_are_recorded_without_failing_the_job_unless_over_the_limit(
    dep: Deployment, digit_inputs: dict[str, Any]
) -> None:
    good = {"key": "seven", "inputs": [digit_inputs["image"]]}
    bad = {"key": "broken", "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["bm90IGEgcG5n"]}]}
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1))
    await dep.create(batch_manifest("lenient", "c", inputs=[good, bad, {**good, "key": "seven-again"}], shardSize=2))
    await dep.create(batch_manifest("strict", "c", inputs=[bad, good], shardSize=1, maxFailedInputs=0))
    body = await eventually(lambda: _finished(dep, "lenient"), timeout=60, what="lenient batch finished")
    status = body["status"]
    assert phase(body) == "Succeeded", status
    assert (status["progress"]["completed"], status["progress"]["failed"]) == (2, 1)
    assert status["progress"]["summary"] == "2/3 (1 failed)"
    assert [(f["key"], f["reason"]) for f in status["failures"]] == [("broken", "InvalidInput")]
    results = await _results(dep, body)
    assert results["broken"]["error"]["reason"] == "InvalidInput"
    assert results["seven"]["top_k"][0]["label"] == results["seven-again"]["top_k"][0]["label"] == "7"

    strict = await eventually(lambda: _finished(dep, "strict"), timeout=60, what="strict batch finished")
    assert (phase(strict), strict["status"]["reason"]) == ("Failed", "InputsFailed"), strict["status"]
    assert "maxFailedInputs (0)" in strict["status"]["message"]


async def test_a_missing_source_fails_the_job_with_a_reason_naming_it(dep: Deployment) -> None:
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1))
    await dep.create(batch_manifest("job", "c", source="configmap://nowhere"))
    body = await eventually(lambda: _finished(dep, "job"), what="batch finished")
    assert (phase(body), body["status"]["reason"]) == ("Failed", "InvalidInput")
    assert "nowhere" in body["status"]["message"]
    assert await _shards(dep, "job") == []


async def test_a_shard_whose_worker_dies_is_retried_elsewhere_and_no_result_is_stored_twice(
    dep: Deployment,
) -> None:
    configmap, labels = digits_configmap("digits-in", copies=2)  # 20 inputs
    await dep.api.create("", "v1", "configmaps", NS, configmap)
    dep.gate.clear()  # workers claim their shards, then wait
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2, tasksPerWorker=1))
    await dep.create(batch_manifest("job", "c", source="configmap://digits-in", shardSize=5))

    async def running_on_two() -> list[dict[str, Any]] | None:
        running = [s for s in await _shards(dep, "job") if phase(s) == "Running"]
        return running if len({s["status"]["workerRef"]["pod"] for s in running}) == 2 else None

    running = await eventually(running_on_two, timeout=60, what="shards running on both workers")
    victim = running[0]
    await dep.kill_worker(victim["status"]["workerRef"]["pod"])
    dep.gate.set()
    body = await eventually(lambda: _finished(dep, "job"), timeout=90, what="batch finished")
    status = body["status"]
    assert phase(body) == "Succeeded", status
    assert status["progress"]["completed"] == status["progress"]["total"] == 20
    retried = await dep.task(victim["metadata"]["name"])
    assert retried is not None and retried["status"]["attempts"] == 2, retried["status"]
    assert retried["status"]["history"][0]["outcome"] == "WorkerLost"
    results = await _results(dep, body)  # asserts each key is in one ConfigMap only
    assert {k: r["top_k"][0]["label"] for k, r in results.items()} == labels


async def test_a_split_cut_short_by_an_operator_crash_is_finished_by_the_next_operator(dep: Deployment) -> None:
    """The shard tasks a dead operator created are kept, the rest created: none twice, none missing."""
    configmap, labels = digits_configmap("digits-in", copies=1)
    await dep.api.create("", "v1", "configmaps", NS, configmap)
    await dep.create(cluster_manifest("c", replicas=1))
    parent = await dep.create(batch_manifest("job", "c", source="configmap://digits-in", shardSize=3))
    # what a leader killed after its first create leaves: shard 1 exists, the job is still Pending
    made = shard_manifest(parent, 1, now=now_utc(), keys=sorted(labels)[3:6])
    await dep.api.create(GROUP, VERSION, TASK_PLURAL, NS, made)
    await dep.start_operator()
    body = await eventually(lambda: _finished(dep, "job"), timeout=60, what="batch finished")
    assert phase(body) == "Succeeded" and body["status"]["progress"]["completed"] == 10, body["status"]
    shards = await _shards(dep, "job")
    assert [s["metadata"]["name"] for s in shards] == [f"job-s{i:05d}" for i in range(4)]
    assert all(s["status"]["attempts"] == 1 for s in shards)


@contextlib.contextmanager
def _serving(folder: Path) -> Iterator[str]:
    """A loopback HTTP server for ``folder`` (the worker and the operator fetch from it)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *_: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _answering(answer: Callable[[str, str], bytes]) -> Iterator[str]:
    """A loopback HTTP server whose GET of a path answers ``answer(path, its own URL)`` (which may wait)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = answer(self.path, f"http://127.0.0.1:{self.server.server_address[1]}")
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_url_list_of_images_and_npy_files_is_read_by_the_workers(dep: Deployment, tmp_path: Path) -> None:
    import numpy as np

    pngs = sorted(EXAMPLES.glob("digit-*.png"))
    for path in pngs:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    np.save(tmp_path / "flat.npy", np.zeros((1, 64), dtype=np.float32))
    with _serving(tmp_path) as base:
        listing = [f"{base}/{p.name}" for p in pngs] + [{"key": "zeros.npy", "url": f"{base}/flat.npy"},
                                                         f"{base}/missing.png"]
        (tmp_path / "list.json").write_text(json.dumps(listing))
        await dep.start_operator()
        await dep.create(cluster_manifest("c", replicas=2))
        await dep.create(batch_manifest("job", "c", source=f"{base}/list.json", shardSize=4))
        body = await eventually(lambda: _finished(dep, "job"), timeout=60, what="batch finished")
    status = body["status"]
    assert phase(body) == "Succeeded", status
    assert status["progress"] == {"total": 12, "completed": 11, "failed": 1, "shards": 3, "shardsFinished": 3,
                                  "summary": "11/12 (1 failed)"}
    assert [(f["key"], f["reason"]) for f in status["failures"]] == [("00011-missing.png", "InvalidInput")]
    assert "404" in status["failures"][0]["message"]
    results = await _results(dep, body)
    for index, path in enumerate(pngs):
        assert results[f"{index:05d}-{path.name}"]["top_k"][0]["label"] == path.stem.split("-")[1]
    assert results["zeros.npy"]["top_k"]  # the .npy became an FP32 [1, 64] tensor the model took


async def test_cancelling_a_batch_cancels_its_unfinished_shards(dep: Deployment) -> None:
    configmap, _ = digits_configmap("digits-in", copies=1)
    await dep.api.create("", "v1", "configmaps", NS, configmap)
    dep.gate.clear()
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, tasksPerWorker=1))
    await dep.create(batch_manifest("job", "c", source="configmap://digits-in", shardSize=2))

    async def split() -> list[dict[str, Any]] | None:
        shards = await _shards(dep, "job")
        return shards if len(shards) == 5 and any(phase(s) == "Running" for s in shards) else None

    await eventually(split, what="the batch split, one shard running")
    await dep.patch_spec(TASK_PLURAL, "job", {"cancel": True})
    body = await eventually(lambda: _finished(dep, "job"), what="batch cancelled")
    dep.gate.set()
    assert (phase(body), body["status"]["reason"]) == ("Cancelled", "Cancelled"), body["status"]

    async def all_cancelled() -> list[str] | None:
        phases = [phase(s) for s in await _shards(dep, "job")]
        return phases if set(phases) == {"Cancelled"} else None

    await eventually(all_cancelled, what="every shard cancelled")


async def test_a_new_operator_carries_on_a_running_batch_from_what_is_in_the_api(dep: Deployment) -> None:
    """The batch's state is its status and its shard tasks: an operator stopped mid-run loses nothing."""
    configmap, labels = digits_configmap("digits-in", copies=2)
    await dep.api.create("", "v1", "configmaps", NS, configmap)
    dep.gate.clear()
    first = await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2, tasksPerWorker=1))
    await dep.create(batch_manifest("job", "c", source="configmap://digits-in", shardSize=4))

    async def started() -> bool:
        shards = await _shards(dep, "job")
        return len(shards) == 5 and sum(phase(s) == "Running" for s in shards) == 2

    await eventually(started, timeout=60, what="two shards running")
    await first.close()
    dep.gate.set()  # the two running shards finish with no operator; the three waiting ones need one
    await dep.start_operator()
    body = await eventually(lambda: _finished(dep, "job"), timeout=60, what="batch finished")
    assert phase(body) == "Succeeded" and body["status"]["progress"]["completed"] == 20, body["status"]
    assert {k: r["top_k"][0]["label"] for k, r in (await _results(dep, body)).items()} == labels
    assert all(s["status"]["attempts"] == 1 for s in await _shards(dep, "job"))


async def test_a_source_that_never_answers_ends_the_batch_at_its_deadline(dep: Deployment) -> None:
    import socket

    with socket.socket() as unused:  # a loopback port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1))
    manifest = batch_manifest("job", "c", source=f"http://127.0.0.1:{port}/list.json")
    manifest["spec"]["timeoutSeconds"] = 3
    await dep.create(manifest)
    body = await eventually(lambda: _finished(dep, "job"), timeout=30, what="batch expired")
    assert (phase(body), body["status"]["reason"]) == ("Failed", "DeadlineExceeded"), body["status"]
    assert await _shards(dep, "job") == []


async def test_a_folder_on_a_claim_is_listed_by_a_worker_sharded_and_its_results_written_back(
    dep: Deployment, tmp_path: Path
) -> None:
    """pvc:// source and output: the workers share the claims folder (here tmp_path, as a mounted claim)."""
    inbox = tmp_path / "data" / "in"
    inbox.mkdir(parents=True)
    labels = {}
    for copy in range(2):
        for path in sorted(EXAMPLES.glob("digit-*.png")):
            (inbox / f"c{copy}-{path.name}").write_bytes(path.read_bytes())
            labels[f"c{copy}-{path.name}"] = path.stem.split("-")[1]
    (inbox / "README.md").write_text("not an input")
    # A tiny inline limit: the listing (20 keys) goes to a result ConfigMap, as a 10,000-file folder's would.
    dep.worker_options.update(claims_dir=tmp_path, inline_limit=100)
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=2, batchClaims=["data"]))
    await dep.create(batch_manifest("job", "c", source="pvc://data/in", output="pvc://data/out/job", shardSize=6))
    body = await eventually(lambda: _finished(dep, "job"), timeout=90, what="batch finished")
    status = body["status"]
    assert (phase(body), status["reason"]) == ("Succeeded", "Completed"), status
    assert status["progress"]["summary"] == "20/20" and status["progress"]["shards"] == 4
    assert status["output"] == {"uri": "pvc://data/out/job"}
    outbox = tmp_path / "data" / "out" / "job"
    assert sorted(p.name for p in outbox.iterdir()) == sorted(f"{key}.json" for key in labels)  # no temporaries
    wrong = {k: r for k, label in labels.items()
             if (r := json.loads((outbox / f"{k}.json").read_text()))["top_k"][0]["label"] != label}
    assert not wrong, wrong
    listing = await dep.task("job-list")
    assert listing is not None and phase(listing) == "Succeeded"
    assert listing["status"]["resultRef"] == "configmap://job-list-result/result.json"
    shards = await _shards(dep, "job")
    assert [s["metadata"]["name"] for s in shards] == ["job-list", *(f"job-s{i:05d}" for i in range(4))]
    assert [s["spec"]["batch"]["shard"]["keys"] for s in shards[1:]] == [
        sorted(labels)[i:i + 6] for i in range(0, 20, 6)]  # name order, split in shardSize pieces
    configmaps = await dep.api.list("", "v1", "configmaps", NS)
    assert not [c for c in configmaps if c["metadata"]["name"].startswith("results-job")]
    pod = (await dep.pods("c"))[0]
    assert {"name": "batch-claim-0", "persistentVolumeClaim": {"claimName": "data"}} in pod["spec"]["volumes"]
    assert {"name": "batch-claim-0", "mountPath": "/var/lib/legacygpu/claims/data"} in (
        pod["spec"]["containers"][0]["volumeMounts"])


async def test_a_batch_on_a_claim_its_cluster_does_not_mount_fails_naming_the_field(
    dep: Deployment, tmp_path: Path
) -> None:
    dep.worker_options.update(claims_dir=tmp_path)
    (tmp_path / "data" / "empty").mkdir(parents=True)
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, batchClaims=["data"]))
    await dep.create(batch_manifest("elsewhere", "c", source="pvc://data/empty", output="pvc://other/out"))
    await dep.create(batch_manifest("empty", "c", source="pvc://data/empty"))
    await dep.create(batch_manifest("inplace", "c", source="pvc://data/empty", output="pvc://data/empty/"))
    body = await eventually(lambda: _finished(dep, "elsewhere"), what="batch refused")
    assert (phase(body), body["status"]["reason"]) == ("Failed", "InvalidInput"), body["status"]
    assert "does not mount claim 'other'" in body["status"]["message"]
    assert "spec.batchClaims" in body["status"]["message"]
    assert await dep.task("elsewhere-list") is None  # refused before any child was made
    empty = await eventually(lambda: _finished(dep, "empty"), timeout=60, what="empty folder refused")
    assert (phase(empty), empty["status"]["reason"]) == ("Failed", "InvalidInput"), empty["status"]
    assert "holds no input files" in empty["status"]["message"], empty["status"]
    inplace = await eventually(lambda: _finished(dep, "inplace"), what="output into the source refused")
    assert (phase(inplace), inplace["status"]["reason"]) == ("Failed", "InvalidInput"), inplace["status"]
    assert "is the source folder" in inplace["status"]["message"]


async def test_a_slow_source_url_does_not_hold_up_the_clusters_other_tasks(
    dep: Deployment, digit_inputs: dict[str, Any]
) -> None:
    """The listing URL is read outside the cluster's pass: an ordinary task runs while it has not answered."""
    release = threading.Event()
    pngs = sorted(EXAMPLES.glob("digit-*.png"))[:3]

    def answer(path: str, url: str) -> bytes:
        if path == "/list.json":
            release.wait(30)
            return json.dumps([f"{url}/{p.name}" for p in pngs]).encode()
        return (EXAMPLES / path.lstrip("/")).read_bytes()

    with _answering(answer) as url:
        try:
            await dep.start_operator()
            await dep.create(cluster_manifest("c", replicas=1))
            await dep.create(batch_manifest("job", "c", source=f"{url}/list.json"))
            await dep.create(task_manifest("single", "c", [digit_inputs["image"]]))
            single = await eventually(lambda: _finished(dep, "single"), timeout=20, what="the ordinary task finished")
            assert phase(single) == "Succeeded"
            job = await dep.task("job")
            assert job is not None and "progress" not in (job.get("status") or {})  # its source has not answered
            release.set()
            body = await eventually(lambda: _finished(dep, "job"), timeout=60, what="batch finished")
        finally:
            release.set()
    assert phase(body) == "Succeeded" and body["status"]["progress"]["completed"] == 3, body["status"]


async def test_a_batch_for_a_cluster_that_does_not_exist_ends_cluster_not_found_unsplit(dep: Deployment) -> None:
    configmap, _ = digits_configmap("digits-in", copies=1)
    await dep.api.create("", "v1", "configmaps", NS, configmap)
    await dep.start_operator()
    await dep.create(batch_manifest("job", "nowhere", source="configmap://digits-in"))
    body = await eventually(lambda: _finished(dep, "job"), timeout=30, what="batch ended")
    assert (phase(body), body["status"]["reason"]) == ("Failed", "ClusterNotFound"), body["status"]
    assert await _shards(dep, "job") == []


async def test_a_source_url_httpx_cannot_parse_fails_the_batch_at_once_naming_it(dep: Deployment) -> None:
    """``http://[::1/…`` passes the CRD's pattern but is no URL: the read's error is the batch's, not a hang."""
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1))
    manifest = batch_manifest("job", "c", source="http://[::1/list.json")
    manifest["spec"]["timeoutSeconds"] = 600
    await dep.create(manifest)
    body = await eventually(lambda: _finished(dep, "job"), timeout=30, what="batch refused")
    assert (phase(body), body["status"]["reason"]) == ("Failed", "InvalidInput"), body["status"]
    assert "http://[::1/list.json" in body["status"]["message"]
    assert await _shards(dep, "job") == []


async def test_a_listing_result_edited_deleted_or_of_the_wrong_shape_fails_its_batch_not_the_pass(
    dep: Deployment, digit_inputs: dict[str, Any]
) -> None:
    """A bad listing result fails that batch (InvalidInput); the cluster's other tasks are still placed."""
    await dep.create(cluster_manifest("c", replicas=1, batchClaims=["data"]))
    bad = {"corrupt": {"resultRef": "configmap://corrupt-list-result/result.json"},
           "gone": {"resultRef": "configmap://gone-list-result/result.json"},
           "shape": {"result": {"keys": "not a list"}}}
    await dep.api.create("", "v1", "configmaps", NS, {"apiVersion": "v1", "kind": "ConfigMap",
                                                      "metadata": {"name": "corrupt-list-result"},
                                                      "data": {"result.json": "{not json"}})
    for name, status in bad.items():
        parent = await dep.create(batch_manifest(name, "c", source="pvc://data/in"))
        await dep.api.create(GROUP, VERSION, TASK_PLURAL, NS, listing_manifest(parent, now=now_utc()))
        await dep.api.patch_task_status(NS, f"{name}-list", {"phase": "Succeeded", "reason": "Completed", **status})
    await dep.start_operator()
    await dep.create(task_manifest("single", "c", [digit_inputs["image"]]))
    single = await eventually(lambda: _finished(dep, "single"), timeout=30, what="the ordinary task finished")
    assert phase(single) == "Succeeded"
    for name, words in (("corrupt", "is not JSON"), ("gone", "is gone"), ("shape", "holds no list of keys")):
        body = await eventually(lambda n=name: _finished(dep, n), what=f"batch {name} failed")
        assert (phase(body), body["status"]["reason"]) == ("Failed", "InvalidInput"), body["status"]
        assert words in body["status"]["message"], body["status"]


async def test_a_batch_ended_or_deleted_before_its_split_leaves_no_source_read_and_no_listing_task(
    dep: Deployment, tmp_path: Path
) -> None:
    """Cancelled, deleted: its URL read is forgotten (even one answering later), its listing task cancelled."""
    release = threading.Event()

    def answer(path: str, url: str) -> bytes:
        release.wait(30)
        return json.dumps(["http://127.0.0.1:1/digit-1.png"]).encode()

    serving = contextlib.ExitStack()
    base = serving.enter_context(_answering(answer))
    (tmp_path / "data" / "in").mkdir(parents=True)
    dep.worker_options.update(claims_dir=tmp_path)
    dep.gate.clear()  # the listing task is claimed, then waits
    try:
        operator = await dep.start_operator()
        runtime = operator.runtime
        assert runtime is not None
        await dep.create(cluster_manifest("c", replicas=1, batchClaims=["data"]))
        url = f"{base}/list.json"
        await dep.create(batch_manifest("cancelled", "c", source=url))
        await dep.create(batch_manifest("deleted", "c", source=url))
        await dep.create(batch_manifest("listed", "c", source="pvc://data/in"))
        await eventually(lambda: len(runtime.source_listings) == 2, what="both URL reads under way")
        await eventually(lambda: dep.task("listed-list"), what="the listing task made")
        await dep.patch_spec(TASK_PLURAL, "cancelled", {"cancel": True})
        await dep.patch_spec(TASK_PLURAL, "listed", {"cancel": True})
        await dep.api.delete(GROUP, VERSION, TASK_PLURAL, NS, "deleted")
        body = await eventually(lambda: _finished(dep, "cancelled"), what="batch cancelled")
        assert phase(body) == "Cancelled"
        listed = await eventually(lambda: _finished(dep, "listed"), what="pvc batch cancelled")
        assert phase(listed) == "Cancelled"
        listing = await dep.task("listed-list")
        assert listing is not None and listing["spec"].get("cancel") is True
        await eventually(lambda: not runtime.source_listings, what="the reads forgotten")
        release.set()  # the reads answer now: nothing may be kept for batches that are over
        await eventually(lambda: not runtime.background, what="the reads done")
        assert runtime.source_listings == {}
    finally:
        release.set()
        dep.gate.set()
        serving.close()


async def test_a_missing_shard_is_not_made_again_from_a_changed_or_deleted_source(
    dep: Deployment, monkeypatch: Any
) -> None:
    """Its inputs would be others than the lost shard's: the batch fails InvalidInput, its shards cancelled."""
    from legacygpu.operator import batch

    monkeypatch.setattr(batch, "MISSING_GRACE_SECONDS", 0.5)
    changed, _ = digits_configmap("changed-in", copies=1)
    deleted, _ = digits_configmap("deleted-in", copies=1)
    for configmap in (changed, deleted):
        await dep.api.create("", "v1", "configmaps", NS, configmap)
    dep.gate.clear()  # no shard ends
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, tasksPerWorker=1))
    for name in ("changed", "deleted"):
        await dep.create(batch_manifest(name, "c", source=f"configmap://{name}-in", shardSize=5))
    try:
        async def split(name: str) -> bool:
            body = await dep.task(name)
            return phase(body) == "Running" and len(await _shards(dep, name)) == 2

        for name in ("changed", "deleted"):
            await eventually(lambda n=name: split(n), what=f"{name} split in two shards")
        changed["binaryData"]["extra.png"] = changed["binaryData"]["c00-digit-1.png"]
        await dep.api.patch("", "v1", "configmaps", NS, "changed-in", {"binaryData": changed["binaryData"]})
        await dep.api.delete("", "v1", "configmaps", NS, "deleted-in")
        for name in ("changed", "deleted"):
            await dep.api.delete(GROUP, VERSION, TASK_PLURAL, NS, f"{name}-s00001")
        for name, words in (("changed", "holds 11 inputs now"), ("deleted", "not found")):
            body = await eventually(lambda n=name: _finished(dep, n), what=f"{name} failed")
            assert (phase(body), body["status"]["reason"]) == ("Failed", "InvalidInput"), body["status"]
            assert "shards [1] are missing" in body["status"]["message"] and words in body["status"]["message"]
            assert await dep.task(f"{name}-s00001") is None  # not made again from other inputs
            first = await dep.task(f"{name}-s00000")
            assert first is not None and first["spec"].get("cancel") is True
    finally:
        dep.gate.set()


async def test_a_child_left_by_an_earlier_batch_of_the_same_name_is_not_taken_as_the_new_ones(
    dep: Deployment,
) -> None:
    """Deleted and made again before the old children are collected: the new batch waits for its own names."""
    configmap, labels = digits_configmap("digits-in", copies=1)
    await dep.api.create("", "v1", "configmaps", NS, configmap)
    await dep.create(cluster_manifest("c", replicas=1))
    parent = await dep.create(batch_manifest("job", "c", source="configmap://digits-in", shardSize=5))
    stale = shard_manifest({**parent, "metadata": {**parent["metadata"], "uid": "uid-of-the-old-job"}}, 0,
                           now=now_utc(), keys=["old-a", "old-b"])
    stale["spec"]["cancel"] = True  # (so no worker runs it meanwhile)
    await dep.api.create(GROUP, VERSION, TASK_PLURAL, NS, stale)
    await dep.start_operator()
    await eventually(lambda: dep.task("job-s00001"), what="the new batch's own shard made")
    job = await dep.task("job")
    assert job is not None and phase(job) in (None, "Pending"), job.get("status")  # not Running on another's shard
    await dep.api.delete(GROUP, VERSION, TASK_PLURAL, NS, "job-s00000")  # what the garbage collector does
    body = await eventually(lambda: _finished(dep, "job"), timeout=60, what="batch finished")
    assert phase(body) == "Succeeded" and body["status"]["progress"]["completed"] == 10, body["status"]
    shards = await _shards(dep, "job")
    assert {s["metadata"]["ownerReferences"][0]["uid"] for s in shards} == {parent["metadata"]["uid"]}
    assert sorted(k for s in shards for k in s["spec"]["batch"]["shard"]["keys"]) == sorted(labels)


async def test_an_input_key_that_cannot_name_a_file_in_a_pvc_output_is_refused_before_the_split(
    dep: Deployment, digit_inputs: dict[str, Any], tmp_path: Path
) -> None:
    """The CRD's key pattern lets '..' through; a pvc:// output cannot hold '...json' for it: refused, unsplit."""
    dep.worker_options.update(claims_dir=tmp_path)
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, batchClaims=["data"]))
    inputs = [{"key": "fine", "inputs": [digit_inputs["image"]]}, {"key": "..", "inputs": [digit_inputs["image"]]}]
    await dep.create(batch_manifest("job", "c", inputs=inputs, output="pvc://data/out"))
    body = await eventually(lambda: _finished(dep, "job"), timeout=30, what="batch refused")
    assert (phase(body), body["status"]["reason"]) == ("Failed", "InvalidInput"), body["status"]
    assert "'..' cannot name a result file in pvc://data/out" in body["status"]["message"], body["status"]
    assert await _shards(dep, "job") == []


async def test_a_folder_listing_too_large_for_a_configmap_fails_the_batch_saying_so(
    dep: Deployment, tmp_path: Path
) -> None:
    """The listing's keys must fit one result ConfigMap (here made tiny): the message says to split the folder."""
    inbox = tmp_path / "data" / "in"
    inbox.mkdir(parents=True)
    for index in range(20):
        (inbox / f"image-{index:03d}.png").write_bytes((EXAMPLES / "digit-1.png").read_bytes())
    dep.worker_options.update(claims_dir=tmp_path, inline_limit=100, configmap_limit=200)
    await dep.start_operator()
    await dep.create(cluster_manifest("c", replicas=1, batchClaims=["data"]))
    await dep.create(batch_manifest("job", "c", source="pvc://data/in"))
    body = await eventually(lambda: _finished(dep, "job"), timeout=60, what="batch refused")
    assert (phase(body), body["status"]["reason"]) == ("Failed", "InvalidInput"), body["status"]
    # The worker that lists the folder refuses it in its own words (the operator's ResultTooLarge branch is
    # the backstop should a listing under the worker's count still miss its ConfigMap).
    assert "pvc://data/in holds 20 input files" in body["status"]["message"], body["status"]
    assert "split the folder" in body["status"]["message"]
