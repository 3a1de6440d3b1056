"""Real-time inference on a worker: the Open Inference Protocol (v2) over REST and gRPC.

:class:`ServingServer` runs both protocols for a :class:`ServingEngine`, which
checks requests against the model card, batches them per model
(:mod:`.batching`) and runs them on the worker's backend. See
:mod:`.codec` for the wire formats and :mod:`.errors` for the refusals.
"""

from legacygpu.worker.serving.engine import ServingEngine
from legacygpu.worker.serving.server import ServingServer

__all__ = ["ServingEngine", "ServingServer"]
