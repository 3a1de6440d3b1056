"""``legacygpu monitor``: a live terminal view of workers and tasks.

Each refresh reads three REST endpoints of the facade: ``/cluster/metrics``
(tasks by phase, workers by state, throughput, latency percentiles),
``/cluster/workers`` and ``/cluster/tasks?limit=N``, and draws one frame
with rich. Polling at ``--interval`` rather than following the WebSocket
keeps the view exactly as fresh as the user asked, costs three small
requests a refresh, and needs nothing beyond the HTTP client the other
commands use.

``--once`` prints a single frame and exits (for scripts and tests);
``--count N`` stops after N refreshes, like ``top -n``; ``q`` (when stdin
is a terminal, read key by key without echo between refreshes) or Ctrl-C
quits the live view. In the live view a
facade that stops answering does not end the monitor: the last frame stays
on screen with the error above it until the facade is back.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from legacygpu.cli.client import ApiClient, CliError, Unauthorized, api_options, make_client

__all__ = ["Snapshot", "command", "fetch_snapshot", "render"]

PHASES = ["Pending", "Queued", "Scheduled", "Running", "Succeeded", "Failed", "Cancelled"]
PHASE_STYLES = {
    "Pending": "yellow",
    "Queued": "yellow",
    "Scheduled": "cyan",
    "Running": "cyan",
    "Succeeded": "green",
    "Failed": "red",
    "Cancelled": "bright_black",
}
STATE_STYLES = {"active": "green", "draining": "yellow", "lost": "red", "stopped": "bright_black"}

Snapshot = dict[str, Any]


def fetch_snapshot(client: ApiClient, tasks: int) -> Snapshot:
    """Everything one frame shows, read from the facade now."""
    return {
        "url": client.url,
        "time": time.time(),
        "summary": client.get("/cluster/metrics"),
        "workers": client.get("/cluster/workers")["data"],
        "tasks": client.get("/cluster/tasks", params={"limit": tasks})["data"] if tasks else None,
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def _mib(value: float | None) -> str:
    return "-" if not value else f"{value / (1024 * 1024):.0f} MiB"


def _age(iso: str | None, now: float) -> str:
    if not iso:
        return "-"
    seconds = max(0.0, now - datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp())
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _header(snap: Snapshot) -> Text:
    summary = snap["summary"]
    by_state = summary["workers_by_state"]
    active = by_state.get("active", 0)
    latency = summary["latency_ms"]
    text = Text()
    text.append("legacygpu ", style="bold")
    text.append(f"{snap['url']}  ")
    text.append("ok" if active else "no active worker", style="green" if active else "bold red")
    text.append(f"  workers {active}/{sum(by_state.values())} active")
    text.append(f"  at {datetime.fromtimestamp(snap['time']).strftime('%H:%M:%S')}\n", style="dim")
    text.append(f"queue {summary.get('queue_depth', 0)}")
    text.append(f"  throughput {summary.get('throughput_per_second', 0.0):.2f} tasks/s")
    text.append(f"  latency p50 {_ms(latency.get('p50'))} p90 {_ms(latency.get('p90'))} p99 {_ms(latency.get('p99'))}")
    return text


def _phases(summary: dict[str, Any]) -> Text:
    text = Text("tasks ", style="bold")
    counts = summary["tasks_by_phase"]
    for phase in PHASES:
        text.append(f"{phase} ", style=PHASE_STYLES[phase])
        text.append(f"{counts.get(phase, 0)}", style="bold")
        text.append("  " if phase != PHASES[-1] else "")
    return text


def _workers_table(workers: list[dict[str, Any]], now: float) -> Table:
    table = Table(show_edge=False)
    for name, justify in [("name", "left"), ("state", "left"), ("device", "left"), ("backend", "left"),
                          ("assigned", "right"), ("done", "right"), ("failed", "right"),
                          ("recent latency", "right"), ("memory", "right"), ("heartbeat", "right")]:
        table.add_column(name, justify=justify, no_wrap=name in {"name", "state"})  # type: ignore[arg-type]
    order = {"active": 0, "draining": 1, "lost": 2, "stopped": 3}
    for w in sorted(workers, key=lambda w: (order.get(w["state"], 9), w["name"])):
        device, stats = w.get("device") or {}, w.get("stats") or {}
        table.add_row(
            Text(w["name"], style="bold"),
            Text(w["state"], style=STATE_STYLES.get(w["state"], "")),
            f"{device.get('name', '?')} ({device.get('type', '?')})",
            device.get("backend", "?"),
            str(w.get("assigned", 0)),
            str(w.get("tasks_succeeded", 0)),
            str(w.get("tasks_failed", 0)),
            _ms(stats.get("recent_latency_ms")),
            _mib(stats.get("memory_rss_bytes")),
            _age(w.get("last_heartbeat"), now),
        )
    if not workers:
        table.add_row("(no workers registered)", *[""] * 9)
    return table


def _tasks_table(tasks: list[dict[str, Any]], workers: list[dict[str, Any]], now: float) -> Table:
    names = {w["id"]: w["name"] for w in workers}
    table = Table(show_edge=False)
    for name, justify in [("id", "left"), ("model", "left"), ("phase", "left"), ("worker", "left"),
                          ("attempts", "right"), ("latency", "right"), ("created", "right")]:
        table.add_column(name, justify=justify, no_wrap=name in {"id", "phase"})  # type: ignore[arg-type]
    for t in tasks:
        phase = Text(t["phase"], style=PHASE_STYLES.get(t["phase"], ""))
        if t["phase"] in {"Failed", "Cancelled"} and t.get("reason"):
            phase.append(f" ({t['reason']})", style="dim")
        worker = t.get("worker_id")
        table.add_row(
            t["id"], t["model"], phase, names.get(worker, worker or ""), str(t.get("attempts", 0)),
            _ms(t.get("latency_ms")), _age(t.get("created_at"), now),
        )
    if not tasks:
        table.add_row("(no tasks yet)", *[""] * 6)
    return table


def render(snap: Snapshot, error: str | None = None) -> RenderableType:
    """One frame of the view; ``error`` (the facade is unreachable, say) is shown above the last data."""
    now = time.time()
    parts: list[RenderableType] = []
    if error:
        parts.append(Panel(Text(error, style="bold red"), title="facade unreachable", border_style="red"))
    parts += [
        _header(snap),
        _phases(snap["summary"]),
        Text("\nWorkers", style="bold"),
        _workers_table(snap["workers"], now),
    ]
    if snap.get("tasks") is not None:
        parts += [Text("\nRecent tasks", style="bold"), _tasks_table(snap["tasks"], snap["workers"], now)]
    return Group(*parts)


@contextlib.contextmanager
def _quit_keys() -> Iterator[Callable[[float], bool]]:
    """A ``pause(seconds)`` that returns True as soon as ``q`` is pressed (stdin a terminal), else after
    ``seconds``. The terminal is in cbreak mode (keys arrive one at a time, unechoed) until the block ends."""
    stdin = sys.stdin
    if not stdin.isatty():
        def sleep(seconds: float) -> bool:  # no keys to read
            time.sleep(seconds)
            return False

        yield sleep
        return
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pause(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            key = os.read(fd, 1) if ready else b""
            if key.lower() == b"q":
                return True
            if ready and not key:  # the terminal went away: no more keys will come
                time.sleep(left)
        return False

    try:
        yield pause
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _console() -> Console:
    # Piped or captured output gets a width that fits the tables unless COLUMNS says otherwise.
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=140)


@click.command()
@click.option("--interval", "-n", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit (for scripts).")
@click.option("--count", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop after this many refreshes (0: until Ctrl-C).")
@click.option("--tasks", "tasks", type=click.IntRange(0, 200), default=10, show_default=True,
              help="Recent tasks to show (0 hides the table).")
@api_options
def command(interval: float, once: bool, count: int, tasks: int, api: str | None, token: str | None) -> None:
    """Live terminal view of workers and tasks: phases, throughput, latency, recent tasks.

    Refreshes every --interval seconds until q or Ctrl-C; `--once` prints one frame.
    """
    client = make_client(api, token)
    console = _console()
    try:
        snap = fetch_snapshot(client, tasks)
        if once:
            console.print(render(snap))
            return
        refreshes = 1
        with _quit_keys() as pause, Live(render(snap), console=console, refresh_per_second=4,
                                        auto_refresh=False) as live:
            while count == 0 or refreshes < count:
                if pause(interval):
                    break
                refreshes += 1
                try:
                    snap = fetch_snapshot(client, tasks)
                    live.update(render(snap), refresh=True)
                except CliError as exc:
                    if isinstance(exc, Unauthorized):  # a wrong token will not fix itself
                        raise
                    live.update(render(snap, error=exc.format_message()), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
