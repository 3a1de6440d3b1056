"""The e2e operator benchmark's CPU accounting from /proc: per process, so a process that ends cannot make a
component's CPU negative (a worker of the run before exiting during the next run's floor did: -0.97 ms/task)."""

from __future__ import annotations

import os
import subprocess
import sys

from legacygpu.testing.bench_operator_e2e import _cpu_seconds, _cpu_used


def test_a_process_that_ended_is_left_out_and_one_that_started_counts_whole() -> None:
    before = {"simulator": {(10, 100): 5.0, (11, 101): 1.0}, "operator": {(20, 50): 2.0}}
    after = {"simulator": {(11, 101): 1.5, (12, 300): 0.25, (10, 400): 0.125},  # pid 10 reused by a new process
             "operator": {(20, 50): 2.5}}
    used = _cpu_used(before, after)
    assert used == {"simulator": 0.5 + 0.25 + 0.125, "operator": 0.5}  # the ended pid 10 took nothing away


def test_a_child_process_is_counted_under_the_pid_it_descends_from() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        reading = _cpu_seconds({"harness": os.getpid(), "nobody": 2**22 + 7})
        mine = {pid for pid, _ in reading["harness"]}
        assert {os.getpid(), child.pid} <= mine
        assert reading["nobody"] == {}
    finally:
        child.communicate(b"")
