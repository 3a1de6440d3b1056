# legacygpu: the two commands a newcomer needs are `make run` and `make test`.
# `make setup` is the idempotent install step both use.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
LEGACYGPU := $(VENV)/bin/legacygpu
PYTHON ?= python3
APT_PACKAGES := pocl-opencl-icd mesa-opencl-icd ocl-icd-libopencl1 ocl-icd-opencl-dev clinfo libclblast-dev \
	prometheus chromium chromium-driver etcd-server python3-venv buildah mmdebstrap gcc
SETUP_STAMP := $(VENV)/.setup-done

.PHONY: help setup run test lint bench bench-local clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

setup: $(SETUP_STAMP) ## install system packages and the .venv (idempotent)

$(SETUP_STAMP): pyproject.toml setup.py
	@bash scripts/install-system-packages.sh $(APT_PACKAGES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	bash scripts/get-helm.sh
	bash scripts/get-kubectl.sh
	$(LEGACYGPU) model build-demo
	@touch $@

run: setup ## start the embedded local cluster with the demo model
	$(LEGACYGPU) cluster start

test: setup ## run every test (unit, integration, browser, e2e)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	@# The Kubernetes control plane for the e2e tests: ~23 min cold on 2 cores, seconds when cached.
	bash e2e/build-kube.sh
	@# The worker and operator images (docs/images.md): minutes cold, seconds when cached.
	PYTHON=$(PY) bash scripts/build-images.sh worker operator
	$(PY) -m pytest

lint: setup ## ruff and mypy (strict for legacygpu.core; the allowance is in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench-local: setup ## the local cluster against direct onnxruntime, three runs in a row, committed to docs/benchmarks/local/
	@# Runs 1 and 2 are kept under repeats/ so that the run-to-run spread is on record beside the last run.
	$(LEGACYGPU) bench local --out-dir $(BENCH_DOCS)/local/repeats/1 $(BENCH_LOCAL_ARGS)
	$(LEGACYGPU) bench local --out-dir $(BENCH_DOCS)/local/repeats/2 $(BENCH_LOCAL_ARGS)
	$(LEGACYGPU) bench local --out-dir $(BENCH_DOCS)/local $(BENCH_LOCAL_ARGS)
	$(LEGACYGPU) bench docs

clean: ## remove the venv, caches and local data
	rm -rf $(VENV) .cache .data .pytest_cache

-include mk/*.mk
