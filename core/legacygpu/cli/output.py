"""Printing results: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click

__all__ = ["emit", "output_option", "table"]

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def output_option(func: Any) -> Any:
    return click.option(
        "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True,
        help="table for people, json for scripts.",
    )(func)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[h for h, _ in columns]] + [["" if (v := get(r)) is None else str(v) for _, get in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def emit(data: Any, output: str, columns: Sequence[Column] | None = None) -> None:
    """Print ``data`` as JSON, or as a table of ``columns`` when it is a list of rows."""
    if output == "json" or columns is None:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    click.echo(table(rows, columns))
