"""ModelStreamInfer (Triton's bidirectional stream): one response per request, in
order, the same scores as unary ModelInfer; a bad request answers with an error
message and the stream goes on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np

from riskserve.client import build_request, probabilities
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc
from riskserve.training.datagen import generate
from riskserve.training.train import columns_of


def test_stream_matches_unary_and_survives_bad_requests(server: Any) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        md = stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"), timeout=10)
        dts = {i.name: i.datatype for i in md.inputs}
        cols = columns_of(generate(40, 515), list(dts))
        requests = []
        for i in range(40):
            row = {k: v[i : i + 1] for k, v in cols.items()}
            requests.append(build_request("fraud", row, dts, request_id=f"r{i}"))
        bad = pb.ModelInferRequest()
        bad.CopyFrom(requests[7])
        bad.inputs[0].datatype = "FP32"  # amount is FP64
        unknown = pb.ModelInferRequest(model_name="nope", id="r-unknown")
        sent = [*requests[:7], bad, *requests[7:20], unknown, *requests[20:]]

        def gen() -> Iterator[pb.ModelInferRequest]:
            yield from sent

        responses = list(stub.ModelStreamInfer(gen(), timeout=60))
        assert len(responses) == len(sent)
        unary = {r.id: probabilities(stub.ModelInfer(r, timeout=10)).copy() for r in requests}
        for req, resp in zip(sent, responses, strict=True):
            assert resp.infer_response.id == req.id
            if req is bad:
                assert resp.error_message.startswith("INVALID_ARGUMENT")
                assert "amount" in resp.error_message
            elif req is unknown:
                assert resp.error_message.startswith("NOT_FOUND")
            else:
                assert resp.error_message == ""
                assert resp.infer_response.model_version == "1"
                got = probabilities(resp.infer_response)
                np.testing.assert_array_equal(got, unary[req.id])
        # The server still answers unary calls.
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
