"""Open Inference Protocol tensors on the wire: JSON, the binary data extension, raw bytes.

A request arrives as JSON (``{"inputs": [{"name", "shape", "datatype",
"data"}], "outputs": [...], "parameters": {...}}``) or, with the binary
tensor data extension that Triton clients use, as that JSON header followed
by the tensors' raw bytes: the header's length is in the
``Inference-Header-Content-Length`` HTTP header and each binary input says
its size in ``parameters.binary_data_size``, in order. gRPC carries the same
raw bytes in ``raw_input_contents``. Raw bytes are little-endian row-major;
a ``BYTES`` element is a 4-byte little-endian length and then its bytes.

This module turns all of that into :class:`InferRequest` (numpy arrays by
input name) and the outputs back into JSON or binary, and refuses a
malformed request with :class:`~legacygpu.worker.serving.errors.BadRequest`
naming the tensor at fault. It knows nothing of models: the engine checks
the inputs against the model card.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from legacygpu.worker.serving.errors import BadRequest

__all__ = [
    "HEADER_LENGTH",
    "InferInput",
    "InferRequest",
    "RequestedOutput",
    "array_from_raw",
    "datatype_of",
    "decode_rest_request",
    "encode_rest_response",
    "raw_from_array",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_DATATYPES = {dtype.name: name for name, dtype in _DTYPES.items()}


@dataclass
class InferInput:
    """One decoded input tensor; ``BYTES`` tensors are object arrays of ``bytes``."""

    name: str
    datatype: str
    array: np.ndarray
    from_json: bool = False
    """``BYTES`` elements that came as JSON strings (an image input takes them as base64)."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """One inference request, whatever it came over."""

    model: str
    version: str = ""
    id: str = ""
    inputs: list[InferInput] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None
    """None: every output."""
    binary_output: bool = False
    """How outputs not named in ``outputs`` are sent (REST only)."""
    priority: int = 0
    """1 is the highest level; 0 means the model's default."""
    timeout_us: int | None = None


def datatype_of(array: np.ndarray) -> str:
    """The protocol's datatype name for an array."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    name = _DATATYPES.get(array.dtype.name)
    if name is None:
        raise BadRequest(f"dtype {array.dtype} has no Open Inference Protocol datatype")
    return name


def _shape(name: str, raw: Any) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers, not {raw!r}")
    return raw


def _split_bytes(name: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest(f"input {name!r}: BYTES data ends inside an element's length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise BadRequest(f"input {name!r}: a BYTES element runs past the end of the data")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise BadRequest(f"input {name!r}: shape needs {count} BYTES elements but data has {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def array_from_raw(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from its raw little-endian bytes; :class:`BadRequest` when the size is wrong.

    A numeric tensor is a read-only view of ``raw``, not a copy.
    """
    count = math.prod(shape)
    if datatype == "BYTES":
        return _split_bytes(name, raw, count).reshape(shape)
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def raw_from_array(array: np.ndarray) -> bytes:
    """The raw bytes of a tensor, as :func:`array_from_raw` reads them."""
    if datatype_of(array) == "BYTES":
        parts = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_array(name: str, datatype: str, shape: list[int], data: Any) -> InferInput:
    if not isinstance(data, list):
        raise BadRequest(f"input {name!r}: data must be a list")
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).ravel()
        if flat.size != count or not all(isinstance(item, str) for item in flat):
            raise BadRequest(f"input {name!r}: shape {shape} needs {count} strings as BYTES data")
        array = np.empty(count, dtype=object)
        array[:] = [item.encode() for item in flat]
        return InferInput(name, datatype, array.reshape(shape), from_json=True)
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {datatype!r}")
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"input {name!r}: data is not valid {datatype}: {exc}") from exc
    if array.size != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} values but data has {array.size}")
    return InferInput(name, datatype, array.reshape(shape))


def _parameters(where: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{where}: parameters must be an object")
    return raw


def _int_parameter(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"request parameter {key!r} must be a non-negative integer, not {value!r}")
    return value


def decode_rest_request(model: str, version: str, body: bytes, header_length: int | None) -> InferRequest:
    """Decode a REST inference body (JSON, or JSON + binary tensor data).

    Binary tensors are views of ``body``: slicing bytes copies them, twice per tensor, which for an
    image batch costs the event loop more than the rest of the decoding.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {header_length} is outside the body's {len(body)} bytes")
    view = memoryview(body)
    header, binary = (body, view[:0]) if header_length is None else (bytes(view[:header_length]),
                                                                     view[header_length:])
    try:
        doc = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest("the request needs a non-empty 'inputs' list")
    parameters = _parameters("request", doc.get("parameters"))
    request = InferRequest(
        model=model,
        version=version,
        id=str(doc.get("id", "")),
        binary_output=bool(parameters.get("binary_data_output", False)),
        priority=_int_parameter(parameters, "priority") or 0,
        timeout_us=_int_parameter(parameters, "timeout"),
    )
    offset = 0
    for raw_input in doc["inputs"]:
        if not isinstance(raw_input, dict) or not isinstance(raw_input.get("name"), str):
            raise BadRequest("every input needs a 'name'")
        name = raw_input["name"]
        datatype = raw_input.get("datatype")
        if not isinstance(datatype, str):
            raise BadRequest(f"input {name!r}: 'datatype' is missing")
        shape = _shape(name, raw_input.get("shape"))
        size = _parameters(f"input {name!r}", raw_input.get("parameters")).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"input {name!r}: binary_data_size {size!r} runs past the binary data")
            array = array_from_raw(name, datatype, shape, binary[offset : offset + size])
            request.inputs.append(InferInput(name, datatype, array))
            offset += size
        elif "data" in raw_input:
            request.inputs.append(_json_array(name, datatype, shape, raw_input["data"]))
        else:
            raise BadRequest(f"input {name!r}: neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    if "outputs" in doc:
        if not isinstance(doc["outputs"], list):
            raise BadRequest("'outputs' must be a list")
        request.outputs = []
        for raw_output in doc["outputs"]:
            if not isinstance(raw_output, dict) or not isinstance(raw_output.get("name"), str):
                raise BadRequest("every requested output needs a 'name'")
            out_params = _parameters(f"output {raw_output['name']!r}", raw_output.get("parameters"))
            binary_out = bool(out_params.get("binary_data", request.binary_output))
            request.outputs.append(RequestedOutput(raw_output["name"], binary_out))
    return request


def _json_data(array: np.ndarray) -> list[Any]:
    if datatype_of(array) == "BYTES":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    return list(array.ravel().tolist())


def encode_rest_response(
    request: InferRequest, outputs: dict[str, np.ndarray], *, model_version: str = "1"
) -> tuple[bytes, dict[str, str]]:
    """The REST body and headers answering ``request`` with ``outputs`` (already the requested ones)."""
    binary_of = {o.name: o.binary for o in request.outputs or []}
    tensors = []
    chunks: list[bytes] = []
    for name, array in outputs.items():
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary_of.get(name, request.binary_output):
            raw = raw_from_array(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _json_data(array)
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": request.model, "model_version": request.version or model_version}
    if request.id:
        doc["id"] = request.id
    doc["outputs"] = tensors
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
