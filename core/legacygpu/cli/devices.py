"""``legacygpu devices``: list OpenCL platforms and devices.

The table is for people; ``--output json`` prints the list of
:class:`~legacygpu.worker.opencl.device.DeviceInfo` records for scripts
(the node labeller and the device plugin read the same records). Legacy AMD
GPUs are flagged with their family (``polaris``...); PoCL shows up as a CPU.
"""

from __future__ import annotations

import json

import click

__all__ = ["command", "format_bytes"]


def format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


@click.command("devices")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table for people, json for scripts.")  # fmt: skip
def command(output: str) -> None:
    """List OpenCL platforms and devices; flag legacy AMD GPUs (Polaris: RX 470-590)."""
    from legacygpu.worker.opencl.device import OpenCLError, discover

    try:
        devices = discover()
    except OpenCLError as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps([d.to_dict() for d in devices], indent=2))
        return
    if not devices:
        click.echo("No OpenCL device found. On a CPU-only host install PoCL: apt install pocl-opencl-icd")
        return
    header = ["#", "TYPE", "CUs", "MEMORY", "MAX ALLOC", "CLOCK", "OPENCL", "FP16", "LEGACY GPU", "DEVICE"]
    rows = [header]
    for d in devices:
        legacy = (d.legacy_family or "") + (f" {d.pci_id}" if d.pci_id else "") if d.is_legacy_amd else "-"
        version = d.opencl_version.split(" ")[1] if d.opencl_version.startswith("OpenCL ") else d.opencl_version
        rows.append([
            str(d.index), d.device_type, str(d.compute_units), format_bytes(d.global_mem_bytes),
            format_bytes(d.max_alloc_bytes), f"{d.max_clock_mhz} MHz", version, "yes" if d.fp16 else "no", legacy,
            f"{d.board_name or d.name} [{d.platform}, driver {d.driver_version}]",
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    for r in rows:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]))
