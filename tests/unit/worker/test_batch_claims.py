"""A batch shard's inputs and results on PVC claims: it stays inside its own claim, writes as it goes.

The worker's side of ``pvc://`` batches (:mod:`legacygpu.worker.batch`) on real folders standing in
for the claims a worker pod mounts; the model is a stand-in runner that echoes its input's bytes.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from legacygpu.core.errors import ValidationError
from legacygpu.core.kube.batch import list_folder
from legacygpu.worker.batch import run_shard


class EchoRunner:
    """Returns the base64 of the image it was given; counts its runs."""

    def __init__(self) -> None:
        self.runs = 0
        self.last_compute_ms = 1.0

    def run(self, model: str, inputs: list[dict[str, Any]], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
        self.runs += 1
        return {"model": model, "echo": inputs[0]["data"][0]}


class Host:
    """What :func:`run_shard` needs of a worker, with its claims under ``claims_dir``."""

    def __init__(self, claims_dir: Path) -> None:
        self.namespace, self.pod, self.configmap_limit = "ml", "worker-0", 1 << 20
        self.claims_dir, self.runner = claims_dir, EchoRunner()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a pvc:// shard makes no API call")


def shard(keys: list[str], source: str = "pvc://a/in", output: str = "pvc://a/out") -> dict[str, Any]:
    return {"metadata": {"name": "job-s00000", "uid": "u"},
            "spec": {"model": "echo", "batch": {"source": source, "output": output,
                                                "shard": {"parent": "job", "index": 0, "keys": keys}}}}


def listing(source: str = "pvc://a/in") -> dict[str, Any]:
    return {"metadata": {"name": "job-list", "uid": "u"},
            "spec": {"model": "echo", "batch": {"source": source, "shard": {"parent": "job", "index": 0,
                                                                            "listing": True}}}}


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    """Claims ``a`` (a batch's) and ``b`` (another's, holding a secret) under one claims folder."""
    (tmp_path / "a" / "in").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "secret.png").write_bytes(b"claim b's")
    (tmp_path / "a" / "in" / "ok.png").write_bytes(b"mine")
    return tmp_path


def echoed(path: Path) -> bytes:
    return base64.b64decode(json.loads(path.read_text())["echo"])


def test_a_symlink_out_of_the_claim_is_refused_by_the_listing_and_the_shard(claims: Path) -> None:
    (claims / "a" / "in" / "leak.png").symlink_to(claims / "b" / "secret.png")
    (claims / "a" / "in" / "alias.png").symlink_to(claims / "a" / "in" / "ok.png")  # inside the claim: fine
    with pytest.raises(ValidationError, match=r"'in/leak\.png' leads out of the claim"):
        list_folder(claims / "a" / "in", "pvc://a/in", claims / "a")
    (claims / "a" / "in" / "leak.png").unlink()
    assert list_folder(claims / "a" / "in", "pvc://a/in", claims / "a") == ["alias.png", "ok.png"]
    (claims / "a" / "in" / "leak.png").symlink_to(claims / "b" / "secret.png")  # planted after the listing
    host = Host(claims)
    summary = run_shard(host, shard(["ok.png", "leak.png", "alias.png"]))  # type: ignore[arg-type]
    assert summary["batch"]["completed"] == 2 and summary["batch"]["failed"] == 1
    assert echoed(claims / "a" / "out" / "ok.png.json") == b"mine"
    assert echoed(claims / "a" / "out" / "alias.png.json") == b"mine"
    leak = json.loads((claims / "a" / "out" / "leak.png.json").read_text())
    assert leak["error"]["reason"] == "InvalidInput" and "out of the claim" in leak["error"]["message"]


def test_a_source_folder_through_a_symlink_to_another_claim_is_refused(claims: Path) -> None:
    (claims / "a" / "other").symlink_to(claims / "b")
    host = Host(claims)
    with pytest.raises(ValidationError, match="out of the claim"):
        run_shard(host, listing("pvc://a/other"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="out of the claim"):
        run_shard(host, shard(["secret.png"], source="pvc://a/other"))  # type: ignore[arg-type]
    assert host.runner.runs == 0


def test_results_are_never_written_through_a_symlink_out_of_the_claim(claims: Path) -> None:
    (claims / "a" / "res").symlink_to(claims / "b")  # an output folder's parent that leads to claim b
    host = Host(claims)
    with pytest.raises(ValidationError, match="out of the claim"):
        run_shard(host, shard(["ok.png"], output="pvc://a/res/x"))  # type: ignore[arg-type]
    assert sorted(p.name for p in (claims / "b").iterdir()) == ["secret.png"]
    # A symlink planted where a result goes is replaced, not written through.
    (claims / "a" / "out").mkdir()
    (claims / "a" / "out" / "ok.png.json").symlink_to(claims / "b" / "secret.png")
    run_shard(host, shard(["ok.png"]))  # type: ignore[arg-type]
    assert (claims / "b" / "secret.png").read_bytes() == b"claim b's"
    result = claims / "a" / "out" / "ok.png.json"
    assert not result.is_symlink() and echoed(result) == b"mine"
    assert oct(result.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in (claims / "a" / "out").iterdir()] == ["ok.png.json"]  # no temporary left


def test_a_key_of_200_characters_gets_its_result_file_whatever_the_pods_name(claims: Path) -> None:
    key = "k" * 196 + ".png"
    (claims / "a" / "in" / key).write_bytes(b"long")
    host = Host(claims)
    host.pod = "w" * 63  # a pod name's longest: a temporary named after key and pod would pass NAME_MAX
    summary = run_shard(host, shard([key]))  # type: ignore[arg-type]
    assert summary["batch"]["completed"] == 1 and echoed(claims / "a" / "out" / f"{key}.json") == b"long"
    assert os.listdir(claims / "a" / "out") == [f"{key}.json"]


def test_a_pod_without_the_output_claim_fails_before_running_any_input(claims: Path) -> None:
    host = Host(claims)
    with pytest.raises(FileNotFoundError, match="claim c is not mounted"):  # retryable: the attempt goes again
        run_shard(host, shard(["ok.png"], output="pvc://c/out"))  # type: ignore[arg-type]
    assert host.runner.runs == 0


def test_each_result_file_is_written_as_soon_as_its_input_ran(claims: Path) -> None:
    (claims / "a" / "in" / "second.png").write_bytes(b"2")
    host = Host(claims)
    seen: list[list[str]] = []
    run = host.runner.run

    def run_and_look(model: str, inputs: list[dict[str, Any]], parameters: Any = None) -> dict[str, Any]:
        out = claims / "a" / "out"
        seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else [])
        return run(model, inputs, parameters)

    host.runner.run = run_and_look  # type: ignore[method-assign]
    run_shard(host, shard(["ok.png", "second.png"]))  # type: ignore[arg-type]
    assert seen == [[], ["ok.png.json"]]


def test_a_listing_records_no_compute_time_in_the_workers_stats(claims: Path) -> None:
    """The runner's last_compute_ms is the previous task's: a listing, which runs no model, must not count it."""
    from legacygpu.worker.kube import KubeWorker

    runner = EchoRunner()
    runner.last_compute_ms = 42.0
    worker = KubeWorker(api_client=None, pod_name="w", namespace="ml", runner=runner,  # type: ignore[arg-type]
                        claims_dir=claims)
    recorded: list[tuple[bool, float | None]] = []
    worker.claim = lambda body: body  # type: ignore[method-assign]
    worker.finish = lambda body, build, **_: True  # type: ignore[method-assign]
    worker._record = lambda ok, compute_ms: recorded.append((ok, compute_ms))  # type: ignore[method-assign]
    worker.execute(listing())
    assert recorded == [(True, None)]


def test_a_folder_too_long_to_list_fails_saying_to_split_it(claims: Path) -> None:
    for index in range(40):
        (claims / "a" / "in" / f"{index:03d}-{'x' * 40}.png").write_bytes(b"x")
    host = Host(claims)
    assert len(run_shard(host, listing())["keys"]) == 41  # type: ignore[arg-type]
    host.configmap_limit = 1000
    with pytest.raises(ValidationError, match=r"holds 41 input files.*over the 1000 bytes.*split the folder"):
        run_shard(host, listing())  # type: ignore[arg-type]
