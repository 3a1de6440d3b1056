"""The GEMM autotuner and its on-disk cache of winners.

Design
------
:class:`TuningCache` keeps, per device, the winning :class:`GemmParams` for
each shape class. It is stored as one JSON file per device in the cache
directory (``$LEGACYGPU_CACHE_DIR/tuning``, else
``$XDG_CACHE_HOME/legacygpu/tuning``, else ``~/.cache/legacygpu/tuning``),
named after the device's identity: platform, device name and driver version
(a driver update invalidates the winners, as it should). Each entry also
records a hash of the kernel source, so winners tuned for an older kernel
are ignored rather than trusted.

:class:`Autotuner` searches a candidate list per shape class (see
:func:`candidates`) on representative problems: every candidate is compiled
(a build failure is logged as a warning and skipped), run once and compared
with numpy (a wrong result rejects the candidate), then timed (best of a few
runs). The fastest verified candidate wins and is written to the cache.
Progress is reported through a callback (the CLI draws a rich progress bar).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .device import DeviceContext, DeviceInfo, KernelBuildError
from .gemm import SHAPE_CLASSES, Gemm, GemmParams, kernel_source

if TYPE_CHECKING:
    import pyopencl.array as cla

__all__ = [
    "TUNING_PROBLEMS",
    "Autotuner",
    "Candidate",
    "CandidateResult",
    "TuningCache",
    "candidates",
    "default_cache_dir",
    "kernel_hash",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1

# Representative (M, N, K) per shape class: full and --quick.
TUNING_PROBLEMS: dict[str, dict[str, tuple[int, int, int]]] = {
    "full": {"gemv": (1, 2048, 2048), "skinny": (16, 1024, 1024), "square": (1024, 1024, 1024)},
    "quick": {"gemv": (1, 1024, 1024), "skinny": (16, 512, 512), "square": (512, 512, 512)},
}


def default_cache_dir() -> Path:
    """Where tuning results live (see the module docstring)."""
    if os.environ.get("LEGACYGPU_CACHE_DIR"):
        return Path(os.environ["LEGACYGPU_CACHE_DIR"]) / "tuning"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "legacygpu" / "tuning"


def kernel_hash() -> str:
    return hashlib.sha256(kernel_source().encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:60] or "x"


class TuningCache:
    """Tuned GEMM parameters per device and shape class, persisted as JSON."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._data: dict[str, dict[str, Any]] = {}  # cache_key -> file document

    @classmethod
    def load_default(cls) -> TuningCache:
        return cls()

    def path_for(self, info: DeviceInfo) -> Path:
        digest = hashlib.sha256(info.cache_key.encode()).hexdigest()[:8]
        name = f"{_slug(info.platform)}__{_slug(info.name)}__{_slug(info.driver_version)}__{digest}.json"
        return self.directory / name

    def _doc(self, info: DeviceInfo) -> dict[str, Any]:
        doc = self._data.get(info.cache_key)
        if doc is None:
            doc = {"format": CACHE_FORMAT, "platform": info.platform, "device": info.name,
                   "driver": info.driver_version, "entries": {}}  # fmt: skip
            path = self.path_for(info)
            if path.is_file():
                try:
                    loaded = json.loads(path.read_text())
                    if loaded.get("format") == CACHE_FORMAT and isinstance(loaded.get("entries"), dict):
                        doc = loaded
                    else:
                        log.warning("ignoring tuning cache %s: unknown format", path)
                except (OSError, ValueError) as exc:
                    log.warning("ignoring unreadable tuning cache %s: %s", path, exc)
            self._data[info.cache_key] = doc
        return doc

    def entry(self, info: DeviceInfo, cls: str) -> dict[str, Any] | None:
        """The raw cached entry for a shape class, if it matches the current kernel."""
        entry = self._doc(info)["entries"].get(cls)
        if not isinstance(entry, dict) or entry.get("kernel") != kernel_hash():
            return None
        return entry

    def lookup(self, info: DeviceInfo, cls: str) -> GemmParams | None:
        entry = self.entry(info, cls)
        if entry is None:
            return None
        try:
            params = GemmParams.from_dict(entry["params"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring bad tuning entry for %s/%s: %s", info.name, cls, exc)
            return None
        return None if params.problems(info) else params

    def store(self, info: DeviceInfo, cls: str, params: GemmParams, **extra: Any) -> None:
        self._doc(info)["entries"][cls] = {
            "params": params.to_dict(), "kernel": kernel_hash(), "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }  # fmt: skip

    def save(self, info: DeviceInfo) -> Path:
        path = self.path_for(info)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._doc(info), indent=2, sort_keys=True))
        tmp.replace(path)
        return path
