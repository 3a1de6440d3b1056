# OpenCL core: GEMM autotuning and benchmarks (issue 3, part A).
# `bench` has prerequisites only, so other mk files can add theirs (bench: bench-model).

.PHONY: tune tune-quick bench bench-gemm opencl-core-test

TUNE_ARGS ?=
BENCH_GEMM_ARGS ?=
BENCH_OUT ?= bench-results

tune: setup ## autotune the OpenCL SGEMM kernels for this device (cache: ~/.cache/legacygpu/tuning)
	$(LEGACYGPU) tune $(TUNE_ARGS)

tune-quick: setup ## a one-minute autotune (fewer candidates, smaller problems)
	$(LEGACYGPU) tune --quick $(TUNE_ARGS)

bench: bench-gemm ## run the benchmarks (JSON + PNG under $(BENCH_OUT)/)

bench-gemm: setup ## SGEMM: ours vs CLBlast vs numpy on the same OpenCL device
	$(LEGACYGPU) bench gemm --out-dir $(BENCH_OUT) $(BENCH_GEMM_ARGS)

opencl-core-test: setup ## tests of device discovery, driver stacks, OpenCL 1.1, the SGEMM kernels and the autotuner (PoCL and rusticl)
	$(PY) -m pytest tests/opencl/test_device.py tests/opencl/test_drivers.py tests/opencl/test_cl11.py \
	  tests/opencl/test_gemm.py tests/opencl/test_tuning.py
