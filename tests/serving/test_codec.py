"""The wire formats: JSON tensors, the binary tensor data extension, and their refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legacygpu.worker.serving.codec import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    array_from_raw,
    decode_rest_request,
    encode_rest_response,
    raw_from_array,
)
from legacygpu.worker.serving.errors import BadRequest


def _binary_body(header: dict, *chunks: bytes) -> tuple[bytes, int]:
    raw = json.dumps(header).encode()
    return raw + b"".join(chunks), len(raw)


def test_binary_and_json_inputs_decode_to_the_same_arrays() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, length = _binary_body(
        {"inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
            {"name": "b", "datatype": "INT64", "shape": [2], "data": [7, 8]},
        ], "parameters": {"priority": 2, "timeout": 500}},
        x.tobytes(),
    )
    request = decode_rest_request("m", "", body, length)
    a, b = request.inputs
    np.testing.assert_array_equal(a.array, x)
    assert b.array.dtype == np.int64 and b.array.tolist() == [7, 8]
    assert (request.priority, request.timeout_us) == (2, 500)


def test_binary_tensors_are_views_of_the_body_not_copies() -> None:
    x, y = np.arange(6, dtype=np.float32), np.array([b"ab", b"c"], dtype=object)
    body, length = _binary_body(
        {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
            {"name": "y", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}},
        ]},
        x.tobytes(), raw_from_array(y),
    )
    request = decode_rest_request("m", "", body, length)
    decoded_x, decoded_y = request.inputs
    assert np.shares_memory(decoded_x.array, np.frombuffer(body, np.uint8))
    np.testing.assert_array_equal(decoded_x.array, x.reshape(2, 3))
    assert decoded_y.array.tolist() == [b"ab", b"c"] and all(type(item) is bytes for item in decoded_y.array)


def test_bytes_elements_round_trip_with_length_prefixes() -> None:
    items = np.array([b"\x89PNG", b"", b"abc"], dtype=object)
    raw = raw_from_array(items)
    assert raw[:4] == (4).to_bytes(4, "little")
    assert array_from_raw("t", "BYTES", [3], raw).tolist() == items.tolist()


@pytest.mark.parametrize(
    ("inputs", "binary", "words"),
    [
        ([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}], b"", "'x': shape [2, 2] needs 4"),
        ([{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}], b"1234",
         "'x': shape [2] of FP32 needs 8 bytes"),
        ([{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}], b"", "'x': unknown datatype 'FP99'"),
        ([{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 9}}], b"1234",
         "'x': binary_data_size 9 runs past"),
        ([{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}], b"", "'x': shape must be"),
        ([{"name": "x", "datatype": "FP32", "shape": [1]}], b"", "'x': neither 'data'"),
    ],
)
def test_malformed_tensors_are_refused_naming_them(inputs: list, binary: bytes, words: str) -> None:
    body, length = _binary_body({"inputs": inputs}, binary)
    with pytest.raises(BadRequest, match=words.replace("[", r"\[").replace("]", r"\]")):
        decode_rest_request("m", "", body, length if binary else None)


def test_leftover_binary_data_is_refused() -> None:
    body, length = _binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}, b"junk")
    with pytest.raises(BadRequest, match="4 bytes of binary data belong to no input"):
        decode_rest_request("m", "", body, length)


@pytest.mark.parametrize("delta", [1, -1_000_000])
def test_a_header_length_outside_the_body_is_refused(delta: int) -> None:
    body, length = _binary_body({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
    header_length = length + delta if delta > 0 else delta
    with pytest.raises(BadRequest, match=f"{HEADER_LENGTH} {header_length} is outside the body's {len(body)} bytes"):
        decode_rest_request("m", "", body, header_length)


def test_response_sends_binary_outputs_after_the_json_header() -> None:
    request = InferRequest("m", outputs=[RequestedOutput("p", True), RequestedOutput("l", False)])
    p = np.array([[0.25, 0.75]], dtype=np.float32)
    content, headers = encode_rest_response(request, {"p": p, "l": np.array([1], dtype=np.int64)})
    length = int(headers[HEADER_LENGTH])
    header = json.loads(content[:length])
    assert header["outputs"][0] == {"name": "p", "datatype": "FP32", "shape": [1, 2],
                                    "parameters": {"binary_data_size": 8}}
    assert header["outputs"][1]["data"] == [1]
    np.testing.assert_array_equal(np.frombuffer(content[length:], np.float32), p.ravel())
