"""Stand-ins for what these machines lack, for the operator's fast tests and its benchmark.

* :mod:`~legacygpu.testing.emulator`: a Kubernetes API server emulator (on kmock) with the
  semantics the operator relies on (resourceVersion, 409s, the status subresource, label
  selectors, owner-reference garbage collection);
* :mod:`~legacygpu.testing.simkubelet`: simulated GPU nodes that schedule worker pods and
  report them running and ready.

The end-to-end tier runs the same operator against a real kube-apiserver instead. This
source root (``testing/``) is in no image: kmock is a development dependency.
"""
