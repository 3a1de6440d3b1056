"""SGEMM against numpy on PoCL: odd shapes, every epilogue, transposes, the kernel family."""

from __future__ import annotations

import numpy as np
import pytest

from legacygpu.core.errors import ValidationError
from legacygpu.worker.opencl.gemm import (
    ACTIVATIONS,
    TRANSCENDENTAL,
    Gemm,
    GemmParams,
    epilogue_args,
    kernel_style,
    shape_class,
)
from legacygpu.worker.opencl.tuning import TuningCache

cla = pytest.importorskip("pyopencl.array")


@pytest.fixture(scope="module")
def gemm(dctx, tmp_path_factory):
    # An empty cache directory: the untuned device defaults are under test.
    return Gemm(dctx, tuning=TuningCache(tmp_path_factory.mktemp("tuning")))


RNG = np.random.default_rng(42)


def _mats(m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        RNG.uniform(-1, 1, (m, k)).astype(np.float32),
        RNG.uniform(-1, 1, (k, n)).astype(np.float32),
        RNG.uniform(-1, 1, n).astype(np.float32),
    )


def _close(got: np.ndarray, want: np.ndarray, k: int) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6 * max(1, k) ** 0.5 * 4)


SHAPES = [
    (1, 1, 1), (1, 1, 7), (2, 3, 1), (17, 33, 65), (1, 4096, 33), (3, 77, 45), (31, 5, 129),
    (33, 129, 257), (64, 64, 64), (100, 96, 200), (129, 65, 3), (257, 31, 17),
]  # fmt: skip


@pytest.mark.parametrize(("m", "n", "k"), SHAPES)
def test_default_params_match_numpy(dctx, gemm, m, n, k) -> None:
    a, b, bias = _mats(m, n, k)
    q = dctx.queue
    got = gemm(cla.to_device(q, a), cla.to_device(q, b), bias=cla.to_device(q, bias)).get()
    _close(got, a.astype(np.float64) @ b + bias, k)


FAMILY = [
    GemmParams(mwi=1, nwv=1, vw=1, mdimc=1, ndimc=1, ku=1),
    GemmParams(mwi=3, nwv=2, vw=2, mdimc=2, ndimc=3, ku=3),
    GemmParams(mwi=8, nwv=2, vw=16, mdimc=2, ndimc=2, ku=2, pa=True, pb=True),
    GemmParams(mwi=4, nwv=1, vw=8, mdimc=4, ndimc=4, ku=4, pb=True),
    GemmParams(mwi=2, nwv=2, vw=4, mdimc=4, ndimc=8, ku=2, local=True, kwg=8, strn=True),
    GemmParams(mwi=4, nwv=1, vw=4, mdimc=8, ndimc=4, ku=4, local=True, kwg=16, pa=True, pb=True),
    GemmParams(mwi=1, nwv=2, vw=8, mdimc=1, ndimc=16, ku=8, strn=True),
    GemmParams(mwi=3, nwv=1, vw=8, mdimc=2, ndimc=2, ku=2, pb=True, mfirst=True),
    GemmParams(mwi=2, nwv=1, vw=4, mdimc=8, ndimc=8, ku=2, local=True, kwg=8, strn=True, mfirst=True),
]


@pytest.mark.parametrize("params", FAMILY, ids=lambda p: p.short().replace(" ", "_"))
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (17, 33, 65), (70, 130, 37), (33, 96, 37)])
def test_kernel_family_members_match_numpy(dctx, gemm, params, m, n, k) -> None:
    """GPU-style (local memory, strided) and CPU-style members are all correct, edges included."""
    if kernel_style(dctx.info) == "lanes" and params.mwi * params.nwv * params.vw > 64:
        pytest.skip("llvmpipe compiles a 256-accumulator float16 block for minutes; it is a PoCL-only member")
    a, b, bias = _mats(m, n, k)
    q = dctx.queue
    got = gemm.run(params, cla.to_device(q, a), cla.to_device(q, b), bias=cla.to_device(q, bias),
                   activation="relu").get()  # fmt: skip
    _close(got, np.maximum(a.astype(np.float64) @ b + bias, 0), k)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


EPILOGUES = [
    ("none", (), lambda x: x),
    ("relu", (), lambda x: np.maximum(x, 0)),
    ("relu6", (), lambda x: np.clip(x, 0, 6)),
    ("sigmoid", (), _sigmoid),
    ("tanh", (), np.tanh),
    ("leaky_relu", (), lambda x: np.where(x > 0, x, 0.01 * x)),
    ("leaky_relu", (0.2,), lambda x: np.where(x > 0, x, 0.2 * x)),
    ("clip", (-0.5, 0.25), lambda x: np.clip(x, -0.5, 0.25)),
    ("clip", (), lambda x: x),
]


@pytest.mark.parametrize(("activation", "act_params", "ref"), EPILOGUES)
@pytest.mark.parametrize(("m", "n", "k"), [(5, 19, 23), (40, 72, 50)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_epilogues(dctx, gemm, activation, act_params, ref, m, n, k, with_bias) -> None:
    a, b, bias = _mats(m, n, k)
    q = dctx.queue
    got = gemm(
        cla.to_device(q, a), cla.to_device(q, b), bias=cla.to_device(q, bias) if with_bias else None,
        activation=activation, activation_params=act_params, alpha=1.5,
    ).get()  # fmt: skip
    pre = 1.5 * (a.astype(np.float64) @ b) + (bias if with_bias else 0)
    _close(got, ref(pre), k)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 9, 5), (17, 33, 65), (48, 64, 40)])
def test_transposes(dctx, gemm, trans_a, trans_b, m, n, k) -> None:
    a, b, _ = _mats(m, n, k)
    q = dctx.queue
    a_dev = cla.to_device(q, np.ascontiguousarray(a.T) if trans_a else a)
    b_dev = cla.to_device(q, np.ascontiguousarray(b.T) if trans_b else b)
    got = gemm(a_dev, b_dev, trans_a=trans_a, trans_b=trans_b).get()
    _close(got, a.astype(np.float64) @ b, k)
    # the packed-panel member takes the transposes through its packing path
    packed = GemmParams(mwi=4, nwv=1, vw=8, mdimc=2, ndimc=2, ku=2, pa=True, pb=True)
    got = gemm.run(packed, a_dev, b_dev, trans_a=trans_a, trans_b=trans_b).get()
    _close(got, a.astype(np.float64) @ b, k)


def test_out_argument_and_offset_views(dctx, gemm) -> None:
    """Results land in ``out``; row slices of bigger buffers (non-zero offsets) are honoured."""
    q = dctx.queue
    a, b, bias = _mats(20, 24, 16)
    big_a = cla.to_device(q, np.vstack([np.full((3, 16), 9, np.float32), a]))
    big_out = cla.zeros(q, (25, 24), np.float32)
    out_view = big_out[5:]
    bias_big = cla.to_device(q, np.concatenate([np.full(4, 9, np.float32), bias]))
    result = gemm(big_a[3:], cla.to_device(q, b), bias=bias_big[4:], out=out_view)
    assert result is out_view
    host = big_out.get()
    _close(host[5:], a.astype(np.float64) @ b + bias, 16)
    assert not host[:5].any(), "rows before the view must be untouched"


def test_bad_input_is_rejected(dctx, gemm) -> None:
    q = dctx.queue
    a = cla.to_device(q, np.ones((4, 5), np.float32))
    b = cla.to_device(q, np.ones((6, 7), np.float32))
    with pytest.raises(ValidationError, match="inner dimensions"):
        gemm(a, b)
    b = cla.to_device(q, np.ones((5, 7), np.float32))
    with pytest.raises(ValidationError, match="unknown activation"):
        gemm(a, b, activation="gelu")
    with pytest.raises(ValidationError, match="float32"):
        gemm(cla.to_device(q, np.ones((4, 5), np.float64)), b)
    with pytest.raises(ValidationError, match="bias"):
        gemm(a, b, bias=cla.to_device(q, np.ones(6, np.float32)))
    with pytest.raises(ValidationError, match="out"):
        gemm(a, b, out=cla.empty(q, (4, 6), np.float32))


def test_shape_classes() -> None:
    assert [shape_class(m, 512, 512) for m in (1, 4, 5, 16, 17, 32, 33, 4096)] == [
        "gemv", "gemv", "skinny", "skinny", "medium", "medium", "square", "square",
    ]  # fmt: skip


def test_epilogue_args_are_one_piecewise_linear_formula() -> None:
    """min(max(x, lo), hi) + slope * min(x, 0) reproduces every activation but sigmoid and tanh."""
    x = np.linspace(-8, 8, 33)
    want = {
        ("relu", ()): np.maximum(x, 0), ("relu6", ()): np.clip(x, 0, 6),
        ("leaky_relu", (0.2,)): np.where(x > 0, x, 0.2 * x), ("clip", (-0.5, 0.25)): np.clip(x, -0.5, 0.25),
    }  # fmt: skip
    for (name, act_params), ref in want.items():
        act, lo, hi, slope = epilogue_args(name, act_params)
        assert act == ACTIVATIONS[name][0] and act != 0
        np.testing.assert_allclose(np.minimum(np.maximum(x, lo), hi) + slope * np.minimum(x, 0), ref)
    assert epilogue_args("none", ())[0] == 0
    assert {"sigmoid", "tanh"} == TRANSCENDENTAL


def test_calls_build_only_the_program_variants_they_need(dctx) -> None:
    """exp/tanh (TRANS) and the lane-by-lane edge store (EDGE) are compiled in only when a call needs
    them: on llvmpipe either one, present but never run, halved the speed of every GEMM."""
    gemm = Gemm(dctx, tuning=TuningCache.in_memory())
    q = dctx.queue
    params = gemm.params_for(64, 64, 16)  # square: float8 or float16 vectors on both platforms
    assert params.vw > 1
    n_even, n_odd = 2 * params.nwg, 2 * params.nwg + 1  # a multiple of the vector width, and not
    for n, activation in ((n_even, "relu"), (n_even, "none"), (n_even, "sigmoid"), (n_odd, "relu")):
        a, b, bias = _mats(64, n, 16)
        got = gemm(cla.to_device(q, a), cla.to_device(q, b), bias=cla.to_device(q, bias), activation=activation)
        ref = {"relu": lambda x: np.maximum(x, 0), "none": lambda x: x, "sigmoid": _sigmoid}[activation]
        _close(got.get(), ref(a.astype(np.float64) @ b + bias), 16)
    built = {key[2:] for key in gemm._kernels if isinstance(key, tuple)}  # (trans, edge) per program
    assert built == {(False, False), (True, False), (False, True)}


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize(
    "params",
    [GemmParams(mwi=4, nwv=1, vw=8, mdimc=2, ndimc=2, ku=2, pb=True, mfirst=True), GemmParams(vw=4, ndimc=2)],
    ids=["panels", "in-place"],
)
def test_packed_b_is_reused_across_calls(dctx, gemm, params, trans_b) -> None:
    """A weight packed once serves many calls (and __call__ runs it with the params it was packed for)."""
    q = dctx.queue
    _, b, bias = _mats(1, 37, 29)
    b_dev = cla.to_device(q, np.ascontiguousarray(b.T) if trans_b else b)
    packed = gemm.pack_b(b_dev, params=params, trans_b=trans_b)
    assert (packed.k, packed.n) == (29, 37)
    for m in (1, 6, 50):
        a = RNG.uniform(-1, 1, (m, 29)).astype(np.float32)
        got = gemm(cla.to_device(q, a), packed, bias=cla.to_device(q, bias), activation="tanh").get()
        _close(got, np.tanh(a.astype(np.float64) @ b + bias), 29)
    other = GemmParams(mwi=2, nwv=1, vw=4, mdimc=1, ndimc=4, ku=1)
    with pytest.raises(ValidationError, match="packed for"):
        gemm.run(other, cla.to_device(q, a), packed)
    with pytest.raises(ValidationError, match="trans_b"):
        gemm(cla.to_device(q, a), packed, trans_b=True)
