# Benchmarks whose output is committed under docs/benchmarks/ (issue 14). Each target writes the JSON and
# PNG beside the page that shows them, then re-renders every benchmark table in the docs from its JSON.
# On a 2-core CPU: bench-gemm-pocl ~15-30 min (most of it CLBlast rebuilds during its parameter sweep),
# bench-model-pocl ~5-15 min, bench-serve ~10-15 min (plus ~8 min the first time, installing Ray Serve into
# .cache/bench-serve-ray), depending on the load.

.PHONY: bench-docs bench-gemm-pocl bench-gemm-rusticl bench-model-pocl bench-serve

BENCH_DOCS := docs/benchmarks

bench-docs: setup ## re-render the benchmark tables in README.md and docs/ from the committed JSON
	$(LEGACYGPU) bench docs

bench-gemm-pocl: setup ## SGEMM on PoCL: ours vs swept CLBlast vs numpy, committed to docs/benchmarks/gemm-pocl/
	$(LEGACYGPU) bench gemm --platform Portable --out-dir $(BENCH_DOCS)/gemm-pocl $(BENCH_GEMM_ARGS)
	$(LEGACYGPU) bench docs

bench-gemm-rusticl: setup ## the same on rusticl (llvmpipe), committed to docs/benchmarks/gemm-rusticl/
	RUSTICL_ENABLE=llvmpipe $(LEGACYGPU) bench gemm --platform rusticl --out-dir $(BENCH_DOCS)/gemm-rusticl \
	  $(BENCH_GEMM_ARGS)
	$(LEGACYGPU) bench docs

bench-model-pocl: setup ## models: OpenCL (PoCL) vs onnxruntime, committed to docs/benchmarks/model-pocl/
	$(LEGACYGPU) bench model --out-dir $(BENCH_DOCS)/model-pocl $(BENCH_MODEL_ARGS)
	$(LEGACYGPU) bench docs

bench-serve: setup ## /v2 via facade vs worker vs onnxruntime vs Ray Serve, committed to docs/benchmarks/serve/
	$(LEGACYGPU) bench serve --out-dir $(BENCH_DOCS)/serve $(BENCH_SERVE_ARGS)
	$(LEGACYGPU) bench docs
