"""``python -m legacygpu.core.monitoring [DIR]``: write the dashboards (default charts/legacygpu/dashboards)."""

from __future__ import annotations

import sys
from pathlib import Path

from legacygpu.core.monitoring.dashboards import write_all


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("charts/legacygpu/dashboards")
    for path in write_all(directory):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
