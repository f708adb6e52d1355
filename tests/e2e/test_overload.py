"""RISKSERVE_MAX_PENDING_CALLS bounds gRPC core's queue of calls the server has not
picked up yet: a burst far beyond it is partly refused at once (CANCELLED, by core),
the rest is served, and the server goes on serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ServerHandle

from riskserve.client import build_request
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(180)


def test_a_burst_beyond_the_pending_limit_is_refused_by_core(
    models_dir: Path, reference: Any, fresh_table: Any, start_server: Callable[..., ServerHandle]
) -> None:
    vdir = models_dir / "fraud" / "1"
    cols = reference.columns(fresh_table, vdir)
    dts = reference.datatypes(vdir)
    one = {c: v[:1] for c, v in cols.items()}
    h = start_server(models_dir, env={"RISKSERVE_MAX_PENDING_CALLS": "4"})
    ch = grpc.insecure_channel(h.target)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        stub.ModelInfer(build_request("fraud", one, dts), timeout=30)  # connected, warm
        futures = [
            stub.ModelInfer.future(build_request("fraud", one, dts), timeout=30) for _ in range(400)
        ]
        codes: dict[str, int] = {}
        for f in futures:
            try:
                f.result()
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            codes[code] = codes.get(code, 0) + 1
        assert set(codes) == {"OK", "CANCELLED"}, codes
        assert codes["OK"] > 0 and codes["CANCELLED"] > 0, codes
        stub.ModelInfer(build_request("fraud", one, dts), timeout=30)  # still serving
    finally:
        ch.close()
    # start_server stops it afterwards: exit 0, no traceback in its log
