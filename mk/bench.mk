# Benchmarks whose output is committed under docs/benchmarks/ (issue 14). Each target writes the JSON and
# PNG beside the page that shows them, then re-renders every benchmark table in the docs from its JSON.
# On a 2-core CPU: bench-gemm-pocl ~15-30 min (most of it CLBlast rebuilds during its parameter sweep),
# bench-model-pocl ~5-15 min, bench-serve ~10-15 min (plus ~8 min the first time, installing Ray Serve into
# .cache/bench-serve-ray), depending on the load.

.PHONY: bench-docs bench-gemm-pocl bench-gemm-rusticl bench-model-pocl bench-model-rusticl bench-serve tune-rusticl

BENCH_DOCS := docs/benchmarks

bench-docs: setup ## re-render the benchmark tables in README.md and docs/ from the committed JSON
	$(LEGACYGPU) bench docs

bench-gemm-pocl: setup ## SGEMM on PoCL: ours vs swept CLBlast vs numpy, committed to docs/benchmarks/gemm-pocl/
	$(LEGACYGPU) bench gemm --platform Portable --out-dir $(BENCH_DOCS)/gemm-pocl $(BENCH_GEMM_ARGS)
	$(LEGACYGPU) bench docs

# llvmpipe runs our kernels and CLBlast's 10-50x slower than PoCL does: the rusticl runs keep to the
# shapes and models issue 15 names (1024^3, M = 1/8/32 at N = K = 1024; the light models), after
# `legacygpu tune` on that device (make tune-rusticl).
BENCH_GEMM_RUSTICL_ARGS ?= --sizes 1024 --no-inference --shapes 1x1024x1024,8x1024x1024,32x1024x1024 --repeats 3
BENCH_MODEL_RUSTICL_ARGS ?= --models digits,squeezenet --batches 1 --repeats 3

tune-rusticl: setup ## autotune our SGEMM on rusticl (llvmpipe) before its benchmarks
	RUSTICL_ENABLE=llvmpipe $(LEGACYGPU) tune --device $$(RUSTICL_ENABLE=llvmpipe $(LEGACYGPU) devices -o json \
	  | $(PY) -c 'import json,sys; print(next(d["index"] for d in json.load(sys.stdin) if d["platform"] == "rusticl"))') \
	  $(TUNE_ARGS)

bench-gemm-rusticl: setup ## the same on rusticl (llvmpipe), committed to docs/benchmarks/gemm-rusticl/
	RUSTICL_ENABLE=llvmpipe $(LEGACYGPU) bench gemm --platform rusticl --out-dir $(BENCH_DOCS)/gemm-rusticl \
	  $(BENCH_GEMM_RUSTICL_ARGS) $(BENCH_GEMM_ARGS)
	$(LEGACYGPU) bench docs

bench-model-pocl: setup ## models: OpenCL (PoCL) vs onnxruntime, committed to docs/benchmarks/model-pocl/
	$(LEGACYGPU) bench model --out-dir $(BENCH_DOCS)/model-pocl $(BENCH_MODEL_ARGS)
	$(LEGACYGPU) bench docs

bench-model-rusticl: setup ## models: OpenCL (rusticl, llvmpipe) vs onnxruntime, committed to docs/benchmarks/model-rusticl/
	RUSTICL_ENABLE=llvmpipe $(LEGACYGPU) bench model --platform rusticl --out-dir $(BENCH_DOCS)/model-rusticl \
	  $(BENCH_MODEL_RUSTICL_ARGS) $(BENCH_MODEL_ARGS)
	$(LEGACYGPU) bench docs

bench-serve: setup ## /v2 via facade vs worker vs onnxruntime vs Ray Serve, committed to docs/benchmarks/serve/
	$(LEGACYGPU) bench serve --out-dir $(BENCH_DOCS)/serve $(BENCH_SERVE_ARGS)
	$(LEGACYGPU) bench docs
