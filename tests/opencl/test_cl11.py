"""OpenCL 1.1 for Clover: kernels build as OpenCL C 1.1, the host keeps to 1.1 calls on a 1.1 device.

Clover (Mesa's OpenCL 1.1 frontend) exposes no device without a card, so 1.1 is
held by rules, checked on both platforms here:

* every kernel source (each op family with the shared header, and the GEMM
  family's members of every style) builds with ``-cl-std=CL1.1``, the option
  the core builds with; a 1.2 builtin is rejected under that option on the
  same driver, so the check has teeth;
* with the device's version forced to 1.1 (pyopencl asked, and our
  ``DeviceInfo``), the core (GEMM, the tuner, a model through the executor)
  runs without calling any OpenCL 1.2+ entry point: those of pyopencl's are
  wrapped to record the call and raise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from legacygpu.worker.opencl.device import DeviceContext
from legacygpu.worker.opencl.gemm import SHAPE_CLASSES, Gemm, GemmParams, default_params
from legacygpu.worker.opencl.programs import BUILD_OPTIONS, KERNEL_DIR, Programs
from legacygpu.worker.opencl.tuning import Autotuner, TuningCache

cl = pytest.importorskip("pyopencl")
cla = pytest.importorskip("pyopencl.array")

FAMILIES = sorted(p.stem for p in KERNEL_DIR.glob("*.cl") if p.stem not in ("common", "gemm"))


def test_the_core_builds_as_opencl_c_1_1() -> None:
    assert "-cl-std=CL1.1" in BUILD_OPTIONS
    assert {"conv", "elementwise", "matmul", "norm", "pooling", "shape", "softmax"} <= set(FAMILIES)


def test_a_1_2_builtin_is_rejected_under_the_build_options(dctx) -> None:
    """The option has teeth on this driver: popcount (OpenCL C 1.2) does not build as 1.1."""
    src = "__kernel void f(__global int* x) { x[0] = popcount(x[1]); }"
    cl.Program(dctx.ctx, src).build(options=["-cl-std=CL1.2"])
    with pytest.raises(cl.Error):
        cl.Program(dctx.ctx, src).build(options=list(BUILD_OPTIONS))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_op_family_builds_as_opencl_c_1_1(dctx, family: str) -> None:
    cl.Program(dctx.ctx, Programs(dctx).source(family)).build(options=["-cl-std=CL1.1"])
    program = Programs(dctx).get(family)  # as the executor builds it (raises KernelBuildError if it does not)
    _built_with_cl11(dctx, program)


def _built_with_cl11(dctx, program: Any) -> None:
    options = program.get_build_info(dctx.device, cl.program_build_info.OPTIONS)
    if options:  # rusticl 22.3 reports no build options; PoCL does
        assert "-cl-std=CL1.1" in options


def _styles(dctx) -> list[GemmParams]:
    styles = [dataclasses.replace(dctx.info, device_type=t, platform=p)
              for t, p in (("cpu", "Portable Computing Language"), ("cpu", "rusticl"), ("gpu", "Clover"))]  # fmt: skip
    members = {default_params(info, cls) for info in styles for cls in SHAPE_CLASSES}
    members.add(GemmParams(mwi=4, nwv=1, vw=4, mdimc=8, ndimc=4, ku=4, local=True, kwg=16, pa=True, pb=True))
    # PoCL's 256-accumulator float16 blocks take llvmpipe minutes to compile: PoCL builds them here
    wide = {p for p in members if p.mwi * p.nwv * p.vw > 64}
    return sorted(members - wide if dctx.info.driver_family == "rusticl" else members, key=str)


def test_gemm_family_builds_as_opencl_c_1_1(dctx) -> None:
    gemm = Gemm(dctx, tuning=TuningCache(Path("/nonexistent")))
    source = (KERNEL_DIR / "gemm.cl").read_text()
    for params in _styles(dctx):
        for variant in (["-DTRANS=0", "-DEDGE=1"], ["-DTRANS=1", "-DEDGE=0"]):
            cl.Program(dctx.ctx, source).build(options=[*params.defines(), *variant, "-cl-std=CL1.1"])
        _built_with_cl11(dctx, gemm.kernel(params).program)


# -- host calls ----------------------------------------------------------------------

# pyopencl's entry points that call OpenCL 1.2 or later (in pyopencl._cl, looked up at call time).
_CL12_FUNCTIONS = [
    "_enqueue_marker_with_wait_list", "_enqueue_barrier_with_wait_list", "_enqueue_fill_buffer",
    "enqueue_fill_image", "enqueue_migrate_mem_objects", "link_program", "unload_platform_compiler",
    "enqueue_svm_memcpy", "enqueue_svm_memfill", "enqueue_svm_migratemem", "enqueue_svm_map", "enqueue_svm_unmap",
]  # fmt: skip
_CL12_METHODS = [("Kernel", "get_arg_info"), ("Program", "compile"), ("Device", "create_sub_devices")]


class Cl12Call(AssertionError):
    pass


@pytest.fixture
def opencl_1_1(dctx, monkeypatch: pytest.MonkeyPatch) -> tuple[DeviceContext, list[str]]:
    """``dctx`` as a 1.1 device: pyopencl and DeviceInfo say 1.1, 1.2+ calls are recorded and raise."""
    from pyopencl import _cl

    calls: list[str] = []

    def forbid(name: str, real: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise Cl12Call(f"OpenCL 1.2+ call {name} on a 1.1 device")

        return wrapper

    for name in _CL12_FUNCTIONS:
        if hasattr(_cl, name):
            monkeypatch.setattr(_cl, name, forbid(name, getattr(_cl, name)))
    for cls_name, meth in _CL12_METHODS:
        owner = getattr(cl, cls_name)
        if hasattr(owner, meth):
            monkeypatch.setattr(owner, meth, forbid(f"{cls_name}.{meth}", getattr(owner, meth)))
    for cls_name in ("Platform", "Device", "Context", "CommandQueue"):
        monkeypatch.setattr(getattr(cl, cls_name), "_get_cl_version", lambda self: (1, 1))
    info = dataclasses.replace(dctx.info, opencl_version="OpenCL 1.1 Mesa (forced by the test)")
    forced = DeviceContext(ctx=dctx.ctx, queue=cl.CommandQueue(dctx.ctx, dctx.device), device=dctx.device, info=info)
    assert forced.info.cl_version == (1, 1)
    # the wrappers have teeth: pyopencl's buffer fill is a 1.2 call, and it is caught
    with pytest.raises(Cl12Call):
        cl.enqueue_fill_buffer(forced.queue, cla.empty(forced.queue, 4, np.float32).data, np.float32(0), 0, 16)
    calls.clear()
    return forced, calls


def _small_cnn(path: Path) -> Path:
    """Conv+Relu, MaxPool, Resize, Concat, GlobalAveragePool, Flatten, Gemm, Softmax: most op families."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Concat", ["u", "r"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)  # fmt: skip
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_host_uses_only_opencl_1_1_calls_on_a_1_1_device(opencl_1_1, tmp_path: Path) -> None:
    from legacygpu.worker.backends import create_backend
    from legacygpu.worker.opencl.executor import OpenCLRuntime

    dctx, calls = opencl_1_1
    q = dctx.queue
    rng = np.random.default_rng(0)
    # GEMM: defaults, packed panels, transposes, a packed weight
    gemm = Gemm(dctx, tuning=TuningCache(tmp_path / "tuning"))
    a, b, bias = (rng.standard_normal(s).astype(np.float32) for s in ((37, 29), (29, 45), (45,)))
    got = gemm(cla.to_device(q, a), cla.to_device(q, b), bias=cla.to_device(q, bias), activation="relu").get()
    np.testing.assert_allclose(got, np.maximum(a @ b + bias, 0), rtol=1e-4, atol=1e-4)
    got = gemm(cla.to_device(q, np.ascontiguousarray(a.T)), cla.to_device(q, np.ascontiguousarray(b.T)),
               trans_a=True, trans_b=True).get()  # fmt: skip
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4)
    # the tuner, one candidate per class
    Autotuner(dctx, TuningCache(tmp_path / "tuned"), repeats=1, min_seconds=0.0, confirm_tolerance=float("inf")).tune(
        ["gemv"], count=1, refine=0, problems={"gemv": (1, 64, 64)}
    )
    # a model through the executor
    path = _small_cnn(tmp_path / "cnn.onnx")
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    model = OpenCLRuntime(dctx).load(path)
    got = model.run({"x": x})["y"]
    want = create_backend("onnxruntime").load(path).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)
    assert {r.placement for r in model.plan({"x": x.shape}).plan.reports} == {"opencl"}
    assert calls == []
