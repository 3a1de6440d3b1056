# Node agent (kubelet device plugin + node labeller). See docs/node-agent.md.

.PHONY: nodeagent-proto nodeagent-test nodeagent-labels

nodeagent-proto: setup ## regenerate the Device Plugin API v1beta1 Python modules from api.proto
	$(PY) -m legacygpu.worker.nodeagent.v1beta1.generate

nodeagent-test: setup ## node agent tests (fake kubelet over real gRPC, fixture sysfs trees, PoCL)
	$(PY) -m pytest tests/nodeagent

nodeagent-labels: setup ## print the node labels this machine would get (sysfs + OpenCL)
	$(LEGACYGPU) node-agent --print-labels
