"""The C allocator of the facade and the workers: memory freed by one large request kept for the next.

A ``/v2`` request with a 600 KB tensor (SqueezeNet's 1x3x224x224 float32)
makes the facade allocate and free about 2 MB per request: uvloop reads the
socket into new 256 KB ``bytes``, httptools slices each part out, uvicorn
gathers the parts into a ``bytearray`` and copies that out again. With
glibc's default settings those blocks are either ``mmap``-ed one by one (over
128 KB) or, once its dynamic threshold has risen, taken from the top of the
heap, which ``free`` gives back to the kernel as soon as more than twice the
largest block seen is free there. Either way the next request touches fresh
pages: under ``legacygpu bench serve`` at one client the facade took about
150 page faults per request, a large part of what it added to a direct call
to the worker. A worker's serving thread does the same with every body it
reads (its own arena's heap is trimmed alike): about 135 faults a request.

:func:`keep_freed_memory` sets both thresholds once, at process start: blocks
up to :data:`MMAP_THRESHOLD` (twice the default largest request body) come
from the heap, and up to :data:`TRIM_THRESHOLD` of free memory stays at its
top for reuse, where glibc's own heuristic would let it grow to 32 MiB and
64 MiB. Larger bodies are ``mmap``-ed as before. The trim threshold holds per
arena, not per process: glibc gives a thread that finds the arenas in use
another one (up to eight per core, or ``MALLOC_ARENA_MAX``), each with its own
heap, so a process whose busy threads each freed a large block may keep up
to 32 MiB free in each of their arenas. An operator who sets
either threshold, through glibc's ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` or through ``GLIBC_TUNABLES``
(``glibc.malloc.mmap_threshold``, ``glibc.malloc.trim_threshold``), keeps what
they set; with another C library (musl has no ``mallopt``) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 16 << 20
"""Blocks from this size up are ``mmap``-ed and unmapped when freed; smaller ones come from the heap."""
TRIM_THRESHOLD = 32 << 20
"""Free memory at the top of an arena's heap is given back to the kernel only past this much (per arena)."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")
"""The same thresholds as ``GLIBC_TUNABLES`` names them (``name=value`` pairs joined by colons)."""


def keep_freed_memory() -> bool:
    """Set glibc's thresholds (the module's docstring); whether they are now in force.

    False where the C library has no ``mallopt`` or refuses a value, or where the environment already
    sets either threshold (glibc read it at start and it stays).
    """
    if any(name in os.environ for name in _ENVIRONMENT) or _tuned_in_environment():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not done:
        log.warning("the C library refused malloc thresholds of %d and %d bytes", MMAP_THRESHOLD, TRIM_THRESHOLD)
    return done


def _tuned_in_environment() -> bool:
    """Whether ``GLIBC_TUNABLES`` sets either threshold."""
    settings = (item.partition("=")[0].strip() for item in os.environ.get("GLIBC_TUNABLES", "").split(":"))
    return any(name in _TUNABLES for name in settings)
