"""The ``legacygpu`` command line.

Each command group lives in its own module and is imported only when used,
so ``legacygpu --help`` stays fast and the worker image does not need the
operator's dependencies (and the other way round). A module listed in
:data:`COMMANDS` exposes a click command or group named ``command``.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

__all__ = ["COMMANDS", "main"]

# name -> (module, short help). Modules live in legacygpu.cli unless dotted.
COMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("legacygpu.cli.cluster", "Start, stop and inspect a cluster."),
    "worker": ("legacygpu.cli.worker", "Run or drain a worker process."),
    "task": ("legacygpu.cli.task", "Submit, follow and cancel inference tasks."),
    "infer": ("legacygpu.cli.infer", "Run one real-time inference and print the result."),
    "model": ("legacygpu.cli.model", "Manage the model repository."),
    "monitor": ("legacygpu.cli.monitor", "Live terminal view of workers and tasks."),
    "api": ("legacygpu.cli.api", "Run the REST facade on its own."),
    "devices": ("legacygpu.cli.devices", "List OpenCL compute devices."),
    "tune": ("legacygpu.cli.tune", "Autotune OpenCL kernels for this device."),
    "bench": ("legacygpu.cli.bench", "Benchmarks: GEMM, models."),
    "node-agent": ("legacygpu.cli.nodeagent", "Kubelet device plugin and node labeller."),
    "operator": ("legacygpu.cli.operator", "Run the Kubernetes operator."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (module, _) in COMMANDS.items() if _available(module))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not _available(entry[0]):
            return None
        return importlib.import_module(entry[0]).command  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="legacygpu")
def main() -> None:
    """legacygpu: inference on legacy OpenCL GPUs, on one machine or a Kubernetes cluster.

    Start here: `legacygpu cluster start`, then `legacygpu task submit --help`.
    """
