"""The allocator thresholds of the facade's process: a large body's memory is reused, not faulted in afresh.

Each case runs in a new interpreter: the thresholds are process-wide and cannot be undone.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")

# What the facade does with a 600 KB body: parts read into new bytes, gathered into a bytearray, copied out.
_REQUESTS = """
import resource, sys, threading
from legacygpu.core.allocator import keep_freed_memory

tuned = keep_freed_memory() if sys.argv[1] == "tuned" else None

def request():
    buffer = bytearray()
    for part in (bytes(256_000), bytes(256_000), bytes(90_000)):
        buffer += part
    body = bytes(buffer)
    del buffer
    return len(body)

def requests():
    for _ in range(5):
        request()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        request()
    print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)

if sys.argv[2] == "thread":  # a worker's serving thread: another arena of the allocator's
    thread = threading.Thread(target=requests)
    thread.start()
    thread.join()
else:
    requests()
"""


def _run(mode: str, thread: str = "main", **env: str) -> tuple[str, float]:
    done = subprocess.run([sys.executable, "-c", _REQUESTS, mode, thread], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    tuned, faults = done.stdout.split()
    return tuned, float(faults)


@pytest.mark.parametrize("thread", ["main", "thread"])
def test_a_large_body_reuses_freed_memory(thread: str) -> None:
    tuned, faults = _run("tuned", thread)
    assert tuned == "True"
    assert faults < 20  # about 150 pages a request are freed and reused, not given back and faulted in again
    _, untuned = _run("default", thread)
    assert untuned >= 100, "glibc's defaults no longer fault per request: the thresholds may be moot"


@pytest.mark.parametrize("env", [
    {"MALLOC_TRIM_THRESHOLD_": str(128 * 1024)},
    {"GLIBC_TUNABLES": f"glibc.malloc.trim_threshold={128 * 1024}"},
    {"GLIBC_TUNABLES": f"glibc.malloc.tcache_count=7:glibc.malloc.mmap_threshold={128 * 1024}"},
], ids=["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES trim", "GLIBC_TUNABLES mmap"])
def test_thresholds_set_in_the_environment_are_kept(env: dict[str, str]) -> None:
    tuned, faults = _run("tuned", **env)
    assert tuned == "False"
    assert faults >= 100  # the operator's (small) threshold stays in force


def test_other_tunables_leave_the_thresholds_to_us() -> None:
    tuned, faults = _run("tuned", GLIBC_TUNABLES="glibc.malloc.tcache_count=7")
    assert tuned == "True"
    assert faults < 20
