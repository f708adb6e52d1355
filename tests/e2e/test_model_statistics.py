"""ModelStatistics (Triton's statistics extension) end to end: a real `riskserve
serve` on a copy of the deployment tests' models folder (fraud v1 and v2), traffic
of known row counts sent with our stubs (sequential, concurrent, a stream, some
refused with INVALID_ARGUMENT, some that never reach a version), then NVIDIA's
tritonclient `get_inference_statistics` unchanged, in a subprocess (its protobuf
module and riskserve.pb both define `inference.*`).

Every count must equal what was sent and what /metrics counted independently
(requests, rows, batches, queue time); durations are positive and their parts add
up within the success time; last_inference falls within the traffic. Then: all
models, one model, one version, an unknown model, a bad version; an unloaded
version's figures go with it, and it comes back from zero. With two workers, any
worker answers with the whole server's figures.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import FRAUD_SPEC, V2_DATATYPE, ServerHandle
from test_deployments import (  # the deployment tests' fixtures and helpers
    MODEL,
    RPC_TIMEOUT,
    Admin,
    Traffic,
    base_models,
    infer_many,
    models_copy,
    servers,
    traffic,
    train_data,
    wait_for,
    workdir,
)
from test_workers import WORKERS, fresh_stub, per_worker, start_two

from riskserve.client import build_request
from riskserve.monitoring.statistics import BatchStatistics, Duration, VersionStatistics
from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb

pytestmark = pytest.mark.timeout(240)

__all__ = ["base_models", "models_copy", "servers", "traffic", "train_data", "workdir"]

#: tritonclient, as a payment team would call it; prints JSON.
PROBE = r"""
import json, sys
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

target, queries = sys.argv[1], json.loads(sys.argv[2])
client = tc.InferenceServerClient(url=target)
out = {"extensions": client.get_server_metadata(as_json=True).get("extensions", [])}
answers = []
for name, version in queries:
    try:
        answers.append({"stats": client.get_inference_statistics(name, version, as_json=True)})
    except InferenceServerException as e:
        answers.append({"status": e.status(), "message": e.message()})
out["answers"] = answers
client.close()
json.dump(out, sys.stdout)
"""


def triton(srv: ServerHandle, *queries: tuple[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, srv.target, json.dumps(queries)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, f"tritonclient probe failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _duration(doc: dict[str, Any] | None) -> Duration:
    doc = doc or {}  # proto3 JSON leaves out zero fields, and uint64 are strings
    return Duration(int(doc.get("count", 0)), int(doc.get("ns", 0)))


def parsed(model_stat: dict[str, Any]) -> tuple[str, str, VersionStatistics]:
    """One `model_stats` entry of tritonclient's JSON as (name, version, figures)."""
    st = model_stat.get("inference_stats", {})
    for cache in ("cache_hit", "cache_miss"):
        assert _duration(st.get(cache)) == Duration()  # riskserve has no response cache
    assert "memory_usage" not in model_stat
    batches = []
    for b in model_stat.get("batch_stats", []):
        assert "compute_input" not in b and "compute_output" not in b
        batches.append(BatchStatistics(int(b["batch_size"]), _duration(b.get("compute_infer"))))
    return (
        model_stat["name"],
        model_stat["version"],
        VersionStatistics(
            last_inference_ms=int(model_stat.get("last_inference", 0)),
            inference_count=int(model_stat.get("inference_count", 0)),
            execution_count=int(model_stat.get("execution_count", 0)),
            success=_duration(st.get("success")),
            fail=_duration(st.get("fail")),
            queue=_duration(st.get("queue")),
            compute_input=_duration(st.get("compute_input")),
            compute_infer=_duration(st.get("compute_infer")),
            compute_output=_duration(st.get("compute_output")),
            batches=tuple(batches),
        ),
    )


def figures(answer: dict[str, Any]) -> dict[tuple[str, str], VersionStatistics]:
    assert "stats" in answer, answer
    out = {}
    for m in answer["stats"].get("model_stats", []):
        name, version, stats = parsed(m)
        out[(name, version)] = stats
    return out


def ours(stub: Any, name: str, version: str) -> dict[tuple[str, str], VersionStatistics]:
    """The same call with our own stub (in this process)."""
    resp = stub.ModelStatistics(
        ipb.ModelStatisticsRequest(name=name, version=version), timeout=RPC_TIMEOUT
    )
    out = {}
    for m in resp.model_stats:
        st = m.inference_stats
        out[(m.name, m.version)] = VersionStatistics(
            last_inference_ms=m.last_inference,
            inference_count=m.inference_count,
            execution_count=m.execution_count,
            success=Duration(st.success.count, st.success.ns),
            fail=Duration(st.fail.count, st.fail.ns),
            queue=Duration(st.queue.count, st.queue.ns),
            compute_input=Duration(st.compute_input.count, st.compute_input.ns),
            compute_infer=Duration(st.compute_infer.count, st.compute_infer.ns),
            compute_output=Duration(st.compute_output.count, st.compute_output.ns),
            batches=tuple(
                BatchStatistics(b.batch_size, Duration(b.compute_infer.count, b.compute_infer.ns))
                for b in m.batch_stats
            ),
        )
    return out


def _datatypes() -> dict[str, str]:
    spec = json.loads(FRAUD_SPEC.read_text())
    return {i["name"]: V2_DATATYPE[i["dtype"]] for i in spec["inputs"]}


def rows_request(traffic: Traffic, rows: list[int], version: str = "") -> ipb.ModelInferRequest:
    cols = {
        k: (v[rows] if isinstance(v, np.ndarray) else [v[i] for i in rows])
        for k, v in traffic.columns.items()
    }
    return build_request(MODEL, cols, _datatypes(), version=version)


def missing_input(traffic: Traffic, i: int, version: str = "") -> ipb.ModelInferRequest:
    """A request for the model without its first input: INVALID_ARGUMENT once routed."""
    req = traffic.request(i, f"bad-{i}", version)
    del req.inputs[0]
    del req.raw_input_contents[0]
    return req


def refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def but_last(s: VersionStatistics) -> VersionStatistics:
    """`s` without last_inference_ms, which is converted from the server's clock at
    each call (the same instant, give or take a millisecond of rounding)."""
    return dataclasses.replace(s, last_inference_ms=0)


def check_consistent(s: VersionStatistics) -> None:
    """What holds for any version that has served: positive durations, counted once
    per success, the parts within the success time, batches adding up."""
    assert s.success.ns > 0
    for part in (s.queue, s.compute_input, s.compute_infer, s.compute_output):
        assert part.count == s.success.count, s
    for part in (s.compute_input, s.compute_infer, s.compute_output):
        assert part.ns > 0, s
    # No queue part: the native path scores single rows inline, with no queue.
    assert s.queue.ns + s.compute_input.ns + s.compute_infer.ns <= s.success.ns
    parts = s.queue.ns + s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    assert parts == s.success.ns
    assert sum(b.compute_infer.count for b in s.batches) == s.execution_count
    assert sum(b.batch_size * b.compute_infer.count for b in s.batches) == s.inference_count
    assert all(b.compute_infer.ns > 0 for b in s.batches)
    # every request is charged its whole batch's model call
    assert s.compute_infer.ns >= sum(b.compute_infer.ns for b in s.batches)


def check_against_metrics(srv: ServerHandle, version: str, s: VersionStatistics) -> None:
    """The figures agree with what /metrics counted of the same traffic."""
    m = {"model": MODEL, "version": version}
    assert s.success.count == srv.metric("riskserve_requests_total", code="OK", **m)
    all_codes = srv.metric("riskserve_requests_total", **m)
    assert s.fail.count == all_codes - s.success.count
    assert s.inference_count == srv.metric("riskserve_inference_rows_total", **m)
    assert s.execution_count == srv.metric("riskserve_batch_rows_count", **m)
    assert s.inference_count == srv.metric("riskserve_batch_rows_sum", **m)
    # The batcher measures each request's queue time once, for both.
    queue = srv.metric("riskserve_queue_seconds_sum", **m)
    assert s.queue.ns == pytest.approx(queue * 1e9, abs=s.success.count + 1)
    # /metrics times decoded request → scores, a part of received → reply built.
    assert s.success.ns >= srv.metric("riskserve_request_duration_seconds_sum", **m) * 1e9


def test_tritonclient_reads_exact_statistics_per_model_and_version(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    srv = servers(models_copy("models"))
    stub = srv.stub

    start = triton(srv, ("", ""))
    assert "statistics" in start["extensions"]
    zero = figures(start["answers"][0])
    assert zero == {(MODEL, "1"): VersionStatistics(), (MODEL, "2"): VersionStatistics()}

    t0 = time.time() * 1000
    for i in range(12):  # one at a time to the live version, 2
        resp = stub.ModelInfer(traffic.request(i, f"s{i}"), timeout=RPC_TIMEOUT)
        assert resp.model_version == "2"
    for k in range(3):  # 7 rows each to version 1, by name
        req = rows_request(traffic, list(range(20 + 7 * k, 27 + 7 * k)), "1")
        resp = stub.ModelInfer(req, timeout=RPC_TIMEOUT)
        assert resp.model_version == "1" and len(resp.raw_output_contents[0]) == 7 * 4
    replies = infer_many(stub, [traffic.request(100 + i, f"c{i}") for i in range(40)], 16)
    assert {r.model_version for r in replies} == {"2"}
    two = [traffic.request(200, "t0"), traffic.request(201, "t1")]
    stream = list(stub.ModelStreamInfer(iter(two), timeout=RPC_TIMEOUT))
    assert [r.error_message for r in stream] == ["", ""]
    for i in range(5):  # refused once routed to version 2, and twice to version 1
        e = refused(lambda i=i: stub.ModelInfer(missing_input(traffic, i), timeout=RPC_TIMEOUT))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "missing input" in e.details()
    for i in range(2):
        bad = missing_input(traffic, i, "1")
        e = refused(lambda bad=bad: stub.ModelInfer(bad, timeout=RPC_TIMEOUT))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Never reach a version: counted nowhere in ModelStatistics.
    unknown = traffic.request(0, "u")
    unknown.model_name = "nope"
    assert refused(lambda: stub.ModelInfer(unknown)).code() == grpc.StatusCode.NOT_FOUND
    raw = srv.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    assert refused(lambda: raw(b"\xff\xff\xff")).code() == grpc.StatusCode.INVALID_ARGUMENT
    t1 = time.time() * 1000

    out = triton(
        srv,
        ("", ""),
        (MODEL, ""),
        (MODEL, "1"),
        (MODEL, "2"),
        ("nope", ""),
        (MODEL, "x"),
        (MODEL, "3"),
        ("", "1"),
    )
    every, one_model, v1_only, v2_only, unknown_model, bad, absent, no_name = out["answers"]
    got = figures(every)
    assert list(got) == [(MODEL, "1"), (MODEL, "2")]
    assert figures(one_model) == got
    assert figures(v1_only) == {(MODEL, "1"): got[(MODEL, "1")]}
    assert figures(v2_only) == {(MODEL, "2"): got[(MODEL, "2")]}
    # our own stub reads the same figures
    again = ours(stub, "", "")
    for key, s in got.items():
        assert again[key].last_inference_ms == pytest.approx(s.last_inference_ms, abs=1)
        assert but_last(again[key]) == but_last(s)

    v1, v2 = got[(MODEL, "1")], got[(MODEL, "2")]
    assert (v1.success.count, v1.inference_count, v1.execution_count) == (3, 21, 3)
    assert v1.fail.count == 2 and v1.fail.ns > 0
    assert [(b.batch_size, b.compute_infer.count) for b in v1.batches] == [(7, 3)]
    assert v1.compute_infer.ns == v1.batches[0].compute_infer.ns  # one request per call
    assert v2.success.count == 12 + 40 + 2 and v2.inference_count == 54
    assert v2.fail.count == 5 and v2.fail.ns > 0
    assert 1 <= v2.execution_count <= 54
    for version, s in (("1", v1), ("2", v2)):
        check_consistent(s)
        check_against_metrics(srv, version, s)
        assert t0 - 1 <= s.last_inference_ms <= t1 + 1

    assert "NOT_FOUND" in unknown_model["status"]
    assert unknown_model["message"] == "unknown model 'nope'"
    assert "INVALID_ARGUMENT" in bad["status"]
    assert bad["message"] == "field 'version' must be a version number (1, 2, ...), got 'x'"
    assert "NOT_FOUND" in absent["status"]
    assert absent["message"] == f"model '{MODEL}' version 3 is not loaded"
    assert "INVALID_ARGUMENT" in no_name["status"]
    assert no_name["message"] == "field 'version' needs field 'name' (the model)"
    # Bytes that are no ModelStatisticsRequest, and a name beyond its bound.
    stats_rpc = srv.channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")
    e = refused(lambda: stats_rpc(b"\x0c", timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == "request is not a valid inference.ModelStatisticsRequest"
    long_name = ipb.ModelStatisticsRequest(name="m" * 10_240)
    e = refused(lambda: stub.ModelStatistics(long_name, timeout=RPC_TIMEOUT))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details() == (
        "field 'name' is 10240 bytes; the limit is 256 (RISKSERVE_MAX_NAME_BYTES)"
    )

    # An unloaded version's figures go with it; loaded again, it starts from zero.
    admin = Admin(srv.channel)
    admin.UnloadVersion(apb.UnloadVersionRequest(model=MODEL, version=1, reason="test"))
    e = refused(lambda: stub.ModelStatistics(ipb.ModelStatisticsRequest(name=MODEL, version="1")))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    after = ours(stub, MODEL, "")
    assert list(after) == [(MODEL, "2")]
    assert but_last(after[(MODEL, "2")]) == but_last(v2)
    admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=1, reason="test"))
    assert ours(stub, MODEL, "1") == {(MODEL, "1"): VersionStatistics()}


def test_any_of_two_workers_answers_with_the_whole_servers_figures(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    srv = start_two(servers, models_copy("models"))
    connections = 24  # the kernel spreads connections over the workers
    for c in range(connections):
        ch, stub = fresh_stub(srv)
        try:
            for k in range(3):
                stub.ModelInfer(traffic.request(c * 3 + k, f"w{c}-{k}"), timeout=RPC_TIMEOUT)
            req = rows_request(traffic, [300 + c, 400 + c, 500 + c, 600 + c])
            stub.ModelInfer(req, timeout=RPC_TIMEOUT)
            e = refused(lambda stub=stub, c=c: stub.ModelInfer(missing_input(traffic, c)))
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            ch.close()
    requests, ok, rows = connections * 5, connections * 4, connections * 7
    per = wait_for(
        lambda: (
            p
            if sum((p := per_worker(srv, "riskserve_worker_requests_total")).values()) == requests
            else None
        ),
        10,
        "worker snapshots to count every request",
    )
    # Both workers served: neither holds every figure on its own.
    assert sorted(per) == [str(w) for w in range(WORKERS)] and all(v > 0 for v in per.values())

    def answer_on_a_fresh_connection() -> VersionStatistics:
        ch, stub = fresh_stub(srv)
        try:
            return ours(stub, MODEL, "2")[(MODEL, "2")]
        finally:
            ch.close()

    def complete(s: VersionStatistics) -> bool:
        return (s.success.count, s.fail.count, s.inference_count) == (ok, connections, rows)

    # The other worker's figures arrive with its next snapshot (every 0.5 s); then
    # every answer, from whichever worker takes the connection, is the whole server's.
    wait_for(
        lambda: all(complete(answer_on_a_fresh_connection()) for _ in range(16)),
        20,
        "every worker to answer with both workers' figures",
    )
    (answer,) = triton(srv, (MODEL, "2"))["answers"]
    s = figures(answer)[(MODEL, "2")]
    assert complete(s)
    check_consistent(s)
    check_against_metrics(srv, "2", s)  # the metrics process's merged /metrics
    # One request at a time over the whole test: every execution is one request.
    assert s.execution_count == ok
    assert [(b.batch_size, b.compute_infer.count) for b in s.batches] == [
        (1, 3 * connections),
        (4, connections),
    ]
