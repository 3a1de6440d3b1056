"""The batch plan's pure parts: splitting, counting shards, the batch task's end; and the input files.

No I/O: :mod:`legacygpu.operator.batchplan` decides from snapshots, and
:func:`legacygpu.core.inputfiles.read_input_file` (the one reader of the CLI and the workers' shards)
turns bytes into tensors; ``pvc://`` folders are listed from a real folder.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
from pathlib import Path

import numpy as np
import pytest

from legacygpu.core.errors import ValidationError
from legacygpu.core.inputfiles import read_input_file
from legacygpu.core.kube.batch import chunks, claim_folder, configmap_keys, list_folder, parse_pvc, url_listing
from legacygpu.core.tasks import Phase
from legacygpu.operator.batchplan import (
    BatchFacts,
    claims_needed,
    finished_status,
    listing_manifest,
    progress_status,
    running_status,
    shard_manifest,
    tally,
)
from legacygpu.operator.taskstate import task_view

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)

PARENT = {
    "metadata": {"name": "job", "namespace": "ml", "uid": "u-1", "creationTimestamp": "2026-01-01T11:58:20Z"},
    "spec": {"clusterRef": "c", "model": "digits", "timeoutSeconds": 600, "priority": 5, "maxRetries": 2,
             "parameters": {"top_k": 3},
             "batch": {"source": "configmap://in", "shardSize": 2, "maxFailedInputs": 1}},
}


def test_split_pieces_and_shard_manifest_carry_what_the_worker_needs() -> None:
    keys = configmap_keys({"data": {"b.json": "[]"}, "binaryData": {"a.png": "", "c.npy": ""}})
    assert keys == ["a.png", "b.json", "c.npy"]
    assert [list(p) for p in chunks(keys, 2)] == [["a.png", "b.json"], ["c.npy"]]
    child = shard_manifest(PARENT, 1, now=NOW, keys=["c.npy"])
    assert child["metadata"]["name"] == "job-s00001"
    assert child["metadata"]["labels"] == {"legacygpu.io/batch": "job"}
    assert child["metadata"]["ownerReferences"][0] == {"apiVersion": "legacygpu.io/v1alpha1",
                                                       "kind": "InferenceTask", "name": "job", "uid": "u-1",
                                                       "controller": True}
    spec = child["spec"]
    assert spec["batch"] == {"inputName": "input", "output": "configmap://results-job", "source": "configmap://in",
                             "shard": {"parent": "job", "index": 1, "keys": ["c.npy"]}}
    assert spec["timeoutSeconds"] == 500  # the batch's deadline, not a fresh one
    assert (spec["priority"], spec["maxRetries"], spec["parameters"]) == (5, 2, {"top_k": 3})
    facts = task_view(child).batch
    assert facts is not None and facts.is_shard and (facts.parent, facts.index, facts.keys) == ("job", 1, ("c.npy",))
    parent = task_view(PARENT).batch
    assert parent is not None and not parent.is_shard and parent.shards is None and parent.max_failed == 1


def _shard(index: int, keys: tuple[str, ...], **report: object) -> BatchFacts:
    return BatchFacts(parent="job", index=index, keys=keys, **report)  # type: ignore[arg-type]


def test_tally_counts_reports_whole_shard_failures_and_missing_shards() -> None:
    children = [
        ("job-s00000", Phase.SUCCEEDED, _shard(0, ("a", "b"), completed=1, failed=1,
                                               failures=({"key": "b", "reason": "InvalidInput", "message": "m"},))),
        ("job-s00001", Phase.FAILED, _shard(1, ("c", "d"), reason="WorkerLost", message="retries spent")),
        ("job-s00002", Phase.RUNNING, _shard(2, ("e",))),
    ]
    counted = tally(4, children)
    assert (counted.completed, counted.failed, counted.finished) == (1, 3, 2)
    assert [f["key"] for f in counted.failures] == ["b", "c", "d"]
    assert counted.failures[1]["reason"] == "WorkerLost"
    assert counted.unfinished == ("job-s00002",) and counted.missing == (3,)


def test_the_batch_ends_only_when_every_shard_has_or_too_many_inputs_failed() -> None:
    facts = BatchFacts(total=4, shards=2, max_failed=None, progress={"total": 4})
    running = tally(2, [("s0", Phase.SUCCEEDED, _shard(0, ("a", "b"), completed=2))])
    assert finished_status(facts, running, now=NOW) is None  # shard 1 is missing: not done
    update = progress_status(facts, running)
    assert update is not None and update["progress"]["summary"] == "2/4"
    written = BatchFacts(total=4, shards=2, progress=update["progress"])
    assert progress_status(written, running) is None  # no change, no write

    both = tally(2, [("s0", Phase.SUCCEEDED, _shard(0, ("a", "b"), completed=2)),
                     ("s1", Phase.SUCCEEDED, _shard(1, ("c", "d"), completed=1, failed=1))])
    final = finished_status(facts, both, now=NOW)
    assert final is not None and (final["phase"], final["reason"]) == ("Succeeded", "Completed")
    assert final["progress"]["summary"] == "3/4 (1 failed)"

    strict = BatchFacts(total=4, shards=2, max_failed=0)
    early = tally(2, [("s1", Phase.SUCCEEDED, _shard(1, ("c", "d"), completed=1, failed=1)),
                      ("s0", Phase.RUNNING, _shard(0, ("a", "b")))])
    final = finished_status(strict, early, now=NOW)
    assert final is not None and (final["phase"], final["reason"]) == ("Failed", "InputsFailed")
    assert early.unfinished == ("s0",)  # what the operator cancels

    cancelled = finished_status(facts, running, now=NOW, cancelled=True)
    assert cancelled is not None and cancelled["phase"] == "Cancelled"


def test_url_listings_give_unique_keys_that_keep_the_extension() -> None:
    pairs = url_listing(["http://h/img/3.png", "http://h/img/3.png?v=2", {"key": "x.npy", "url": "http://h/x"}])
    assert pairs == [("00000-3.png", "http://h/img/3.png"), ("00001-3.png", "http://h/img/3.png?v=2"),
                     ("x.npy", "http://h/x")]
    with pytest.raises(ValidationError, match="twice"):
        url_listing([{"key": "a", "url": "u"}, {"key": "a", "url": "v"}])
    with pytest.raises(ValidationError, match="list"):
        url_listing({"not": "a list"})


def decode_file(name: str, raw: bytes, input_name: str) -> list[dict[str, object]]:
    """As a batch shard reads a file: image and tensor inputs both named inputName."""
    return read_input_file(name, raw, tensor_input=input_name, image_input=input_name)


def test_input_files_decode_by_extension() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert decode_file("a.npy", buffer.getvalue(), "input") == [
        {"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}
    ]
    png = b"\x89PNG fake"
    assert decode_file("d.PNG", png, "pixels") == [
        {"name": "pixels", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]}
    ]
    assert decode_file("d.webp", png, "pixels")[0]["name"] == "pixels"  # the CLI's image types, the same for batches
    tensors = [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1.0]}]
    assert decode_file("t.json", json.dumps({"inputs": tensors}).encode(), "input") == tensors
    assert decode_file("l.json", json.dumps(tensors).encode(), "input") == tensors
    one = {"datatype": "FP32", "shape": [1], "data": [1.0]}  # one tensor, named after the input
    assert decode_file("o.json", json.dumps(one).encode(), "x") == [{"name": "x", **one}]
    with pytest.raises(ValidationError, match="unknown file type"):
        decode_file("notes.txt", b"hello", "input")
    with pytest.raises(ValidationError, match="npy"):
        decode_file("bad.npy", b"nope", "input")
    with pytest.raises(ValidationError, match="a tensor, a list of tensors"):
        decode_file("n.json", b"3", "input")
    with pytest.raises(ValidationError, match="takes no image input"):
        read_input_file("d.png", png, tensor_input="input", image_input=None)


def test_the_cli_reads_input_files_with_the_same_reader(tmp_path: Path) -> None:
    from legacygpu.cli.client import CliError
    from legacygpu.cli.task import read_inputs

    one = tmp_path / "one.json"
    one.write_text(json.dumps({"datatype": "FP32", "shape": [1], "data": [2.0]}))
    assert read_inputs(one, None, [{"name": "pixels"}]) == [{"name": "pixels", "datatype": "FP32", "shape": [1],
                                                             "data": [2.0]}]
    image = tmp_path / "d.png"
    image.write_bytes(b"png")
    assert read_inputs(image, None, [{"name": "t"}, {"name": "img", "image": True}])[0]["name"] == "img"
    with pytest.raises(CliError, match="takes no image input"):
        read_inputs(image, None, [{"name": "t"}])


def test_pvc_uris_stay_inside_their_claim_and_folders_list_their_input_files_sorted(tmp_path: Path) -> None:
    assert parse_pvc("pvc://data") == ("data", "")
    assert parse_pvc("pvc://data/in/batch-1/") == ("data", "in/batch-1")
    for bad in ("pvc://data/../x", "pvc://data/./x", "pvc://data//x", "pvc://Data/x", "configmap://x"):
        with pytest.raises(ValidationError):
            parse_pvc(bad)
    assert claim_folder(tmp_path, "pvc://data/in/b") == tmp_path / "data" / "in" / "b"
    folder = tmp_path / "data" / "in"
    folder.mkdir(parents=True)
    for name in ("b.npy", "a.png", "c.json", "README.md", ".hidden.png"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.png").mkdir()
    assert list_folder(folder, "pvc://data/in", tmp_path / "data") == ["a.png", "b.npy", "c.json"]
    (folder / "with space.png").write_bytes(b"x")
    with pytest.raises(ValidationError, match=r"with space\.png"):
        list_folder(folder, "pvc://data/in", tmp_path / "data")
    with pytest.raises(ValidationError, match="no such folder"):
        list_folder(tmp_path / "nope", "pvc://data/nope", tmp_path / "data")


def test_a_pvc_batch_has_a_listing_task_and_shards_that_write_to_the_claim() -> None:
    parent = {**PARENT, "spec": {**PARENT["spec"], "batch": {"source": "pvc://data/in", "output": "pvc://out/res"}}}
    facts = task_view(parent).batch
    assert facts is not None and claims_needed(facts) == ["data", "out"]
    listing = listing_manifest(parent, now=NOW)
    assert listing["metadata"]["name"] == "job-list" and listing["spec"]["timeoutSeconds"] == 500
    assert listing["spec"]["batch"] == {"source": "pvc://data/in", "shard": {"parent": "job", "index": 0,
                                                                              "listing": True}}
    listed = task_view(listing).batch
    assert listed is not None and listed.listing and listed.parent == "job"
    shard = shard_manifest(parent, 0, now=NOW, keys=["a.png"])
    assert shard["spec"]["batch"]["output"] == "pvc://out/res"
    running = running_status(total=1, shards=1, output="pvc://out/res", now=NOW, previous={})
    assert running["output"] == {"uri": "pvc://out/res"}
    assert running_status(total=1, shards=2, output="configmap://r", now=NOW, previous={})["output"] == {
        "configMaps": ["r-0", "r-1"]}


def test_the_crd_shows_progress_and_validates_the_batch_spec() -> None:
    from crd_validation import validate

    from legacygpu.operator.schema_task import task_crd

    columns = {c["name"]: c for c in task_crd()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Progress"]["jsonPath"] == ".status.progress.summary"
    assert columns["Failed"]["jsonPath"] == ".status.progress.failed"
    base = {"apiVersion": "legacygpu.io/v1alpha1", "kind": "InferenceTask", "metadata": {"name": "b"},
            "spec": {"clusterRef": "c", "model": "digits", "batch": {"source": "configmap://in"}}}
    assert validate(base) == []
    both = {**base, "spec": {**base["spec"], "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}}
    assert any("exactly one of spec.inputs, spec.inputsUri and spec.batch" in p for p in validate(both))
    neither = {**base, "spec": {**base["spec"], "batch": {"shardSize": 5}}}
    assert any("exactly one of spec.batch.inputs and spec.batch.source" in p for p in validate(neither))
    for source in ("s3://bucket/dir", "pvc://Claim/dir", "pvc://claim//dir"):
        assert validate({**base, "spec": {**base["spec"], "batch": {"source": source}}}), source
    for source in ("pvc://claim", "pvc://claim/dir/", "pvc://claim/a/b.c"):
        assert validate({**base, "spec": {**base["spec"], "batch": {"source": source}}}) == [], source


def test_a_shard_key_naming_a_path_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    """A shard made by hand with a key like ../x must not read or write outside the claim's folder."""
    from types import SimpleNamespace

    from legacygpu.worker.batch import run_shard

    (tmp_path / "data" / "in").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"not for the model")
    host = SimpleNamespace(namespace="ml", pod="w", runner=None, configmap_limit=1 << 20, claims_dir=tmp_path)
    shard = {"metadata": {"name": "job-s00000", "uid": "u"},
             "spec": {"model": "digits", "batch": {"source": "pvc://data/in", "output": "pvc://data/out",
                                                   "shard": {"parent": "job", "index": 0,
                                                             "keys": ["../../secret.png"]}}}}
    with pytest.raises(ValidationError, match="not an input key"):
        run_shard(host, shard)  # type: ignore[arg-type]
    assert not (tmp_path / "data" / "out").exists()


def test_the_output_uri_and_claim_names_follow_one_rule_on_both_sides() -> None:
    """The operator's status, the shard's spec and the CRD's patterns derive from core.kube.batch alone."""
    import re

    from legacygpu.core.kube.batch import output_uri
    from legacygpu.operator.batchplan import shard_manifest
    from legacygpu.operator.schema_batch import BATCH_SOURCE_PATTERN, OUTPUT_PATTERN

    assert output_uri("job", None) == output_uri("job", "") == "configmap://results-job"
    assert output_uri("job", "configmap://mine") == "configmap://mine"
    assert output_uri("job", "pvc://data/out/") == "pvc://data/out/"
    parent = {"metadata": {"name": "job", "namespace": "ns", "uid": "u"},
              "spec": {"clusterRef": "c", "model": "m", "batch": {"source": "configmap://in"}}}
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert shard_manifest(parent, 0, now=now, keys=["a"])["spec"]["batch"]["output"] == "configmap://results-job"
    for claim in ("data", "a.b-c", "Data", "-data", "data-", "da_ta"):
        try:
            parse_pvc(f"pvc://{claim}/in")
            accepted = True
        except ValidationError:
            accepted = False
        assert bool(re.match(OUTPUT_PATTERN, f"pvc://{claim}/in")) is accepted, claim
        assert bool(re.match(BATCH_SOURCE_PATTERN, f"pvc://{claim}/in")) is accepted, claim
