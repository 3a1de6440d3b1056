"""Monitoring as code: the Grafana dashboards shipped in the chart.

Modules: ``grafana`` (a small dashboard JSON builder) and ``dashboards`` (the four
dashboards). ``python -m legacygpu.core.monitoring <dir>`` writes them as JSON
(the chart's copies are ``charts/legacygpu/dashboards/*.json``).
"""

from __future__ import annotations

from legacygpu.core.monitoring.dashboards import DASHBOARDS, render, write_all

__all__ = ["DASHBOARDS", "render", "write_all"]
