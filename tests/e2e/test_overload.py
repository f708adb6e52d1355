"""Overload. RISKSERVE_MAX_PENDING_CALLS bounds gRPC core's queue of calls the server
has not picked up yet: a burst far beyond it is partly refused at once (CANCELLED, by
core). Queueing delay in a version's batch queue above RISKSERVE_SHED_TARGET_SECONDS for
RISKSERVE_SHED_INTERVAL_SECONDS sheds new calls with RESOURCE_EXHAUSTED. The rest is
served, and the server goes on serving."""

from __future__ import annotations

import time
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
        codes, _ended = _burst(stub, build_request("fraud", one, dts), 400, 30)
        assert set(codes) == {"OK", "CANCELLED"}, codes
        assert codes["OK"] > 0 and codes["CANCELLED"] > 0, codes
        stub.ModelInfer(build_request("fraud", one, dts), timeout=30)  # still serving
    finally:
        ch.close()
    # start_server stops it afterwards: exit 0, no traceback in its log


def _burst(
    stub: Any, request: Any, n: int, timeout: float
) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Fires n calls at once; their codes, and when each call ended, by code
    (seconds from the burst's start)."""
    start = time.monotonic()
    ended: dict[str, list[float]] = {}
    futures = [stub.ModelInfer.future(request, timeout=timeout) for _ in range(n)]

    def done(f: Any) -> None:
        ended.setdefault(f.code().name, []).append(time.monotonic() - start)

    for f in futures:
        f.add_done_callback(done)
    codes: dict[str, int] = {}
    for f in futures:
        try:
            f.result()
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        codes[code] = codes.get(code, 0) + 1
    time.sleep(0.1)  # the last callbacks
    return codes, ended


def test_a_burst_far_above_capacity_is_shed_with_resource_exhausted(
    models_dir: Path, reference: Any, fresh_table: Any, start_server: Callable[..., ServerHandle]
) -> None:
    """Queueing delay in the batch queue above 5 ms for 100 ms: new calls are refused at
    once with RESOURCE_EXHAUSTED (never scored), the queued ones are served, nothing
    fails otherwise, and the server serves normally once the queue drained."""
    vdir = models_dir / "fraud" / "1"
    cols = reference.columns(fresh_table, vdir)
    dts = reference.datatypes(vdir)
    big = build_request("fraud", cols, dts)  # 500 rows: scoring, not gRPC, is the bottleneck
    one = build_request("fraud", {c: v[:1] for c, v in cols.items()}, dts)
    h = start_server(models_dir)
    ch = grpc.insecure_channel(h.target)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        stub.ModelInfer(one, timeout=30)  # connected, warm
        codes, ended = _burst(stub, big, 600, timeout=60)
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes
        assert (
            h.metric("riskserve_requests_total", code="RESOURCE_EXHAUSTED")
            == (codes["RESOURCE_EXHAUSTED"])
        )
        # Refused requests were never scored: every row scored belongs to an OK reply.
        ok_rows = h.metric("riskserve_inference_rows_total")
        assert ok_rows == (codes["OK"] * 500 + 1)
        assert h.metric("riskserve_batch_rows_sum") == ok_rows
        # Not a timing benchmark, only "at once": refusals come while accepted calls
        # still wait in the queue, not after it drained.
        assert min(ended["RESOURCE_EXHAUSTED"]) < max(ended["OK"]), ended
        time.sleep(0.5)
        for _ in range(20):  # drained: served normally again, no refusal
            reply = stub.ModelInfer(one, timeout=30)
            assert reply.raw_output_contents
    finally:
        ch.close()


def test_a_request_whose_deadline_passes_while_queued_is_not_scored(
    models_dir: Path, reference: Any, fresh_table: Any, start_server: Callable[..., ServerHandle]
) -> None:
    """Shedding off, so the queue grows: calls whose deadline passed in the batch
    queue are never scored."""
    vdir = models_dir / "fraud" / "1"
    cols = reference.columns(fresh_table, vdir)
    dts = reference.datatypes(vdir)
    big = build_request("fraud", cols, dts)
    h = start_server(models_dir, env={"RISKSERVE_SHED_TARGET_SECONDS": "0"})
    ch = grpc.insecure_channel(h.target)
    try:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        stub.ModelInfer(big, timeout=30)  # connected, warm
        codes, _ = _burst(stub, big, 400, timeout=0.3)
        assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
        assert codes.get("DEADLINE_EXCEEDED", 0) > 0, codes
        time.sleep(1.0)  # every call is over on the server too
        # One 500-row request per batch (over max_batch_size alone): rows scored / 500 is
        # the number of requests scored. A call that expired while queued is failed at
        # dequeue (DEADLINE_EXCEEDED, counted) or was cancelled by gRPC at its deadline
        # (skipped at dequeue); either way it is never scored. Only the calls whose own
        # batch was running, or whose reply was on its way, at the deadline are scored
        # and lost: a few, where scoring every queued call would lose all that expired.
        scored = h.metric("riskserve_batch_rows_sum") / 500
        expired = codes["DEADLINE_EXCEEDED"]
        assert scored <= codes.get("OK", 0) + 1 + expired // 4, (scored, codes)
        assert scored + h.metric("riskserve_requests_total", code="DEADLINE_EXCEEDED") <= 401
        stub.ModelInfer(big, timeout=30)  # still serving
    finally:
        ch.close()
