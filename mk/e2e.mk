# End-to-end control plane: etcd + kube-apiserver/-controller-manager/-scheduler built
# from the Go module proxy, simulated GPU nodes. See docs/e2e-control-plane.md.

E2E_CLI := PYTHONPATH=e2e $(PY) -m e2ecluster

.PHONY: e2e-build e2e-cluster e2e-cluster-down e2e-cluster-status e2e-test

e2e-build: ## build kube-apiserver/-scheduler/-controller-manager into .cache/kube (skipped when present)
	bash e2e/build-kube.sh

e2e-cluster: setup ## start the e2e control plane + 3 simulated 2-GPU nodes (detached); prints KUBECONFIG
	$(E2E_CLI) up

e2e-cluster-down: setup ## stop the e2e control plane
	$(E2E_CLI) down

e2e-cluster-status: setup ## which e2e control-plane components are running
	-$(E2E_CLI) status

e2e-test: setup ## run only the e2e tests (starts the control plane unless E2E_KUBECONFIG is set)
	$(PY) -m pytest -m e2e tests/e2e
