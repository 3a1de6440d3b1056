"""`legacygpu bench local` runs end to end on a tiny workload and writes its JSON and PNG."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def test_bench_local_smoke(demo_repository: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"
    result = subprocess.run(
        [sys.executable, "-m", "legacygpu.cli", "bench", "local", "--tasks", "20", "--workers", "1",
         "--concurrency", "2", "--probe", "3", "--batch-size", "5", "--out-dir", str(out_dir),
         "--models-from", str(demo_repository)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [report_path] = list(out_dir.glob("*.json"))
    assert list(out_dir.glob("*.png")), "a plot is saved next to the JSON"
    report = json.loads(report_path.read_text())
    assert report["cluster"]["succeeded"] == 20 and report["cluster"]["failed"] == 0
    assert report["cluster"]["throughput_per_second"] > 0 and report["direct"]["throughput_per_second"] > 0
    assert report["agreement"] == 1.0, "the cluster answers what onnxruntime answers"
    assert len(report["raw"]["cluster_latency_ms"]) == 20
    mode = "submit-many, 5 tasks per request"
    assert report["cluster"]["submit_mode"] == report["overhead"]["throughput_mode"] == mode
    single = report["one_per_request"]
    assert single["submit_mode"] == "one task per request" and single["cluster"]["succeeded"] == 20
    assert single["agreement"] == 1.0 and single["overhead"]["throughput_ratio_direct_over_cluster"] > 0
    assert "cluster throughput (one task per request)" in result.stdout
    assert report["config"]["warmup_tasks"] == 20, "a warm-up before the first measured run"
    assert "warm-up (20 tasks, not measured), then one task per request, then " + mode in result.stdout
    for each in ("one task per request", mode):  # every run's own counts and agreement, labelled
        assert re.search(rf"tasks \(succeeded / failed / retried\) \({re.escape(each)}\) +20 / 0 / 0\n", result.stdout)
        assert f"top-1 agreement cluster vs direct ({each})" in result.stdout
    assert "tasks/s" in result.stdout
    # the direct call paced like the probe's lone tasks: one per probe task, and the overhead over it
    paced = report["direct"]["paced_per_task_ms"]
    assert paced["n"] == 3 and paced["idle_seconds"] > 0 and paced["p50"] > 0
    over = report["overhead"]
    lone = report["cluster"]["unloaded_latency_ms"]["p50"]
    assert over["unloaded_latency_p50_minus_paced_direct_p50_ms"] == lone - paced["p50"]
    assert "one-at-a-time p50 - that paced direct p50" in result.stdout
