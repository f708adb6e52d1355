"""Reading ModelInferRequest bytes in Rust gives the same InferRequest as the
generated protobuf code; malformed bytes are a clear INVALID_ARGUMENT."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from riskserve._native import InputError, parse_infer_request
from riskserve.client import build_request
from riskserve.errors import InvalidInput
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.transport.codec import decode_request, decode_request_bytes

DTS = {"amount": "FP64", "hour": "INT64", "flag": "BOOL", "channel": "BYTES", "f32": "FP32"}
COLS: dict[str, Any] = {
    "amount": [1.5, float("nan"), -2.0],
    "hour": [1, 2, 23],
    "flag": [True, False, True],
    "channel": ["pos", "", "café"],
    "f32": [0.5, 1.5, 2.5],
}


def _same(a: Any, b: Any) -> None:
    assert (a.model_name, a.model_version, a.id) == (b.model_name, b.model_version, b.id)
    assert list(a.requested_outputs) == list(b.requested_outputs)
    assert dict(a.parameters) == dict(b.parameters)
    assert len(a.inputs) == len(b.inputs)
    for x, y in zip(a.inputs, b.inputs, strict=True):
        assert (x.name, x.datatype, tuple(x.shape)) == (y.name, y.datatype, tuple(y.shape))
        if isinstance(x.data, np.ndarray):
            assert x.data.dtype == y.data.dtype
            np.testing.assert_array_equal(x.data, y.data)
        else:
            assert x.data == y.data


@pytest.mark.parametrize("raw", [True, False])
def test_rust_and_generated_decoding_agree(raw: bool) -> None:
    req = build_request("fraud", COLS, DTS, version="3", request_id="abc", raw=raw)
    req.parameters["routing_key"].string_param = "card-1"
    req.parameters["flag"].bool_param = True
    req.parameters["n"].int64_param = -7
    req.parameters["x"].double_param = 0.25
    req.parameters["u"].uint64_param = 2**63
    req.outputs.add(name="probability")
    req.inputs[1].shape[:] = [3, 1]
    data = req.SerializeToString()
    _same(decode_request_bytes(data), decode_request(pb.ModelInferRequest.FromString(data)))


def test_raw_contents_are_views_not_copies() -> None:
    data = build_request("fraud", COLS, DTS).SerializeToString()
    req = decode_request_bytes(data)
    amount = next(i for i in req.inputs if i.name == "amount").data
    assert isinstance(amount, np.ndarray) and amount.base is not None
    assert not amount.flags.writeable


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x05fra", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x3a\x80", b"\x0f"],
)
def test_malformed_bytes_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(InputError, match="malformed request"):
        parse_infer_request(data)
    with pytest.raises(InvalidInput, match="malformed request"):
        decode_request_bytes(data)


def test_the_server_answers_malformed_bytes_with_invalid_argument(server: Any) -> None:
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as e:
            call(b"\x0a\x05fra", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request" in (e.value.details() or "")
