# The Kubernetes operator: CRDs, tests, benchmark (issue 4).

.PHONY: crds test-operator bench-operator bench-operator-e2e

crds: setup ## regenerate crds/ from the schema source (the drift test compares them)
	$(LEGACYGPU) operator crds --output-dir crds

test-operator: setup ## unit and integration tests of the operator and the Kubernetes worker loop
	$(PY) -m pytest tests/operator -q

bench-operator: setup ## 1,000 tasks through the operator with 8 workers (JSON + PNG); MODE=e2e: on the real kube-apiserver
ifeq ($(MODE),e2e)
	$(MAKE) bench-operator-e2e
else
	$(PY) -m legacygpu.testing.bench_operator --tasks 1000 --workers 8 --out bench-results/operator
endif

bench-operator-e2e: setup ## tasks/s, latency, API writes per task, operator RSS on the e2e control plane, twice in a row (= bench-operator MODE=e2e)
	@# The first run is kept under repeats/1 so that the run-to-run spread is on record beside the second.
	$(PY) -m legacygpu.testing.bench_operator --apiserver e2e --tasks 1000 --workers 8 --out $(BENCH_DOCS)/operator-e2e/repeats/1
	$(PY) -m legacygpu.testing.bench_operator --apiserver e2e --tasks 1000 --workers 8 --out $(BENCH_DOCS)/operator-e2e
	$(LEGACYGPU) bench docs
