"""Printing results: aligned tables for people, JSON for scripts.

A table wider than the terminal keeps its leftmost columns and drops the
rest, with a last line saying which it dropped and how to see them
(a wider terminal, or ``-o json``): nothing disappears silently. The width
is the terminal's, or ``COLUMNS``; output to a pipe or file is never cut.
JSON always ends with a newline, so the next shell prompt starts on a line
of its own and line-oriented tools see a complete last line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

__all__ = ["emit", "output_option", "table", "terminal_width"]

Column = tuple[str, Callable[[dict[str, Any]], Any]]
_GAP = "  "


def output_option(func: Any) -> Any:
    return click.option(
        "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True,
        help="table for people, json for scripts.",
    )(func)


def terminal_width() -> int | None:
    """``COLUMNS`` if set, else the terminal's width when stdout is one; None (no limit) otherwise."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return os.get_terminal_size(sys.stdout.fileno()).columns
    return None


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], width: int | None = None) -> str:
    """``rows`` aligned under ``columns``; within ``width`` characters, with a mark naming any column dropped."""
    cells = [[h for h, _ in columns]] + [["" if (v := get(r)) is None else str(v) for _, get in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    kept = len(columns)
    if width is not None:
        while kept > 1 and sum(widths[:kept]) + len(_GAP) * (kept - 1) > width:
            kept -= 1
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:kept], widths[:kept], strict=True)).rstrip() for row in cells]
    if kept < len(columns):
        dropped = ", ".join(h for h, _ in columns[kept:])
        lines.append(f"(not shown, too wide for {width} columns: {dropped}; widen the terminal or use -o json)")
    return "\n".join(lines)


def emit(data: Any, output: str, columns: Sequence[Column] | None = None) -> None:
    """Print ``data`` as JSON, or as a table of ``columns`` when it is a list of rows."""
    if output == "json" or columns is None:
        click.echo(json.dumps(data, indent=2, default=str))  # click.echo ends it with a newline
        return
    rows = data if isinstance(data, list) else [data]
    click.echo(table(rows, columns, terminal_width()))
