# Monitoring: node-agent GPU metrics, Grafana dashboards, alerts. See docs/monitoring.md.

.PHONY: monitoring-dashboards monitoring-test monitoring-pictures

monitoring-dashboards: setup ## regenerate charts/legacygpu/dashboards/*.json from legacygpu.core.monitoring
	$(PY) -m legacygpu.core.monitoring charts/legacygpu/dashboards

monitoring-test: setup ## GPU metrics, dashboards, alerts (promtool) and the live-Prometheus tests
	$(PY) -m pytest tests/nodeagent/test_nodeagent_metrics.py tests/chart/test_chart_monitoring.py \
		tests/chart/test_chart_dashboards.py tests/monitoring

monitoring-pictures: setup ## redraw docs/images/dashboard-*.png from a live-Prometheus test run
	LEGACYGPU_DASHBOARD_PICTURES=docs/images $(PY) -m pytest tests/monitoring
