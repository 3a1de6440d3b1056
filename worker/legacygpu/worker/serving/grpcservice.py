"""The worker's Open Inference Protocol gRPC service.

Implements ``inference.GRPCInferenceService`` (the protocol's service path)
with the messages of :mod:`legacygpu.worker.serving.v2.grpc_predict_v2_pb2`:
ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and
ModelInfer. Inputs come as ``raw_input_contents`` (what Triton's client
sends) or typed ``contents``; outputs always go back as
``raw_output_contents``. Errors end the call with the
:class:`~legacygpu.worker.serving.errors.ServingError`'s status code
(``INVALID_ARGUMENT``, ``NOT_FOUND``, ``UNAVAILABLE``, ``INTERNAL``), and
trailing metadata naming the error (``legacygpu-error: QueueFull``) plus
``retry-after`` where REST sends that header. The name tells the facade
that the worker answered: an ``UNAVAILABLE`` without it is the channel's own
(connection refused or reset), which the facade retries on another worker.

The handlers are registered by hand under the protocol's service name
because the messages live in their own proto package (see the ``.proto``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from legacygpu.core.oip import grpc_predict_v2_pb2 as pb
from legacygpu.worker.serving.codec import (
    InferInput,
    InferRequest,
    RequestedOutput,
    array_from_raw,
    datatype_of,
    raw_from_array,
)
from legacygpu.worker.serving.engine import MODEL_VERSION, ServingEngine
from legacygpu.worker.serving.errors import BadRequest, ServingError

__all__ = ["ERROR_KEY", "SERVICE", "add_inference_service"]

SERVICE = "inference.GRPCInferenceService"
ERROR_KEY = "legacygpu-error"

_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
          "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "FP32": np.float32, "FP64": np.float64}


def _parameter(value: pb.InferParameter) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return getattr(value, kind) if kind else None


def _input(tensor: Any, raw: bytes | None) -> InferInput:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if any(d < 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape must be non-negative, not {shape}")
    if raw is not None:
        return InferInput(name, datatype, array_from_raw(name, datatype, shape, raw))
    field = _CONTENTS.get(datatype)
    if field is None:
        raise BadRequest(f"input {name!r}: datatype {datatype!r} must be sent in raw_input_contents")
    values = list(getattr(tensor.contents, field))
    count = int(np.prod(shape)) if shape else 1
    if len(values) != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} values but contents has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = values
        return InferInput(name, datatype, array.reshape(shape))
    return InferInput(name, datatype, np.asarray(values, dtype=_NUMPY[datatype]).reshape(shape))


def decode_request(request: pb.ModelInferRequest) -> InferRequest:
    """The engine's request for a gRPC one."""
    raws = list(request.raw_input_contents)
    if raws and len(raws) != len(request.inputs):
        raise BadRequest(f"raw_input_contents has {len(raws)} entries for {len(request.inputs)} inputs")
    if not request.inputs:
        raise BadRequest("the request needs at least one input")
    params = {k: _parameter(v) for k, v in request.parameters.items()}
    priority, timeout = params.get("priority") or 0, params.get("timeout")
    if not isinstance(priority, int) or (timeout is not None and not isinstance(timeout, int)):
        raise BadRequest("request parameters 'priority' and 'timeout' must be integers")
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        id=request.id,
        inputs=[_input(t, raws[i] if raws else None) for i, t in enumerate(request.inputs)],
        outputs=[RequestedOutput(o.name, True) for o in request.outputs] or None,
        priority=priority,
        timeout_us=timeout or None,
    )


def encode_response(request: InferRequest, outputs: dict[str, np.ndarray], *,
                    model_version: str = MODEL_VERSION) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model, model_version=request.version or model_version,
                                     id=request.id)
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        response.raw_output_contents.append(raw_from_array(array))
    return response


class _Servicer:
    def __init__(self, engine: ServingEngine) -> None:
        self.engine = engine

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.engine.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.engine.model_ready(request.name, request.version))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self.engine.metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        meta = self.engine.model_metadata(request.name, request.version)
        response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for tensor in meta[kind]:
                getattr(response, kind).add(**tensor)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        decoded = decode_request(request)
        outputs, _, version = await self.engine.infer(decoded)
        return encode_response(decoded, outputs, model_version=version)


def _guarded(method: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(request, context)
        except ServingError as exc:
            trailing = [(ERROR_KEY, type(exc).__name__)]
            if exc.retry_after is not None:
                trailing.append(("retry-after", str(math.ceil(exc.retry_after))))
            await context.abort(exc.grpc_code, str(exc), trailing_metadata=tuple(trailing))

    return call


_METHODS: dict[str, tuple[Any, Any]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}


def add_inference_service(server: grpc.aio.Server, engine: ServingEngine) -> None:
    """Register the protocol's service, answered by ``engine``, on ``server``."""
    servicer = _Servicer(engine)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, name)),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in _METHODS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
