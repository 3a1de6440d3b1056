"""The API server floor's summary (``legacygpu.testing.apifloor.floor_summary``): what it divides by, and when it
refuses to give a throughput or a ceiling. The drive itself runs against a real API server in
tests/e2e/test_api_floor.py."""

from __future__ import annotations

from legacygpu.testing.apifloor import FloorRun, floor_summary

CPU_MS = {"kube-apiserver": 9000.0, "etcd": 900.0}


def _run(tasks: int = 1000, failures: int = 0, complete: bool = True) -> FloorRun:
    return FloorRun(tasks=tasks, started=0.0, writes_done=8.0, delivered=10.0,
                    failures=[f"task {i}: 500" for i in range(failures)], watch_complete=complete)


def test_a_complete_run_gives_cpu_per_task_its_throughput_and_ceiling() -> None:
    summary = floor_summary(_run(), CPU_MS, {}, lanes=64, workers=8)
    assert summary["valid"] and summary["invalid_because"] == []
    assert summary["cpu_ms_per_task"] == {"kube-apiserver": 9.0, "etcd": 0.9}
    assert summary["tasks_per_second"] == 100.0  # 1,000 tasks over max(writes, deliveries) = 10 s
    assert summary["ceiling_tasks_per_second"] == round(summary["cpus"] * 1000 / 9.9, 1)


def test_failed_tasks_are_not_counted_as_tasks_that_made_every_write_and_void_the_figures() -> None:
    summary = floor_summary(_run(failures=100), CPU_MS, {}, lanes=64, workers=8)
    assert summary["cpu_ms_per_task"]["kube-apiserver"] == 10.0  # 9,000 ms over the 900 that succeeded
    assert not summary["valid"] and summary["invalid_because"] == ["100 task(s) failed"]
    assert summary["tasks_per_second"] is None and summary["ceiling_tasks_per_second"] is None


def test_a_run_whose_watches_missed_events_gives_no_throughput() -> None:
    summary = floor_summary(_run(complete=False), CPU_MS, {}, lanes=64, workers=8)
    assert summary["invalid_because"] == ["the watches did not receive every event"]
    assert summary["tasks_per_second"] is None and summary["ceiling_tasks_per_second"] is None
