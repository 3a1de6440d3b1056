"""``legacygpu bench docs``: the benchmark tables in the docs, rendered from the JSON committed beside them.

Design
------
A table in a Markdown file is a block between two comments::

    <!-- bench-table docs/benchmarks/gemm-pocl/gemm.json make=bench-gemm-pocl -->
    ... generated ...
    <!-- /bench-table -->

The opening comment names the JSON (relative to the repository root) and the
``make`` target that produced it. :func:`render` turns a JSON record into the
block's Markdown: one line naming the command, device, date and load
average, then the table. The renderer is chosen by the JSON's file name
(:data:`RENDERERS`; an earlier run kept beside the latest, ``serve-<name>.json``,
renders as ``serve.json``). ``legacygpu bench docs`` rewrites every block in
README.md and docs/ (so regenerating the docs after a run is one command);
``--check`` only reports blocks that differ, and
tests/unit/test_docs_benchmarks.py fails on them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

__all__ = [
    "BLOCK", "RENDERERS", "blocks", "command", "markdown_files", "render", "render_file", "render_local",
    "render_operator", "render_serve",
]  # fmt: skip

BLOCK = re.compile(
    r"(?P<open><!-- bench-table (?P<json>\S+) make=(?P<make>\S+) -->\n)(?P<body>.*?)(?P<close><!-- /bench-table -->)",
    re.DOTALL,
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}"


def _ms(value: Any) -> str:
    """A time in ms: whole numbers with thousands separators from 100 up, else 3 significant digits."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ratio(median: Any, q1: Any, q3: Any, within_noise: Any) -> str:
    if median is None:
        return "-"
    text = f"{_num(median)}x ({_num(q1)}-{_num(q3)})"
    return f"{text}, within noise" if within_noise else f"**{text}**"


def _load(meta: dict[str, Any]) -> str:
    before, after = meta.get("load_average_before") or ["?"], meta.get("load_average_after") or ["?"]
    return f"load average (1 min) {before[0]} before, {after[0]} after, on {meta.get('cpu_count', '?')} CPUs"


def render_gemm(record: dict[str, Any], make: str) -> str:
    meta, sweep = record["meta"], record.get("sweep") or {}
    best = ", ".join(f"{cls}: `{name}`" for cls, name in sorted((sweep.get("best") or {}).items())) or "none"
    opts = meta["options"]
    sizes = opts["sizes"] or "''"
    args = [f"--sizes {sizes}", "--inference" if opts["inference"] else "--no-inference"]
    args += [f"--shapes {opts['shapes']}"] if opts.get("shapes") else []
    args += [f"--repeats {opts['repeats']}"] + ([f"--platform {opts['platform']}"] if opts.get("platform") else [])
    if opts.get("clblast_sweep_from"):
        args.append(f"--clblast-sweep-from {opts['clblast_sweep_from']}")
        best += f" (the sweep of the run started {sweep.get('reused_from_started')}, reused)"
    lines = [
        f"Made by `legacygpu bench gemm {' '.join(args)}` (`make {make}` reruns it) on {meta['device']} "
        f"({meta['platform']} {meta['driver']}), started {meta['started']}, {meta['seconds']} s; {_load(meta)}. "
        f"CLBlast parameter sets that won the sweep: {best}.",
        "",
        "| M | N | K | ours GFLOPS (min-max) | CLBlast GFLOPS (min-max) | CLBlast kernel | numpy GFLOPS (min-max) "
        "| ours / CLBlast (IQR) | ours / numpy (IQR) | rounds | load |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        cells = [str(r["m"]), str(r["n"]), str(r["k"])]
        for who in ("ours", "clblast", "numpy"):
            g = r[f"{who}_gflops"]
            lo, hi = r[f"{who}_gflops_min"], r[f"{who}_gflops_max"]
            cells.append("-" if g is None else f"{_num(g)} ({_num(lo)}-{_num(hi)})")
            if who == "clblast":
                cells.append("-" if g is None else f"s{r['clblast_routine']} `{r['clblast_candidate']}`")
        for ref in ("clblast", "numpy"):
            cells.append(_ratio(r[f"ours_vs_{ref}"], r[f"ours_vs_{ref}_q1"], r[f"ours_vs_{ref}_q3"],
                                r[f"ours_vs_{ref}_within_noise"]))  # fmt: skip
        cells += [str(r["rounds"]), f"{r['load_average_before'][0]} → {r['load_average_after'][0]}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_model(record: dict[str, Any], make: str) -> str:
    meta, rows = record["meta"], record["rows"]
    opts = meta["options"]
    device = next((r["device"] for r in rows if r["backend"] == "opencl"), "?")
    lines = [
        f"Made by `legacygpu bench model` with models {','.join(opts['models'])}, batches "
        f"{','.join(map(str, opts['batches']))}, at least {opts['repeats']} rounds within {opts['budget_s']} s "
        f"(`make {make}` reruns it); OpenCL device: {device}, onnxruntime on the same CPU; started "
        f"{meta['started']}, {meta['seconds']} s; {_load(meta)}.",
        "",
        "| model | batch | OpenCL ms (min-max) | onnxruntime ms (min-max) | rounds | OpenCL / onnxruntime (IQR) "
        "| OpenCL FLOP share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["model"], r["batch"], r["backend"]): r for r in rows}
    for (model, batch, backend), ocl in by_key.items():
        if backend != "opencl":
            continue
        ort = by_key[model, batch, "onnxruntime"]
        if ocl["error"]:
            reason = ocl["error"].split(": [")[0][:80]
            lines.append(f"| {model} | {batch} | not runnable: {reason} | | | | |")
            continue
        cells = [model, str(batch)]
        for r in (ocl, ort):
            cells.append(f"{_ms(r['latency_ms'])} ({_ms(r['latency_ms_min'])}-{_ms(r['latency_ms_max'])})")
        cells.append(str(ocl["runs"]))
        cells.append(_ratio(ocl["ratio_vs_onnxruntime"], ocl["ratio_q1"], ocl["ratio_q3"], ocl["within_noise"]))
        cells.append(f"{100 * ocl['opencl_flop_share']:.1f} %")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_TARGET_TEXT = {
    "facade_over_ray_throughput": "facade throughput over Ray Serve's (better batching setting of each)",
    "facade_overhead_p50_ms": "facade p50 minus worker p50, ms (batching off)",
    "batching_throughput_gain": "facade throughput, batching on over off",
}


def render_serve(record: dict[str, Any], make: str) -> str:
    host = record["host"]
    load = (f"load average (1 min) {host['load_before'][0]:.1f} before, {host['load_after'][0]:.1f} after, "
            f"on {host['cpu_count']} CPUs")  # fmt: skip
    ray = f"Ray Serve {record['ray_version']}" if record.get("ray_version") else "no Ray Serve"
    lines = [
        f"Made by `{record['command'].strip()}` (`make {make}` reruns it), {record['seconds_per_point']:g} s per "
        f"point, {ray}; started {record['started']}, {record['seconds']} s; {load}.",
        "",
        "| model | target | batching | clients | req/s | p50 ms (p25-p75) | p99 ms | errors | load after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, series in record["results"].items():
        for target, points in series.items():
            server, _, batching = target.partition("/")
            for p in points:
                setting = batching.removeprefix("batching-")
                if "batch" in p:  # an in-process ceiling: one caller, images per call; req/s counts images
                    setting = f"{setting.removesuffix('-batch')}, {p['batch']} per call"
                lines.append(
                    f"| {model} | {server} | {setting} | {p['concurrency']} "
                    f"| {_ms(p['throughput_rps'])} | {_ms(p['p50_ms'])} ({_ms(p['p25_ms'])}-{_ms(p['p75_ms'])}) "
                    f"| {_ms(p['p99_ms'])} | {p['errors']} | {p['load_after']:.1f} |"
                )
    lines += ["", "| issue 10 target | model | clients | ours | reference | measured | wanted | met |",
              "|---|---|---:|---|---|---:|---|---|"]  # fmt: skip
    from legacygpu.cli.bench_serve import target_notes, targets

    for t in targets(record["results"]):  # from the points, by the code of this commit
        measured = _num(t["value"]) + ("x" if t["name"] != "facade_overhead_p50_ms" else " ms")
        if "p50_ms" in t:
            measured += f" (p50 {_ms(t['p50_ms'][0])} vs {_ms(t['p50_ms'][1])} ms)"
        measured += target_notes(t)
        if t.get("within_noise"):
            measured += f", within noise (IQR {_ms(t['noise_ms'])} ms)"
        lines.append(f"| {_TARGET_TEXT.get(t['name'], t['name'])} | {t['model']} | {t['concurrency']} | {t['ours']} "
                     f"| {t['reference']} | {measured} | {t['threshold']} | {'**yes**' if t['met'] else 'no'} |")
    return "\n".join(lines)


def render_operator(record: dict[str, Any], make: str) -> str:
    """The operator's end-to-end run (``bench operator --mode e2e``) as a two-column table."""
    writes, rss = record["api_writes"], record["operator_rss_mib_by_finished_tasks"]
    before, after = record["load_average"]["before"][0], record["load_average"]["after"][0]
    rows = [
        ("tasks, failed", f"{record['tasks']:,}, {record['failed']}"),
        ("workers (task slots each)", f"{record['workers']} ({record['tasks_per_worker']})"),
        ("throughput, first creation to last completion", f"{record['tasks_per_second']:.3g} tasks/s"),
        (f"creating the {record['tasks']:,} tasks alone", f"{record['creation_seconds']:.1f} s"),
        ("create → `Scheduled` p50 / p99",
         f"{record['assignment_seconds']['p50']:.0f} s / {record['assignment_seconds']['p99']:.0f} s"),
        ("create → `Succeeded` p50 / p99",
         f"{record['end_to_end_seconds']['p50']:.0f} s / {record['end_to_end_seconds']['p99']:.0f} s"),
        *([("a task slot's cycle, p50: scheduled → running → finished → next task scheduled",
            " → ".join(f"{stages[k]['p50']:.3g} s" for k in ("scheduled_to_running", "running_to_finished",
                                                              "finished_to_next_scheduled")))]
          if (stages := record.get("stage_seconds")) else []),
        *([("CPU per task, by process", ", ".join(f"{name} {ms:.3g} ms" for name, ms in
                                                  sorted(cpu.items(), key=lambda kv: -kv[1])))]
          if (cpu := record.get("cpu_ms_per_task")) else []),
        ("writes to InferenceTasks per task besides the create", f"{writes['task_writes_per_task']:.3f}"),
        ("operator peak RSS", f"{record['operator_peak_rss_mib']:.1f} MiB"),
        (f"operator RSS at {rss[0][0]:,} / {rss[-1][0]:,} finished tasks",
         f"{rss[0][1]:.1f} / {rss[-1][1]:.1f} MiB (slope {record['operator_rss_slope_mib_per_1000_finished']:.3g} "
         "MiB per 1,000)"),
        ("reference: TaskRunner direct, same inputs, same run", f"{record['reference_tasks_per_second']:.1f} tasks/s"),
        *(_floor_rows(floor) if (floor := record.get("floor")) else []),
        (f"target {record['target_tasks_per_second']} tasks/s", "**met**" if record["target_met"] else "not met"),
    ]  # fmt: skip
    lines = [
        f"Made by `make {make}` on {record['machine']['api_server']}, {record['machine']['cpus']} CPUs, "
        f"load average (1 min) {before:.1f} before, {after:.1f} after.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines)


def _floor_rows(floor: dict[str, Any]) -> list[tuple[str, str]]:
    """The API server's floor measured before the run (``legacygpu.testing.apifloor``)."""
    cpu = floor["cpu_ms_per_task"]
    if not floor.get("valid", True):  # runs before the check was recorded were all complete
        return [("API server floor", "not valid: " + "; ".join(floor["invalid_because"]))]
    return [
        (f"API server floor: the same create, {floor['writes_per_task']['status']} status writes and watches, "
         "no operator or workers",
         f"{floor['tasks_per_second']:.3g} tasks/s ({floor['client_lanes']} client pipelines, "
         f"{floor['failed']} failed)"),
        ("floor CPU per task", f"kube-apiserver {cpu['kube-apiserver']:.3g} ms, etcd {cpu['etcd']:.3g} ms"),
        (f"floor ceiling on {floor['cpus']} CPUs (their CPU alone, nothing else running)",
         f"{floor['ceiling_tasks_per_second']:.3g} tasks/s"),
    ]  # fmt: skip


def render_local(record: dict[str, Any], make: str) -> str:
    """``bench local``: the local cluster's task path against onnxruntime called directly, with issue 10's targets."""
    cluster, direct, over, cfg = record["cluster"], record["direct"], record["overhead"], record["config"]
    host = record["host"]
    ratio, extra = over["throughput_ratio_direct_over_cluster"], over["unloaded_latency_p50_minus_direct_p50_ms"]
    # Runs before submit-many was measured name no mode: their one run was one task per request.
    mode = f" ({cluster['submit_mode']})" if "submit_mode" in cluster else ""
    single = record.get("one_per_request")
    rows = [
        ("tasks (succeeded, failed, retried)",
         f"{cfg['tasks']:,} ({cluster['succeeded']:,}, {cluster['failed']}, {cluster['retried']})"),
        ("workers, submitting clients", f"{cfg['workers']}, {cfg['concurrency']}"),
        (f"cluster throughput{mode}, first submit to last completion",
         f"{_ms(cluster['throughput_per_second'])} tasks/s"),
        *([(f"cluster throughput ({single['submit_mode']}), first submit to last completion",
            f"{_ms(single['cluster']['throughput_per_second'])} tasks/s "
            f"(direct / cluster {single['overhead']['throughput_ratio_direct_over_cluster']:.3g}x)")]
          if single else []),
        ("onnxruntime direct, same inputs and processing, same run", f"{_ms(direct['throughput_per_second'])} tasks/s"),
        (f"submit → done p50 / p99 under load{mode}",
         f"{_ms(cluster['latency_ms']['p50'])} / {_ms(cluster['latency_ms']['p99'])} ms"),
        (f"one task at a time ({cluster['unloaded_latency_ms']['n']} tasks): p50 / p99",
         f"{_ms(cluster['unloaded_latency_ms']['p50'])} / {_ms(cluster['unloaded_latency_ms']['p99'])} ms "
         f"(direct p50 {_ms(direct['per_task_ms']['p50'])} ms)"),
        *([("a lone task's p50 stages: submitted → placed → pushed (Running) → done; the model's part",
            " → ".join(_ms(stages[k]) for k in ("submitted_to_placed", "placed_to_pushed", "pushed_to_done"))
            + f" ms; {_ms(stages['model'])} ms")] if (stages := cluster.get("unloaded_stages_ms")) else []),
        ("answers equal to the direct call's", f"{record['agreement']:.1%}"),
        (f"issue 10 target: direct / cluster throughput ≤ 3{mode}",
         f"{ratio:.3g}x: {'**met**' if ratio <= 3 else 'not met'}"),
        ("issue 10 target: one-at-a-time p50 minus direct p50 ≤ 2 ms",
         f"{_ms(extra)} ms: {'**met**' if extra <= 2 else 'not met'}"),
        *([("beside it: the direct call paced like the lone tasks (each after "
            f"{direct['paced_per_task_ms']['idle_seconds'] * 1000:.0f} ms idle), p50; one-at-a-time p50 minus it",
            f"{_ms(direct['paced_per_task_ms']['p50'])} ms; "
            f"{_ms(over['unloaded_latency_p50_minus_paced_direct_p50_ms'])} ms")]
          if direct.get("paced_per_task_ms", {}).get("n") else []),
    ]  # fmt: skip
    lines = [
        f"Made by `make {make}` ({cfg['model']}, onnxruntime {host['onnxruntime']}); started {record['started']}; "
        f"load average (1 min) {host['load_before'][0]:.1f} before, {host['load_after'][0]:.1f} after, "
        f"on {host['cpu_count']} CPUs.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[dict[str, Any], str], str]] = {
    "bench-local.json": render_local,
    "gemm.json": render_gemm,
    "bench-model.json": render_model,
    "serve.json": render_serve,
    "operator-bench-e2e.json": render_operator,
}


def render(root: Path, json_path: str, make: str) -> str:
    """The Markdown for the block naming ``json_path`` (relative to ``root``) and ``make``."""
    path = Path(json_path)
    name = path.name if path.name in RENDERERS else f"{path.stem.partition('-')[0]}{path.suffix}"  # serve-<x>.json
    if name not in RENDERERS:
        raise click.ClickException(f"no renderer for {json_path} (known: {', '.join(RENDERERS)})")
    record = json.loads((root / json_path).read_text())
    return RENDERERS[name](record, make)


def markdown_files(root: Path) -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]


def blocks(text: str) -> Iterator[re.Match[str]]:
    return BLOCK.finditer(text)


def render_file(root: Path, path: Path) -> str:
    """``path``'s text with every block re-rendered."""

    def one(match: re.Match[str]) -> str:
        body = render(root, match["json"], match["make"])
        return f"{match['open']}{body}\n{match['close']}"

    return BLOCK.sub(one, path.read_text())


@click.command("docs")
@click.option("--root", type=click.Path(file_okay=False, exists=True, path_type=Path), default=Path("."),
              show_default=True, help="The repository root.")  # fmt: skip
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a table differs from its JSON.")
def command(root: Path, check: bool) -> None:
    """Regenerate the benchmark tables in README.md and docs/ from the JSON committed beside them."""
    stale = []
    for path in markdown_files(root):
        old = path.read_text()
        new = render_file(root, path)
        if new != old:
            stale.append(path)
            if not check:
                path.write_text(new)
    verb = "differ from their JSON" if check else "rewritten"
    click.echo(f"{len(stale)} file(s) {verb}" + "".join(f"\n  {p}" for p in stale))
    if check and stale:
        raise SystemExit(1)
