"""Draws a dashboard from live query results with matplotlib (Grafana itself cannot run here).

Each panel sits where its ``gridPos`` puts it (24 units wide, Grafana's row height),
timeseries panels plot every series of every target with its legend filled from the
``legendFormat``, stat panels print the last value in the panel's unit. The pictures are
a faithful plot of the data the queries returned, not Grafana's look.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

__all__ = ["Series", "draw", "legend", "with_unit"]

Series = tuple[str, list[float], list[float]]  # legend, unix times, values
_BG, _PANEL, _TEXT, _GRID = "#111217", "#181b1f", "#d8d9da", "#2c3235"
_COLOURS = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a"]


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt in ("", "__auto"):
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return inner or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or "value"


def with_unit(value: float, unit: str) -> str:
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "bytes":
        for size, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.2f} {name}"
        return f"{value:.0f} B"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "hertz":
        return f"{value / 1e6:.0f} MHz"
    suffix = {"celsius": " °C", "watt": " W", "ops": "/s", "reqps": " req/s"}.get(unit, "")
    return f"{value:.3g}{suffix}"


def _axes_for(fig: Any, grid: dict[str, int], rows: int, inner: bool) -> Any:
    """The panel's frame, or (``inner``) the plot area inside it, leaving room for ticks and the title."""
    pad_x, pad_y = 0.003, 0.004
    left = grid["x"] / 24 + pad_x
    width = grid["w"] / 24 - 2 * pad_x
    bottom = 1 - (grid["y"] + grid["h"]) / rows + pad_y
    height = grid["h"] / rows - 2 * pad_y
    if inner:
        left, width = left + 0.045, width - 0.052
        bottom, height = bottom + 0.9 / rows, height - 1.9 / rows
    return fig.add_axes((left, bottom, width, height))


def draw(board: dict[str, Any], data: dict[int, list[Series]], path: Path, subtitle: str) -> None:
    """Draw ``board`` with ``data`` (panel id -> series) into ``path`` (PNG)."""
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"]) + 2  # +2: the title band
    fig = plt.figure(figsize=(18, rows * 0.33), facecolor=_BG)
    fig.text(0.01, 1 - 0.6 / rows, board["title"], color=_TEXT, fontsize=15, weight="bold", va="center")
    fig.text(0.99, 1 - 0.6 / rows, subtitle, color="#8e8e8e", fontsize=9, ha="right", va="center")
    for panel in board["panels"]:
        grid = {**panel["gridPos"], "y": panel["gridPos"]["y"] + 2}
        frame = _axes_for(fig, grid, rows, inner=False)
        frame.set_facecolor(_PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color(_GRID)
        frame.text(0.01, 0.97, panel["title"], color=_TEXT, fontsize=9, ha="left", va="top",
                   transform=frame.transAxes)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        series = data.get(panel["id"], [])
        if panel["type"] == "stat":
            ax = frame
            value = next((s[2][-1] for s in series if s[2]), float("nan"))
            mappings = panel["fieldConfig"]["defaults"].get("mappings", [])
            text = with_unit(value, unit)
            for mapping in mappings:
                key = f"{value:g}" if not math.isnan(value) else ""
                if key in mapping["options"]:
                    text = mapping["options"][key]["text"]
            colour = "#f2495c" if text == "Unhealthy" else "#73bf69"
            ax.text(0.5, 0.45, text, color=colour, fontsize=20, weight="bold", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        ax = _axes_for(fig, grid, rows, inner=True)
        ax.set_facecolor(_PANEL)
        for spine in ax.spines.values():
            spine.set_visible(False)
        for i, (name, times, values) in enumerate(series):
            ax.plot([datetime.fromtimestamp(t) for t in times], values, color=_COLOURS[i % len(_COLOURS)],
                    linewidth=1.2, label=name)
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        ax.grid(color=_GRID, linewidth=0.5)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _p, u=unit: with_unit(v, u)))
        if series:
            ax.legend(loc="upper left", fontsize=6, facecolor=_PANEL, edgecolor=_GRID, labelcolor=_TEXT,
                      ncol=min(4, len(series)), framealpha=0.8)
    fig.savefig(path, dpi=80, facecolor=_BG)
    plt.close(fig)
