"""Buffer planning and memory faults (:mod:`legacygpu.worker.opencl.memory`), on PoCL.

Buffer reuse: device values whose lifetimes do not overlap share a slot, so a
chain of ops needs two buffers however long it is. Memory faults: a plan the
device cannot hold is refused before anything is allocated (one buffer too
big, or slots plus weights above the device's memory), and an OpenCL
allocation error at run time becomes a ModelError that drops the plan; in
every case the model keeps serving requests that fit.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from legacygpu.core.errors import ModelError
from legacygpu.worker.opencl import memory
from legacygpu.worker.opencl.executor import OpenCLModel, OpenCLRuntime
from legacygpu.worker.opencl.plan import Plan

WIDTH = 1024
# Softmax is not element-wise, so it keeps the element-wise ops between its
# calls from being fused into one kernel: every op here is its own step.
CHAIN = ("Softmax", "Relu", "Softmax", "Sigmoid", "Softmax", "Tanh")


def _save(path: Path, nodes: list, inits: list | None = None) -> Path:
    from onnx import helper

    graph = helper.make_graph(
        nodes, path.stem, [helper.make_tensor_value_info("x", 1, ["N", WIDTH])],
        [helper.make_tensor_value_info("y", 1, ["N", WIDTH])], initializer=inits or [],
    )  # fmt: skip
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def _chain_model(path: Path) -> Path:
    """x -> Softmax -> Relu -> Softmax -> Sigmoid -> Softmax -> Tanh -> y, each op a separate step."""
    from onnx import helper

    names = ["x", *(f"v{i}" for i in range(len(CHAIN) - 1)), "y"]
    return _save(path, [helper.make_node(op, [a], [b]) for op, a, b in zip(CHAIN, names, names[1:], strict=False)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_NUMPY = {"Softmax": _softmax, "Relu": lambda v: np.maximum(v, 0), "Sigmoid": lambda v: 1 / (1 + np.exp(-v)),
          "Tanh": np.tanh}  # fmt: skip


def _chain_reference(x: np.ndarray) -> np.ndarray:
    for op in CHAIN:
        x = _NUMPY[op](x)
    return x


def _inputs(n: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(n).standard_normal((n, WIDTH)).astype(np.float32)}


def _live_ranges(plan: Plan) -> dict[str, tuple[int, int]]:
    """First and last step touching each slotted value (or an alias of it): an oracle independent of assign()."""
    ranges: dict[str, tuple[int, int]] = {}
    for i, step in enumerate(plan.steps):
        for name in (*step.outputs, *step.scratch, *step.inputs):
            val = plan.values.get(name)
            while val is not None and val.alias_of is not None:
                val = plan.values[val.alias_of]
            if val is not None and val.name in plan.slot_of:
                start, _ = ranges.get(val.name, (i, i))
                ranges[val.name] = (start, i)
    return ranges


def _assert_no_live_overlap(plan: Plan) -> None:
    ranges = _live_ranges(plan)
    by_slot: dict[int, list[str]] = {}
    for name, slot in plan.slot_of.items():
        by_slot.setdefault(slot, []).append(name)
    for slot, names in by_slot.items():
        spans = sorted(ranges[n] + (n,) for n in names)
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            assert end < start, f"{a} and {b} share slot {slot} while both are live"
        need = max(plan.values[n].nbytes for n in names)
        assert plan.slot_sizes[slot] >= need, f"slot {slot} is smaller than {need} bytes"


@pytest.fixture(scope="module")
def runtime(dctx) -> OpenCLRuntime:
    return OpenCLRuntime(dctx)


@pytest.fixture
def chain(runtime: OpenCLRuntime, tmp_path: Path) -> OpenCLModel:
    return runtime.load(_chain_model(tmp_path / "chain.onnx"))


def test_a_chain_of_ops_reuses_two_buffers(chain: OpenCLModel) -> None:
    feeds = _inputs(4)
    np.testing.assert_allclose(chain.run(feeds)["y"], _chain_reference(feeds["x"]), rtol=1e-4, atol=1e-6)
    plan = chain.plan({"x": (4, WIDTH)}).plan
    steps = [s for s in plan.steps if s.kind == "opencl"]
    assert [s.label for s in steps] == list(CHAIN), "the ops were fused: this test needs one step per op"
    # the input copy and six results: seven device values, one buffer each without reuse
    assert len(plan.slot_of) == len(CHAIN) + 1
    assert len(plan.slot_sizes) <= 2
    assert plan.peak_bytes <= 2 * 4 * 4 * WIDTH
    _assert_no_live_overlap(plan)


def test_a_value_read_later_keeps_its_buffer(runtime: OpenCLRuntime, tmp_path: Path) -> None:
    """A residual connection: the first result stays live across three steps and no one overwrites it."""
    from onnx import helper

    nodes = [helper.make_node("Softmax", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Softmax", ["b"], ["c"]), helper.make_node("Softmax", ["c"], ["d"]),
             helper.make_node("Add", ["d", "a"], ["y"])]  # fmt: skip
    model = runtime.load(_save(tmp_path / "residual.onnx", nodes))
    feeds = _inputs(3)
    a = _softmax(feeds["x"])
    want = _softmax(_softmax(np.maximum(a, 0))) + a
    np.testing.assert_allclose(model.run(feeds)["y"], want, rtol=1e-4, atol=1e-6)
    plan = model.plan({"x": (3, WIDTH)}).plan
    _assert_no_live_overlap(plan)
    assert len(plan.slot_sizes) <= 3 < len(plan.slot_of)


def _shrink_device(monkeypatch: pytest.MonkeyPatch, runtime: OpenCLRuntime, **limits: int) -> None:
    """Make the device report less memory than it has (restored after the test)."""
    monkeypatch.setattr(runtime.dctx, "info", dataclasses.replace(runtime.dctx.info, **limits))


def test_plan_above_total_device_memory_is_refused_and_smaller_batches_run(
    chain: OpenCLModel, runtime: OpenCLRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every buffer of the big batch is allowed (4 MiB < 64 MiB) but two of them exceed the 6 MiB total
    _shrink_device(monkeypatch, runtime, global_mem_bytes=6 * 2**20, max_alloc_bytes=64 * 2**20)
    with pytest.raises(ModelError, match=r"needs 8\.0 MiB of device memory .* has 6\.0 MiB") as info:
        chain.run(_inputs(1024))
    assert "smaller batch" in str(info.value)
    assert not chain._plans  # nothing was kept for the refused shapes
    feeds = _inputs(256)  # 1 MiB buffers
    np.testing.assert_allclose(chain.run(feeds)["y"], _chain_reference(feeds["x"]), rtol=1e-4, atol=1e-6)


def test_weights_count_towards_device_memory(
    chain: OpenCLModel, runtime: OpenCLRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = chain.plan({"x": (4, WIDTH)}).plan
    _shrink_device(monkeypatch, runtime, global_mem_bytes=plan.peak_bytes + 4096)
    memory.check(plan, SimpleNamespace(nbytes=4096))  # exactly full: accepted
    with pytest.raises(ModelError, match="of device memory"):
        memory.check(plan, SimpleNamespace(nbytes=4097))


def test_one_buffer_above_the_allocation_limit_is_refused(
    chain: OpenCLModel, runtime: OpenCLRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _shrink_device(monkeypatch, runtime, max_alloc_bytes=2**20)
    with pytest.raises(ModelError, match=r"needs a 4\.0 MiB buffer for .*allocates at most 1\.0 MiB"):
        chain.run(_inputs(1024))
    assert chain.run(_inputs(2))["y"].shape == (2, WIDTH)


def _fail_allocations_from(monkeypatch: pytest.MonkeyPatch, nbytes: int) -> list[int]:
    """Make pyopencl refuse buffers of ``nbytes`` or more as a driver out of memory does; returns the refused sizes."""
    import pyopencl as cl

    real = cl.Buffer
    refused: list[int] = []

    def buffer(ctx: object, flags: int, size: int = 0, hostbuf: object = None) -> object:
        if size >= nbytes:
            refused.append(size)
            raise cl.MemoryError(f"clCreateBuffer failed: MEM_OBJECT_ALLOCATION_FAILURE ({size} bytes)")
        return real(ctx, flags, size) if hostbuf is None else real(ctx, flags, size, hostbuf)

    monkeypatch.setattr(cl, "Buffer", buffer)
    return refused


def test_allocation_failure_at_run_time_is_a_model_error_and_drops_the_plan(
    chain: OpenCLModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = _fail_allocations_from(monkeypatch, 2**20)
    with pytest.raises(ModelError, match=r"cannot allocate 4\.0 MiB on the device for plan buffer"):
        chain.run(_inputs(1024))
    assert refused and not chain._plans
    small = _inputs(8)  # the model keeps serving what fits
    np.testing.assert_allclose(chain.run(small)["y"], _chain_reference(small["x"]), rtol=1e-4, atol=1e-6)
    monkeypatch.undo()  # memory is back: the big batch gets a fresh plan and runs
    big = _inputs(1024)
    np.testing.assert_allclose(chain.run(big)["y"], _chain_reference(big["x"]), rtol=1e-4, atol=1e-6)


def test_out_of_memory_while_enqueueing_is_a_model_error_naming_the_step(
    chain: OpenCLModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drivers that allocate lazily report exhaustion at the first enqueue that touches the buffer."""
    import pyopencl as cl

    feeds = _inputs(4)
    chain.run(feeds)  # buffers bound: the failure below comes from the run itself
    key = next(iter(chain._plans))

    def enqueue_copy(*args: object, **kwargs: object) -> None:
        raise cl.MemoryError("clEnqueueWriteBuffer failed: MEM_OBJECT_ALLOCATION_FAILURE")

    monkeypatch.setattr(cl, "enqueue_copy", enqueue_copy)
    with pytest.raises(ModelError, match=r"OpenCL failed in step 'upload x'.*MEM_OBJECT_ALLOCATION_FAILURE"):
        chain.run(feeds)
    assert key not in chain._plans
    monkeypatch.undo()
    np.testing.assert_allclose(chain.run(feeds)["y"], _chain_reference(feeds["x"]), rtol=1e-4, atol=1e-6)
