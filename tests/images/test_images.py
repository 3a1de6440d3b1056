"""The worker and operator images, built by ``make images``, checked by running things in them.

Each test runs real processes in a buildah working container (chroot isolation, the image's
own user unless it says otherwise): the CLI, a real inference (onnxruntime and PoCL OpenCL)
in the worker image, the REST facade in the operator image, answering HTTP on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from e2ecluster.images import Buildah, image_ref
from e2ecluster.procs import free_port

IMAGES = ("worker", "operator")
IMAGE_USER = "10001"
VOLUMES = ("/tmp", "/var/lib/legacygpu")
# What each image must, and must not, be able to import.
MODULES = {
    "worker": ({"onnxruntime", "pyopencl", "grpc", "kubernetes", "legacygpu.worker"},
               {"kopf", "fastapi", "legacygpu.operator", "legacygpu.api"}),  # uvicorn: the worker's v2 server
    "operator": ({"kopf", "fastapi", "uvicorn", "kubernetes", "legacygpu.operator", "legacygpu.api"},
                 {"pyopencl", "onnxruntime", "legacygpu.worker"}),
}  # fmt: skip
# Size budgets (uncompressed, all layers): a regression guard; the measured sizes are in docs/images.md.
SIZE_BUDGET = {"worker": 2_000_000_000, "operator": 700_000_000}

MLP = """
import sys
import numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(0)
init = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w1", (64, 32)), ("b1", (32,)), ("w2", (32, 10)))]
nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["a"]),
         helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], init)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.save(model, sys.argv[1])
"""


def _volumes(scratch: Path) -> dict[str, str]:
    out = {}
    for target in VOLUMES:
        host = scratch / target.strip("/").replace("/", "_")
        host.mkdir(exist_ok=True)
        host.chmod(0o777)
        out[target] = str(host)
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_image_is_built_with_its_entrypoint_user_and_volumes(buildah: Buildah, name: str) -> None:
    config = buildah.config(image_ref(name))
    assert config["Entrypoint"] == ["legacygpu"]
    assert config["Cmd"] == {"worker": ["worker", "start", "--kubernetes"], "operator": ["operator", "run"]}[name]
    assert config["User"] == IMAGE_USER
    assert set(config.get("Volumes") or {}) == set(VOLUMES)
    assert "LEGACYGPU_DATA_DIR=/var/lib/legacygpu" in config["Env"]
    labels = config.get("Labels") or {}
    assert len(labels.get("io.legacygpu.inputs", "")) == 16, labels  # the cache key build-images.sh stamps


@pytest.mark.parametrize("name", IMAGES)
def test_image_runs_as_non_root(buildah: Buildah, container, name: str) -> None:
    with container(name) as ctr:
        default = buildah.run(ctr, ["id", "-u"])
        explicit = buildah.run(ctr, ["id", "-un"], user=IMAGE_USER)
        write = buildah.run(ctr, ["touch", "/opt/legacygpu/written"])
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == IMAGE_USER
    assert explicit.stdout.strip() == "legacygpu", explicit.stderr
    assert write.returncode != 0, "the image user can write to the image's files"


@pytest.mark.parametrize("name", IMAGES)
def test_cli_version_and_help_work_inside(buildah: Buildah, container, name: str) -> None:
    with container(name) as ctr:
        version = buildah.run(ctr, ["legacygpu", "--version"])
        usage = buildah.run(ctr, ["legacygpu", "--help"])
        own = buildah.run(ctr, ["legacygpu", *{"worker": ["worker"], "operator": ["operator", "run"]}[name], "--help"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"legacygpu, version {metadata.version('legacygpu')}"
    assert usage.returncode == 0, usage.stderr
    assert "Commands:" in usage.stdout and "worker" in usage.stdout and "operator" in usage.stdout
    assert own.returncode == 0, own.stdout + own.stderr
    assert "Usage: legacygpu" in own.stdout


@pytest.mark.parametrize("name", IMAGES)
def test_image_holds_only_its_components_dependencies(buildah: Buildah, container, name: str) -> None:
    wanted, banned = MODULES[name]
    probe = "import importlib.util, json, sys; print(json.dumps({m: importlib.util.find_spec(m) is not None " \
            "for m in sys.argv[1:]}))"  # fmt: skip
    with container(name) as ctr:
        out = buildah.run(ctr, ["python", "-c", probe, *sorted(wanted | banned)])
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert {m for m in wanted if not found[m]} == set(), "missing from the image"
    assert {m for m in banned if found[m]} == set(), "in the image although another component's"


def test_worker_image_runs_a_real_inference_on_onnxruntime_and_pocl(
    buildah: Buildah, container, scratch: Path
) -> None:
    models = scratch / "models"
    models.mkdir()
    subprocess.run([sys.executable, "-c", MLP, str(models / "mlp.onnx")], check=True)
    with container("worker") as ctr:
        devices = buildah.run(ctr, ["legacygpu", "devices", "-o", "json"], volumes=_volumes(scratch))
        check = buildah.run(
            ctr, ["legacygpu", "model", "check", "/models/mlp.onnx", "--dim", "batch=4", "--tolerance", "1e-4",
                  "-o", "json"],
            volumes={**_volumes(scratch), "/models": str(models)}, read_only=["/models"],
        )  # fmt: skip
    assert devices.returncode == 0, devices.stderr
    assert "Portable Computing Language" in devices.stdout, devices.stdout
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["backend"] == "opencl"
    assert report["opencl_flop_share"] == 1.0  # every MatMul ran in PoCL's OpenCL kernels
    (output,) = report["outputs"]
    assert output["shape"] == [4, 10]
    assert output["max_rel_error"] < 1e-4  # against onnxruntime, run in the image on the same inputs
    assert output["reference_max"] > 0


def test_worker_image_writes_only_to_its_volumes(buildah: Buildah, container, scratch: Path) -> None:
    models = scratch / "models"
    models.mkdir()
    subprocess.run([sys.executable, "-c", MLP, str(models / "mlp.onnx")], check=True)
    volumes = {**_volumes(scratch), "/models": str(models)}
    with container("worker") as ctr:
        runtime = _runtime_writes(buildah, ctr, volumes, ["/models"])
        run = buildah.run(ctr, ["legacygpu", "model", "check", "/models/mlp.onnx", "-o", "json"], volumes=volumes,
                          read_only=["/models"])  # fmt: skip
        written = _written_since_mark(buildah, ctr) - runtime
    assert run.returncode == 0, run.stderr
    assert written == set(), "written outside the declared volumes"
    assert any((scratch / "tmp").rglob("*")), "the kernel caches go to the /tmp volume"


def test_operator_image_serves_the_facade_and_writes_only_to_its_volumes(
    buildah: Buildah, container, scratch: Path
) -> None:
    port = free_port()
    volumes = _volumes(scratch)
    with container("operator") as ctr:
        runtime = _runtime_writes(buildah, ctr, volumes, [])
        argv = buildah.run_argv(ctr, ["legacygpu", "api", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                volumes=volumes)  # fmt: skip
        log = (scratch / "api.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            health = _get_when_up(f"http://127.0.0.1:{port}/cluster/health", proc, scratch / "api.log")
            state = _files_when_there(scratch / "var_lib_legacygpu", {"api-token", "cluster.db"})
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
        written = _written_since_mark(buildah, ctr) - runtime
    assert health.status_code == 200, (scratch / "api.log").read_text()[-2000:]
    body = health.json()
    assert (body["status"], body["backend"], body["workers_active"]) == ("degraded", "local", 0), body
    assert written == set(), "written outside the declared volumes"
    assert state >= {"api-token", "cluster.db"}, "the facade's state goes to the /var/lib/legacygpu volume"


def test_image_sizes_are_within_budget(buildah: Buildah) -> None:
    sizes = {name: buildah.size(image_ref(name)) for name in IMAGES}
    print("image sizes (bytes):", json.dumps(sizes))
    assert sizes["operator"] < sizes["worker"]  # no OpenCL stack, no onnxruntime
    for name, size in sizes.items():
        assert size < SIZE_BUDGET[name], f"{name} image is {size / 1e6:.0f} MB"


def _mark(buildah: Buildah, ctr: str) -> None:
    out = buildah.run(ctr, ["touch", "/.written-mark"], user="0")
    assert out.returncode == 0, out.stderr
    time.sleep(1.1)  # file times have 1 s resolution on some file systems


def _written_since_mark(buildah: Buildah, ctr: str) -> set[str]:
    """Files and folders changed on the image's root file system (not in volumes) since :func:`_mark`."""
    out = buildah.run(ctr, ["find", "/", "-xdev", "-newer", "/.written-mark", "-not", "-path", "/.written-mark"],
                      user="0")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def _runtime_writes(buildah: Buildah, ctr: str, volumes: dict[str, str], read_only: list[str]) -> set[str]:
    """What buildah itself writes for any process (/etc/hosts, /run/.containerenv, mount points); leaves a new mark.

    Kubernetes' runtime writes the same files; what the image's own processes write must be a subset of these.
    """
    _mark(buildah, ctr)
    out = buildah.run(ctr, ["true"], volumes=volumes, read_only=read_only)
    assert out.returncode == 0, out.stderr
    runtime = _written_since_mark(buildah, ctr)
    assert runtime <= {"/", "/etc", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/run", "/run/.containerenv",
                       "/var/lib", *volumes}, runtime  # fmt: skip
    _mark(buildah, ctr)
    return runtime | set(volumes)  # a mount point's own times are its volume's


def _files_when_there(folder: Path, names: set[str], timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not names <= {p.name for p in folder.iterdir()}:
        time.sleep(0.5)
    return {p.name for p in folder.iterdir()}


def _get_when_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the facade exited:\n{log.read_text(errors='replace')[-3000:]}"
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout} s")
