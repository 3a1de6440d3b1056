"""SGEMM on OpenCL with a fused bias + activation epilogue.

Design
------
One parameterised kernel source (``kernels/gemm.cl``) is compiled into a
family of kernels by -D defines collected in :class:`GemmParams`: the
register block of a work-item (``mwi`` rows x ``nwv`` vectors of ``vw``
floats), the work-group shape (``mdimc`` x ``ndimc``), the k-loop unroll
``ku``, and whether tiles are staged in local memory (``local``, with depth
``kwg``; the GPU style of CLBlast's xgemm) or read straight from global
memory through the caches (the style PoCL's CPU device prefers). ``strn``
interleaves a work-item's vectors across the work-group (coalesced loads on
GPUs) instead of keeping them adjacent (one cache line per work-item on CPUs).
``pa``/``pb`` repack A/B into contiguous panels first (no power-of-two
strides, no cache-set aliasing), and ``mfirst`` orders the work-groups down
M so that neighbours in time share one panel of B (better cache reuse).

The kernel computes ``C = act(alpha * A @ B + bias)`` for row-major A (M x K)
and B (K x N). Arbitrary sizes: M is handled inside the kernel (clamped
loads, masked stores), K by a loop tail (or zero-filled local tiles), N by
shifting the last vector of a row left so it ends at N and masking the
stores (B is copied with zero padding only when N is narrower than one
vector). ``trans_a``/``trans_b`` are served by a packing
kernel that writes the transposed operand once per call; a constant
weight is laid out once with :meth:`Gemm.pack_b` and passed as a
:class:`PackedB` (the executor does so for every Conv/MatMul/Gemm weight).

Which parameters run is decided per call from the problem's shape class
(:func:`shape_class`: ``gemv`` M<=4, ``skinny`` M<=16, ``medium`` M<=32, ``square``
otherwise):
the winner the autotuner cached for this device and driver
(:mod:`legacygpu.worker.opencl.tuning`), else :func:`default_params` for the
device's driver stack (:func:`kernel_style`: PoCL's CPU style, llvmpipe's
SIMD lanes, or GPU tiles). Compiled programs are cached per parameter set; the epilogue
(bias or not, which activation) is a run-time argument, so one build serves
every layer of a model, except that sigmoid and tanh need a second build
(``-DTRANS=1``): on llvmpipe an ``exp`` anywhere in the kernel halved the
speed of every GEMM, so the common program leaves them out.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from legacygpu.core.errors import ValidationError

from .device import DeviceContext, DeviceInfo, KernelBuildError
from .graph import ACTIVATION_IDS
from .programs import BUILD_OPTIONS

if TYPE_CHECKING:
    import pyopencl.array as cla

__all__ = [
    "ACTIVATIONS",
    "SHAPE_CLASSES",
    "TRANSCENDENTAL",
    "Gemm",
    "GemmParams",
    "PackedB",
    "TunedParams",
    "default_params",
    "epilogue_args",
    "kernel_source",
    "kernel_style",
    "packed_elems",
    "shape_class",
]

KERNEL_PATH = Path(__file__).with_name("kernels") / "gemm.cl"

# The epilogue's activations: name -> (id, default activation_params). The ids are those of
# every other kernel (graph.ACTIVATION_IDS, kernels/common.cl); gemm.cl implements this subset.
_DEFAULT_PARAMS: dict[str, tuple[float, ...]] = {"leaky_relu": (0.01,), "clip": (float("-inf"), float("inf"))}
ACTIVATIONS: dict[str, tuple[int, tuple[float, ...]]] = {
    name: (ACTIVATION_IDS[name], _DEFAULT_PARAMS.get(name, ()))
    for name in ("none", "relu", "relu6", "sigmoid", "tanh", "leaky_relu", "clip")
}

SHAPE_CLASSES = ("gemv", "skinny", "medium", "square")

# Activations the kernel computes with exp/tanh: only a program built with -DTRANS=1 has them.
TRANSCENDENTAL = frozenset({"sigmoid", "tanh"})
_INF = float("inf")


def epilogue_args(activation: str, act_params: tuple[float, ...]) -> tuple[int, float, float, float]:
    """The kernel's (act, lo, hi, slope) for an activation: every piecewise-linear one is
    ``min(max(x, lo), hi) + slope * min(x, 0)``; sigmoid and tanh go by ``act`` alone."""
    act = ACTIVATIONS[activation][0]
    p0, p1 = (*act_params, 0.0, 0.0)[:2]
    lo, hi, slope = {
        "relu": (0.0, _INF, 0.0),
        "relu6": (0.0, 6.0, 0.0),
        "clip": (p0, p1, 0.0),
        "leaky_relu": (0.0, _INF, p0),
    }.get(activation, (-_INF, _INF, 0.0))
    return act, float(lo), float(hi), float(slope)


@functools.cache
def kernel_source() -> str:
    """The GEMM kernel family's OpenCL source."""
    return KERNEL_PATH.read_text()


def shape_class(m: int, n: int, k: int) -> str:
    """The tuning class of an (M, N, K) problem: ``gemv``, ``skinny``, ``medium`` or ``square``."""
    if m <= 4:
        return "gemv"
    if m <= 16:
        return "skinny"
    if m <= 32:
        return "medium"
    return "square"


@dataclass(frozen=True)
class GemmParams:
    """One member of the kernel family (see the module docstring)."""

    mwi: int = 4
    nwv: int = 1
    vw: int = 8
    mdimc: int = 1
    ndimc: int = 8
    ku: int = 4
    local: bool = False
    kwg: int = 16
    strn: bool = False
    pa: bool = False
    pb: bool = False
    mfirst: bool = False

    @property
    def mwg(self) -> int:
        return self.mwi * self.mdimc

    @property
    def nwg(self) -> int:
        return self.vw * self.nwv * self.ndimc

    def defines(self) -> list[str]:
        return [
            f"-DMWI={self.mwi}",
            f"-DNWV={self.nwv}",
            f"-DVW={self.vw}",
            f"-DMDIMC={self.mdimc}",
            f"-DNDIMC={self.ndimc}",
            f"-DKU={self.ku}",
            f"-DLOCAL={int(self.local)}",
            f"-DKWG={self.kwg}",
            f"-DSTRN={int(self.strn)}",
            f"-DPA={int(self.pa)}",
            f"-DPB={int(self.pb)}",
            f"-DMFIRST={int(self.mfirst)}",
        ]

    def problems(self, info: DeviceInfo | None = None) -> list[str]:
        """Why these parameters cannot run (on ``info``); empty when they can."""
        out = []
        if self.vw not in (1, 2, 4, 8, 16):
            out.append(f"vw={self.vw} is not 1, 2, 4, 8 or 16")
        if min(self.mwi, self.nwv, self.mdimc, self.ndimc, self.ku, self.kwg) < 1:
            out.append("sizes must be >= 1")
        if self.local and self.kwg % self.ku:
            out.append(f"kwg={self.kwg} is not a multiple of ku={self.ku}")
        if info is not None:
            if info.max_work_group_size and self.mdimc * self.ndimc > info.max_work_group_size:
                out.append(f"work-group {self.mdimc}x{self.ndimc} > {info.max_work_group_size}")
            if self.local and 4 * self.kwg * (self.mwg + self.nwg) > info.local_mem_bytes:
                out.append("local tiles exceed local memory")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmParams:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown GEMM parameters: {sorted(unknown)}")
        return cls(**data)

    def short(self) -> str:
        style = f"local kwg={self.kwg}" if self.local else "global"
        return (
            f"{self.mwi}x{self.nwv}x{self.vw} wg={self.mdimc}x{self.ndimc} ku={self.ku} {style}"
            + (" strn" if self.strn else "")
            + (" pa" if self.pa else "")
            + (" pb" if self.pb else "")
            + (" mfirst" if self.mfirst else "")
        )


# Untuned defaults per kernel style (see :func:`kernel_style`).
#
# "cpu" (PoCL), measured on PoCL (skylake-avx512): wide float16 register blocks, tiny
# work-groups, no local memory; B repacked into panels for M > 4.
_CPU_DEFAULTS = {
    "gemv": GemmParams(mwi=1, nwv=8, vw=16, mdimc=1, ndimc=1, ku=4),
    "skinny": GemmParams(mwi=8, nwv=2, vw=16, mdimc=1, ndimc=2, ku=2, pb=True, mfirst=True),
    "medium": GemmParams(mwi=8, nwv=2, vw=16, mdimc=1, ndimc=2, ku=2, pb=True, mfirst=True),
    "square": GemmParams(mwi=8, nwv=2, vw=16, mdimc=1, ndimc=2, ku=2, pb=True, mfirst=True),
}
# "lanes" (rusticl on llvmpipe), measured on llvmpipe (LLVM 15, 256 bits): llvmpipe runs
# 8 work-items as the lanes of one SIMD register and loads global memory lane by lane, so
# PoCL's wide per-work-item vectors (float16 blocks of 256 accumulators) spill and compile
# for minutes, while blocks of up to 64 floats (8 rows x one float8, like CLBlast's best
# set here) make the most of each load; work-groups 8 wide along N. Each is the winner of
# `make tune-rusticl TUNE_ARGS=--quick` (2026-12-07, load 12-19 on 2 cores; the cache it
# saved is docs/tuning/rusticl-llvmpipe.json). For medium, the first tune's
# random sample missed square's 8x1x8 block; with it as the first candidate, a second tune
# of medium (`--classes medium`) picked it in 2x8 work-groups.
_LANES_DEFAULTS = {
    "gemv": GemmParams(mwi=1, nwv=4, vw=2, mdimc=1, ndimc=16, ku=4, strn=True),
    "skinny": GemmParams(mwi=4, nwv=4, vw=1, mdimc=2, ndimc=8, ku=2, strn=True),
    "medium": GemmParams(mwi=8, nwv=1, vw=8, mdimc=2, ndimc=8, ku=2, mfirst=True),
    "square": GemmParams(mwi=8, nwv=1, vw=8, mdimc=4, ndimc=8, ku=2, mfirst=True),
}
# "gpu" (rusticl on radeonsi, Clover, AMD's legacy driver): CLBlast-style local-memory tiles
# and coalesced (strided) vectors. Not measured on a card yet: see docs/opencl-core.md.
_GPU_DEFAULTS = {
    "gemv": GemmParams(mwi=1, nwv=1, vw=4, mdimc=1, ndimc=64, ku=4, local=False, strn=True),
    "skinny": GemmParams(mwi=2, nwv=1, vw=4, mdimc=8, ndimc=32, ku=2, local=True, kwg=16, strn=True),
    "medium": GemmParams(mwi=2, nwv=1, vw=4, mdimc=8, ndimc=32, ku=2, local=True, kwg=16, strn=True),
    "square": GemmParams(mwi=4, nwv=2, vw=4, mdimc=16, ndimc=8, ku=2, local=True, kwg=16, strn=True),
}
_DEFAULTS = {"cpu": _CPU_DEFAULTS, "lanes": _LANES_DEFAULTS, "gpu": _GPU_DEFAULTS}


def kernel_style(info: DeviceInfo) -> str:
    """How the device runs work-items, which decides the kernels that suit it.

    ``cpu``: one work-item is one CPU thread's loop, vectorised along its own
    vectors (PoCL, and other CPU drivers). ``lanes``: a CPU device whose
    work-items are the lanes of a SIMD register (rusticl's llvmpipe), which
    wants what a GPU wants minus the local memory. ``gpu``: everything else.
    """
    if info.device_type != "cpu":
        return "gpu"
    return "lanes" if info.driver_family == "rusticl" else "cpu"


def default_params(info: DeviceInfo, cls: str) -> GemmParams:
    """Untuned parameters for the device's driver stack (see :func:`kernel_style`)."""
    params = _DEFAULTS[kernel_style(info)][cls]
    if params.problems(info):  # a small device: fall back to a tiny work-group
        params = GemmParams(mwi=1, nwv=1, vw=4, mdimc=1, ndimc=1, ku=1)
    return params


@dataclass(frozen=True)
class PackedB:
    """``op(B)`` laid out once for one parameter set; pass it as ``b`` to reuse it.

    Made by :meth:`Gemm.pack_b`. A constant weight packed at load time saves
    the per-call copy that ``pb`` (panels) or ``trans_b`` would otherwise cost.
    """

    array: Any  # pyopencl.array.Array holding the layout the kernel reads
    k: int
    n: int
    params: GemmParams
    ld: int  # row stride of that layout
    nb: int  # columns the kernel may load from (>= n)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def packed_elems(k: int, n: int, params: GemmParams, trans_b: bool = False) -> int:
    """Floats :meth:`Gemm.pack_b` allocates for a K x N ``op(B)`` (0 when B is used in place)."""
    if params.pb or trans_b or n < params.vw:
        return k * _round_up(n, params.nwg)
    return 0


def _elem_offset(arr: cla.Array) -> int:
    if arr.offset % 4:
        raise ValidationError("GEMM operands must be float32 aligned")
    return int(arr.offset // 4)


class TunedParams(Protocol):
    """Where a :class:`Gemm` reads its tuned parameters: the autotuner's
    :class:`~legacygpu.worker.opencl.tuning.TuningCache` (declared here so the kernel family
    does not import its tuner).
    """

    def lookup(self, info: DeviceInfo, cls: str) -> GemmParams | None:
        """The tuned parameters of shape class ``cls`` on this device, or None if never tuned."""
        ...


class Gemm:
    """``C = act(alpha * op(A) @ op(B) + bias[None, :])`` on one device.

    ``tuning`` supplies tuned parameters (the executor and ``legacygpu bench gemm`` pass the
    on-disk cache, ``TuningCache.load_default()``); device defaults are used for classes that
    were never tuned.
    """

    def __init__(self, dctx: DeviceContext, tuning: TunedParams) -> None:
        import pyopencl.tools as cltools

        self.dctx = dctx
        self.tuning = tuning
        self._lock = threading.Lock()
        self._kernels: dict[tuple[Any, ...], Any] = {}
        self._chosen: dict[str, GemmParams] = {}  # shape class -> params, read once from the cache
        self._pool = cltools.MemoryPool(cltools.ImmediateAllocator(dctx.queue))

    # -- parameters and programs -------------------------------------------------

    def params_for(self, m: int, n: int, k: int) -> GemmParams:
        """The parameters a call of this shape runs with (tuned if cached, else the default)."""
        cls = shape_class(m, n, k)
        params = self._chosen.get(cls)
        if params is None:
            tuned = self.tuning.lookup(self.dctx.info, cls)
            params = tuned if tuned is not None else default_params(self.dctx.info, cls)
            self._chosen[cls] = params
        return params

    def kernel(
        self, params: GemmParams, source: str | None = None, *, trans: bool = False, edge: bool = True
    ) -> Any:
        """The compiled ``gemm_nn`` kernel for ``params`` (cached; the epilogue is a run-time argument).

        ``trans``: the program that can also apply sigmoid and tanh (:data:`TRANSCENDENTAL`);
        ``edge``: the one that can store vectors straddling N (needed when N is not a multiple
        of ``params.vw``). Each variant is built on first use: leaving out what a call does not
        need keeps the kernel lean, which on llvmpipe doubled its speed.
        """
        key = (params, source, trans, edge)
        with self._lock:
            kern = self._kernels.get(key)
            if kern is None:
                options = [*params.defines(), f"-DTRANS={int(trans)}", f"-DEDGE={int(edge)}", *BUILD_OPTIONS]
                program = self._build(source or kernel_source(), options)
                kern = program.gemm_nn
                kern.set_scalar_arg_dtypes(
                    [np.int32, np.int32, np.int32, np.int32, np.float32,
                     None, np.int32, np.int32, None, np.int32, np.int32, None, np.int32, np.int32,
                     None, np.int32, np.int32, np.int32, np.float32, np.float32, np.float32]
                )  # fmt: skip
                self._kernels[key] = kern
        return kern

    def _pack_kernel(self) -> Any:
        with self._lock:
            kern = self._kernels.get("pack")  # type: ignore[call-overload]
            if kern is None:
                kern = self._build(kernel_source(), [*GemmParams().defines(), *BUILD_OPTIONS]).gemm_pack
                kern.set_scalar_arg_dtypes([np.int32, np.int32, None, np.int32, np.int32, np.int32, None, np.int32])
                self._kernels["pack"] = kern  # type: ignore[index]
        return kern

    def _build(self, source: str, options: list[str]) -> Any:
        import pyopencl as cl

        try:
            return cl.Program(self.dctx.ctx, source).build(options=options)
        except cl.Error as exc:
            raise KernelBuildError(
                f"GEMM kernel failed to build on {self.dctx.info.name} ({' '.join(options)}): {exc}"
            ) from exc

    # -- running -----------------------------------------------------------------

    def _pack(
        self,
        src: cla.Array,
        rows: int,
        cols: int,
        ld: int,
        trans: bool,
        width: int,
        pcols: int,
        allocator: Any = None,
    ) -> cla.Array:
        """Copy ``op(src)`` (rows x cols) into zero-padded panels ``width`` columns wide."""
        import pyopencl.array as cla

        dst = cla.empty(self.dctx.queue, (rows * pcols,), np.float32, allocator=allocator or self._pool)
        self._pack_kernel()(
            self.dctx.queue, (pcols // width, rows), None,
            rows, cols, src.base_data, _elem_offset(src), ld, int(trans), dst.data, width,
        )  # fmt: skip
        return dst

    def __call__(
        self,
        a: cla.Array,
        b: cla.Array | PackedB,
        *,
        bias: cla.Array | None = None,
        activation: str = "none",
        alpha: float = 1.0,
        trans_a: bool = False,
        trans_b: bool = False,
        out: cla.Array | None = None,
        activation_params: tuple[float, ...] = (),
    ) -> cla.Array:
        m, k, n = self._check(a, b, trans_a, trans_b, bias, out)
        return self.run(
            b.params if isinstance(b, PackedB) else self.params_for(m, n, k), a, b,
            bias=bias, activation=activation, alpha=alpha, trans_a=trans_a, trans_b=trans_b,
            out=out, activation_params=activation_params,
        )  # fmt: skip

    def run(
        self,
        params: GemmParams,
        a: cla.Array,
        b: cla.Array | PackedB,
        *,
        bias: cla.Array | None = None,
        activation: str = "none",
        alpha: float = 1.0,
        trans_a: bool = False,
        trans_b: bool = False,
        out: cla.Array | None = None,
        activation_params: tuple[float, ...] = (),
        source: str | None = None,
    ) -> cla.Array:
        """Like ``__call__`` but with explicit kernel parameters (the autotuner, the executor's planner)."""
        import pyopencl.array as cla

        m, k, n = self._check(a, b, trans_a, trans_b, bias, out)
        if activation not in ACTIVATIONS:
            raise ValidationError(f"unknown activation {activation!r}; one of {sorted(ACTIVATIONS)}")
        defaults = ACTIVATIONS[activation][1]
        act_params = tuple(activation_params) + tuple(defaults[len(activation_params) :])
        act, lo, hi, slope = epilogue_args(activation, act_params)
        queue = self.dctx.queue
        kern = self.kernel(params, source, trans=activation in TRANSCENDENTAL, edge=n % params.vw != 0)

        if params.pa:  # panels of op(A)^T, MWG wide
            m_pad = _round_up(m, params.mwg)
            a = self._pack(a, k, m, m if trans_a else k, not trans_a, params.mwg, m_pad)
        elif trans_a:
            a = self._pack(a, m, k, m, True, k, k)
        if isinstance(b, PackedB):
            if b.params != params:
                raise ValidationError(f"B was packed for {b.params.short()}, not for {params.short()}")
            packed = b
        else:
            packed = self.pack_b(b, params=params, trans_b=trans_b)
        n_pad = _round_up(n, params.nwg)
        if out is None:
            out = cla.empty(queue, (m, n), np.float32)
        bias_buf, bias_off = (bias.base_data, _elem_offset(bias)) if bias is not None else (out.base_data, 0)
        n_groups, m_groups = n_pad // params.nwg, _round_up(m, params.mwg) // params.mwg
        if params.mfirst:
            gsize = (m_groups * params.ndimc, n_groups * params.mdimc)
        else:
            gsize = (n_groups * params.ndimc, m_groups * params.mdimc)
        event = kern(
            queue, gsize, (params.ndimc, params.mdimc),
            m, n, k, packed.nb, float(alpha),
            a.base_data, _elem_offset(a), k,  # (lda is unused for packed panels)
            packed.array.base_data, _elem_offset(packed.array), packed.ld,
            out.base_data, _elem_offset(out), n,
            bias_buf, bias_off, int(bias is not None), act, lo, hi, slope,
        )  # fmt: skip
        out.add_event(event)
        return out

    def pack_b(
        self,
        b: cla.Array,
        *,
        params: GemmParams | None = None,
        trans_b: bool = False,
        m_hint: int = 64,
        allocator: Any = None,
    ) -> PackedB:
        """Lay out ``op(B)`` for ``params`` (default: the parameters for M = ``m_hint``).

        Without ``pb``/``trans_b`` (and N >= the vector width) this is free: B
        is used in place. Keep the result alive as long as it is used. The
        layout is allocated from ``allocator`` (a pyopencl allocator; default:
        this GEMM's memory pool, which keeps freed blocks for reuse, so pass
        a plain one for copies that live as long as a model).
        """
        self._check_array("b", b)
        if b.ndim != 2:
            raise ValidationError(f"B must be 2-D, got {b.shape}")
        k, n = (int(b.shape[1]), int(b.shape[0])) if trans_b else (int(b.shape[0]), int(b.shape[1]))
        params = params or self.params_for(m_hint, n, k)
        n_pad = _round_up(n, params.nwg)
        if params.pb:
            array = self._pack(b, k, n, k if trans_b else n, trans_b, params.nwg, n_pad, allocator)
            return PackedB(array, k, n, params, ld=params.nwg, nb=n_pad)
        if trans_b or n < params.vw:  # narrow B: pad so that every vector load stays inside
            array = self._pack(b, k, n, k if trans_b else n, trans_b, n_pad, n_pad, allocator)
            return PackedB(array, k, n, params, ld=n_pad, nb=n_pad)
        return PackedB(b, k, n, params, ld=n, nb=n)

    @staticmethod
    def _check_array(name: str, arr: cla.Array) -> None:
        if arr.dtype != np.float32:
            raise ValidationError(f"GEMM operand {name} must be float32, got {arr.dtype}")
        if not arr.flags.c_contiguous:
            raise ValidationError(f"GEMM operand {name} must be C-contiguous")

    @classmethod
    def _check(
        cls,
        a: cla.Array,
        b: cla.Array | PackedB,
        trans_a: bool,
        trans_b: bool,
        bias: cla.Array | None,
        out: cla.Array | None,
    ) -> tuple[int, int, int]:
        if isinstance(b, PackedB):
            if trans_b:
                raise ValidationError("trans_b does not apply to a packed B (it was applied when packing)")
            cls._check_array("a", a)
            if a.ndim != 2:
                raise ValidationError(f"GEMM operand a must be 2-D, got {a.shape}")
            m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
            return cls._check_rest(int(m), int(k), b.k, b.n, bias, out)
        for name, arr in (("a", a), ("b", b)):
            cls._check_array(name, arr)
        if a.ndim != 2 or b.ndim != 2:
            raise ValidationError(f"GEMM operands must be 2-D, got {a.shape} and {b.shape}")
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        return cls._check_rest(int(m), int(k), int(k2), int(n), bias, out)

    @classmethod
    def _check_rest(
        cls, m: int, k: int, k2: int, n: int, bias: cla.Array | None, out: cla.Array | None
    ) -> tuple[int, int, int]:
        for name, arr in (("bias", bias), ("out", out)):
            if arr is not None:
                cls._check_array(name, arr)
        if k != k2:
            raise ValidationError(f"GEMM inner dimensions differ: op(A) is {m}x{k}, op(B) is {k2}x{n}")
        if min(m, n, k) < 1:
            raise ValidationError(f"GEMM needs M, N, K >= 1, got {m}, {n}, {k}")
        if bias is not None and bias.shape not in ((n,), (1, n)):
            raise ValidationError(f"bias must have shape ({n},), got {bias.shape}")
        if out is not None and out.shape != (m, n):
            raise ValidationError(f"out must have shape ({m}, {n}), got {out.shape}")
        return int(m), int(k), int(n)
