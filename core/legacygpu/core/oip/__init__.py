"""The Open Inference Protocol's gRPC messages, shared by the workers (which serve it) and the facade.

``grpc_predict_v2.proto`` and the modules generated from it
(``python -m legacygpu.core.oip.generate``) live in the core because both
images need them: the worker image (core + worker) serves the protocol, the
operator image (core + api + operator) runs the facade that forwards it.
Importing them needs ``grpcio`` and ``protobuf`` (the worker and api extras).
"""
