# The Kubernetes operator: CRDs, tests, benchmark (issue 4).

.PHONY: crds test-operator bench-operator

crds: setup ## regenerate crds/ from the schema source (the drift test compares them)
	$(LEGACYGPU) operator crds --output-dir crds

test-operator: setup ## unit and integration tests of the operator and the Kubernetes worker loop
	$(PY) -m pytest tests/operator -q

bench-operator: setup ## 1,000 tasks through the operator with 8 workers: tasks/s, time to assignment, peak RSS (JSON + PNG)
	$(PY) -m legacygpu.testing.bench_operator --tasks 1000 --workers 8 --out bench-results/operator
