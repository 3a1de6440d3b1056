"""Writes docs/cli-reference.md and docs/api-reference.md from the code itself.

The CLI reference is every command's ``--help``; the API reference is the
facade's OpenAPI document, one section per route. ``--check`` exits 1 when
the checked-in files differ from what the code says (a test runs it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import click

from legacygpu.cli import main as cli_main

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _walk(command: click.Command, path: list[str], ctx: click.Context | None) -> list[tuple[list[str], str]]:
    sub_ctx = click.Context(command, info_name=path[-1], parent=ctx, terminal_width=100, max_content_width=100)
    entries = [(path, command.get_help(sub_ctx))]
    if isinstance(command, click.Group):
        for name in command.list_commands(sub_ctx):
            child = command.get_command(sub_ctx, name)
            if child is not None and not child.hidden:
                entries += _walk(child, [*path, name], sub_ctx)
    return entries


def cli_reference() -> str:
    note = "Generated from the code by `scripts/gen_reference_docs.py`; do not edit by hand."
    lines = ["# CLI reference", "", note, ""]
    for path, text in _walk(cli_main, ["legacygpu"], None):
        lines += [f"## `{' '.join(path)}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


def api_reference() -> str:
    from legacygpu.api import create_app
    from legacygpu.core.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        spec = create_app(Settings(data_dir=Path(tmp), api_token="docs")).openapi()  # type: ignore[arg-type]
    lines = [
        "# REST API reference",
        "",
        "Generated from the facade's OpenAPI document by `scripts/gen_reference_docs.py`; do not edit by hand.",
        "A running facade serves the same document at `/openapi.json` and interactive docs at `/docs`.",
        "",
        "Every endpoint except `GET /cluster/health` needs `Authorization: Bearer <token>`. The event stream is",
        "`WebSocket /ws/cluster/events?token=<token>` (see docs/CLUSTER_DEPLOYMENT_GUIDE.md).",
        "",
    ]
    for route, methods in spec["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {route}`", "", f"Operation id: `{op['operationId']}`.", ""]
            if op.get("description") or op.get("summary"):
                lines += [(op.get("description") or op.get("summary")).strip(), ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | required | description |", "|---|---|---|---|"]
                for p in params:
                    desc = (p.get("description") or p.get("schema", {}).get("description") or "").replace("\n", " ")
                    lines.append(f"| `{p['name']}` | {p['in']} | {p.get('required', False)} | {desc} |")
                lines.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                lines += [f"Body: `{body.get('$ref', '').split('/')[-1] or body.get('type')}`.", ""]
            codes = ", ".join(sorted(op.get("responses", {})))
            lines += [f"Responses: {codes}.", ""]
    lines += ["## Schemas", ""]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        lines += [f"### `{name}`", ""]
        if schema.get("description"):
            lines += [schema["description"].strip(), ""]
        props = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            lines += ["| field | required | description |", "|---|---|---|"]
            for field, info in props.items():
                desc = (info.get("description") or "").replace("\n", " ")
                lines.append(f"| `{field}` | {field in required} | {desc} |")
            lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the checked-in files are out of date")
    args = parser.parse_args()
    stale = []
    for name, text in (("cli-reference.md", cli_reference()), ("api-reference.md", api_reference())):
        path = DOCS / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.stderr.write(f"out of date: {', '.join(stale)}; run `python scripts/gen_reference_docs.py`\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
