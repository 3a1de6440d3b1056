"""The node agent's ``/metrics``: one set of gauges per GPU, as the last health round saw it.

Design: a :class:`prometheus_client` collector formats the agent's latest
:class:`~.health.CardStatus` map at scrape time. It does no I/O: every value
was read in the health round (guarded against hung sysfs reads, see
:mod:`.health`), so a scrape answers at once even when a card hangs, and
values are as fresh as ``--health-interval``. Each agent owns its registry.

Names follow the Prometheus conventions under ``legacygpu_``: base units
(ratio, bytes, celsius, watts, hertz), no unit on plain gauges, ``_total``
on counters. Every per-GPU series carries ``gpu`` (the card's PCI address,
the same id the device plugin advertises); the node comes from the scrape
(the chart's PodMonitor adds a ``node`` label).

==================================  =======  ===========================================
name                                type     labels
==================================  =======  ===========================================
legacygpu_gpu_info                  gauge    gpu, render_node, family, model, gfx (1)
legacygpu_gpu_healthy               gauge    gpu (1 Healthy, 0 Unhealthy, as the plugin says)
legacygpu_gpu_present               gauge    gpu (0 once the card left sysfs)
legacygpu_gpu_busy_ratio            gauge    gpu (gpu_busy_percent / 100)
legacygpu_gpu_vram_used_bytes       gauge    gpu
legacygpu_gpu_vram_total_bytes      gauge    gpu
legacygpu_gpu_temperature_celsius   gauge    gpu (hwmon temp1, the edge sensor)
legacygpu_gpu_power_watts           gauge    gpu (hwmon power1_average)
legacygpu_gpu_clock_hertz           gauge    gpu, clock (shader, memory)
legacygpu_nodeagent_registrations_total  counter  (registrations with the kubelet)
==================================  =======  ===========================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from legacygpu.worker.nodeagent.health import CardStatus

__all__ = ["GpuCollector", "NodeAgentMetrics"]

Statuses = Callable[[], Mapping[str, CardStatus]]


class GpuCollector(Collector):
    """Per-GPU gauges from the latest health round."""

    def __init__(self, statuses: Statuses, registrations: Callable[[], int]) -> None:
        self._statuses = statuses
        self._registrations = registrations

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, text: str, *extra: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=["gpu", *extra])

        info = gauge("legacygpu_gpu_info", "A GPU the node agent found (always 1).",
                     "render_node", "family", "model", "gfx")
        healthy = gauge("legacygpu_gpu_healthy", "1 while the device plugin reports the GPU Healthy, else 0.")
        present = gauge("legacygpu_gpu_present", "1 while the GPU is listed in sysfs, 0 once it left.")
        busy = gauge("legacygpu_gpu_busy_ratio", "Share of time the GPU was busy (amdgpu gpu_busy_percent / 100).")
        used = gauge("legacygpu_gpu_vram_used_bytes", "VRAM in use (amdgpu mem_info_vram_used).")
        total = gauge("legacygpu_gpu_vram_total_bytes", "VRAM size (amdgpu mem_info_vram_total).")
        temp = gauge("legacygpu_gpu_temperature_celsius", "GPU edge temperature (hwmon temp1_input).")
        power = gauge("legacygpu_gpu_power_watts", "Average board power (hwmon power1_average).")
        clock = gauge("legacygpu_gpu_clock_hertz", "Current clock (hwmon freq1_input shader, freq2_input memory).",
                      "clock")
        for address, status in sorted(self._statuses().items()):
            card = status.card
            model = card.model
            info.add_metric([address, card.render_node, model.family, model.model, model.gfx or ""], 1)
            healthy.add_metric([address], 1 if status.healthy else 0)
            present.add_metric([address], 1 if status.present else 0)
            if not status.present:
                continue  # its last readings are stale: export none
            t = card.telemetry
            readings: list[tuple[GaugeMetricFamily, float | None, list[str]]] = [
                (busy, t.busy_ratio, []),
                (used, t.vram_used_bytes, []),
                (total, card.vram_bytes, []),
                (temp, card.temperature_c, []),
                (power, t.power_watts, []),
                (clock, t.shader_clock_hertz, ["shader"]),
                (clock, t.memory_clock_hertz, ["memory"]),
            ]
            for family, value, extra in readings:
                if value is not None:
                    family.add_metric([address, *extra], float(value))
        yield from (info, healthy, present, busy, used, total, temp, power, clock)
        registrations = CounterMetricFamily("legacygpu_nodeagent_registrations",
                                            "Successful registrations with the kubelet.")
        registrations.add_metric([], self._registrations())
        yield registrations


class NodeAgentMetrics:
    """The agent's registry and its ``/metrics`` HTTP server."""

    def __init__(self, statuses: Statuses, registrations: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GpuCollector(statuses, registrations))
        self._server: Any = None

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on a background thread; returns the bound port (``port=0`` picks one)."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    @property
    def port(self) -> int | None:
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
