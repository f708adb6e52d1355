"""The ModelStatistics figures in process (riskserve.monitoring.statistics): the
recorder's arithmetic with known durations, the sum across processes and its JSON
form, the worker snapshots that carry them (live peers only), and a real DataPlane
around a model trained here feeding them through the real batcher: executions,
batch sizes, failures, the request rules of ModelStatistics, and a reloaded
version starting from zero. The whole server over gRPC with tritonclient:
tests/e2e/test_model_statistics.py."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from conftest import train_model
from prometheus_client import CollectorRegistry, Counter

from riskserve.client import pack_bytes
from riskserve.config import BatchingSettings, ScoringSettings
from riskserve.dataplane import DataPlane, InferInput, InferRequest
from riskserve.errors import InvalidInput, NotFound
from riskserve.monitoring import Metrics, ModelView, VersionView
from riskserve.monitoring.fleet import STALE_SECONDS, SnapshotWriter
from riskserve.monitoring.statistics import (
    NS,
    BatchStatistics,
    Duration,
    ServedStatistics,
    VersionRecorder,
    VersionStatistics,
    with_peers,
)
from riskserve.registry import ModelRepository
from riskserve.routing import Deployment, RoutingTable
from riskserve.runtime import LoadedModel, load_version
from riskserve.training.datagen import generate, run_datagen
from riskserve.training.train import columns_of

pytestmark = pytest.mark.timeout(120)


def ns(seconds: float) -> int:
    return round(seconds * NS)


# --------------------------------------------------------------------------------------
# the recorder
# --------------------------------------------------------------------------------------


def test_each_request_is_split_into_parts_that_add_up_to_its_success() -> None:
    rec = VersionRecorder()
    # Two executions: one of 3 rows for 2 requests (1 + 2 rows), one of 4 rows alone.
    rec.executed(3, 2, queue_seconds=0.004, input_seconds=0.0006, seconds=0.002)
    rec.executed(4, 1, queue_seconds=0.001, input_seconds=0.0002, seconds=0.003)
    before_ms = time.time() * 1000
    for rows, age in ((1, 0.010), (2, 0.012), (4, 0.009)):
        rec.succeeded(rows, time.perf_counter() - age)
    after_ms = time.time() * 1000
    rec.failed(time.perf_counter() - 0.005)

    s = rec.snapshot()
    assert s.inference_count == 7
    assert s.execution_count == 2
    assert s.success.count == 3
    # Each lasted at least its age (the clock has moved on since).
    assert s.success.ns >= ns(0.031)
    assert s.fail.count == 1 and s.fail.ns >= ns(0.005)
    assert s.queue == Duration(3, ns(0.005))
    assert s.compute_input == Duration(3, ns(0.0008))
    # Every request is charged its batch's model call: 2 * 2 ms + 1 * 3 ms.
    assert s.compute_infer == Duration(3, ns(0.007))
    assert s.compute_output.count == 3
    parts = s.queue.ns + s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    assert parts == s.success.ns
    assert s.compute_output.ns == s.success.ns - ns(0.005) - ns(0.0008) - ns(0.007) > 0
    assert s.batches == (
        BatchStatistics(3, Duration(1, ns(0.002))),
        BatchStatistics(4, Duration(1, ns(0.003))),
    )
    assert before_ms - 1 <= s.last_inference_ms <= after_ms + 1
    assert s.fail.count == 1 and s.success.count == 3  # a failure is not an inference


def test_an_empty_recorder_reads_as_zero_and_output_never_goes_negative() -> None:
    assert VersionRecorder().snapshot() == VersionStatistics()
    rec = VersionRecorder()
    # Scored, but its caller went away before the reply: queue and compute time
    # without a success.
    rec.executed(1, 1, queue_seconds=0.5, input_seconds=0.1, seconds=0.2)
    s = rec.snapshot()
    assert s.success == Duration() and s.compute_output == Duration()
    assert s.execution_count == 1 and s.inference_count == 0 and s.last_inference_ms == 0
    same = rec.snapshot()
    assert same == s  # reading changes nothing


def _stats(
    rows: int, requests: int, batch: int, *, last: int = 0, fail: int = 0
) -> VersionStatistics:
    return VersionStatistics(
        last_inference_ms=last,
        inference_count=rows,
        execution_count=requests,
        success=Duration(requests, 1000 * requests),
        fail=Duration(fail, 7 * fail),
        queue=Duration(requests, 100),
        compute_input=Duration(requests, 200),
        compute_infer=Duration(requests, 300),
        compute_output=Duration(requests, 1000 * requests - 600),
        batches=(BatchStatistics(batch, Duration(requests, 300)),),
    )


def test_figures_of_several_processes_add_up() -> None:
    a = _stats(10, 5, 2, last=1_700_000_000_000, fail=1)
    b = _stats(7, 7, 1, last=1_700_000_000_500)
    c = _stats(3, 3, 2, last=1_600_000_000_000, fail=2)
    total = a + b + c
    assert total.inference_count == 20
    assert total.execution_count == 15
    assert total.success == Duration(15, 15_000)
    assert total.fail == Duration(3, 21)
    assert total.queue == Duration(15, 300)
    assert total.compute_output == Duration(15, 15_000 - 1800)
    assert total.last_inference_ms == 1_700_000_000_500  # the latest, not a sum
    # batch sizes merge by size, smallest first
    assert total.batches == (
        BatchStatistics(1, Duration(7, 300)),
        BatchStatistics(2, Duration(8, 600)),
    )
    assert a + VersionStatistics() == a


def test_the_json_form_round_trips_and_refuses_what_is_not_one() -> None:
    s = _stats(10, 5, 2, last=1_700_000_000_000, fail=1) + _stats(1, 1, 9)
    doc = json.loads(json.dumps(s.to_json()))
    assert VersionStatistics.from_json(doc) == s
    for broken in (
        {**doc, "inference_count": -1},
        {**doc, "execution_count": 1.5},
        {**doc, "execution_count": True},
        {**doc, "queue": [1]},
        {**doc, "batches": [[1, 2]]},
        {k: v for k, v in doc.items() if k != "fail"},
    ):
        with pytest.raises((KeyError, TypeError, ValueError)):
            VersionStatistics.from_json(broken)


def test_peers_add_only_to_the_same_version_and_model_file() -> None:
    mine = [
        ServedStatistics("fraud", 1, "aaa", _stats(4, 4, 1)),
        ServedStatistics("fraud", 2, "bbb", _stats(2, 2, 1)),
    ]
    peers = {
        ("fraud", 1, "aaa"): _stats(6, 3, 2),
        ("fraud", 2, "other-file"): _stats(100, 100, 1),  # not the same model file
        ("fraud", 3, "ccc"): _stats(100, 100, 1),  # a version this process does not serve
    }
    got = with_peers(mine, peers)
    assert [(s.name, s.version) for s in got] == [("fraud", 1), ("fraud", 2)]
    assert got[0].statistics == _stats(4, 4, 1) + _stats(6, 3, 2)
    assert got[1].statistics == _stats(2, 2, 1)


# --------------------------------------------------------------------------------------
# worker snapshots
# --------------------------------------------------------------------------------------


def _writer(
    directory: Path, worker: int, recorders: dict[int, VersionRecorder | None]
) -> SnapshotWriter:
    def views() -> list[ModelView]:
        return [
            ModelView(
                "fraud",
                1,
                tuple(VersionView(v, f"sha-{v}", None, r) for v, r in sorted(recorders.items())),
            )
        ]

    requests = Counter("riskserve_requests", "", registry=CollectorRegistry())
    return SnapshotWriter(directory, worker, views, requests)


def _recorder(requests: int, rows_each: int) -> VersionRecorder:
    rec = VersionRecorder()
    for _ in range(requests):
        rec.executed(rows_each, 1, 0.001, 0.001, 0.001)
        rec.succeeded(rows_each, time.perf_counter() - 0.01)
    return rec


def test_a_worker_reads_the_live_peers_figures_but_not_its_own_nor_the_dead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    me = _writer(tmp_path, 0, {1: _recorder(5, 1)})
    me.write()  # its own snapshot: never counted twice
    live = {1: _recorder(3, 2), 2: _recorder(1, 7)}
    peer = _writer(tmp_path, 1, live)
    peer.path = tmp_path / "worker-1000001.json"
    peer.write()
    other = _writer(tmp_path, 2, {1: _recorder(4, 1)})
    other.path = tmp_path / "worker-1000002.json"
    other.write()
    dead = _writer(tmp_path, 3, {1: _recorder(50, 1)})
    dead.path = tmp_path / "worker-1000003.json"
    doc = dead.snapshot()
    doc["time"] = time.time() - STALE_SECONDS - 1
    dead.path.write_text(json.dumps(doc))
    broken = _writer(tmp_path, 4, {1: _recorder(9, 1)})
    broken.path = tmp_path / "worker-1000004.json"
    doc = broken.snapshot()
    doc["models"]["fraud"]["versions"]["1"]["statistics"]["inference_count"] = -3
    broken.path.write_text(json.dumps(doc))
    idle = _writer(tmp_path, 5, {1: None, 3: None})  # has served nothing: no figures
    idle.path = tmp_path / "worker-1000005.json"
    idle.write()
    assert json.loads(idle.path.read_text())["models"]["fraud"]["versions"]["3"] == {
        "sha256": "sha-3",
        "drift": None,
        "statistics": None,
    }

    got = me.peer_statistics()
    assert set(got) == {("fraud", 1, "sha-1"), ("fraud", 2, "sha-2")}
    v1 = got[("fraud", 1, "sha-1")]
    assert v1.success.count == 3 + 4
    assert v1.inference_count == 3 * 2 + 4
    assert v1.execution_count == 7
    assert v1.batches == (
        BatchStatistics(1, Duration(4, ns(0.004))),
        BatchStatistics(2, Duration(3, ns(0.003))),
    )
    assert got[("fraud", 2, "sha-2")].inference_count == 7
    assert "worker statistics unreadable" in caplog.text
    assert me.path == tmp_path / f"worker-{os.getpid()}.json"


# --------------------------------------------------------------------------------------
# a real data plane and batcher
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRepository, Any]:
    d = tmp_path_factory.mktemp("statistics")
    run_datagen(2000, 6, d / "train.parquet")
    res = train_model(d / "train.parquet", d / "models", rounds=10)
    return ModelRepository(d / "models"), res.ref


@pytest.fixture(scope="module")
def model(trained: tuple[ModelRepository, Any]) -> LoadedModel:
    repo, ref = trained
    return load_version(repo, ref, drift_slots=0)


def table_of(model: LoadedModel) -> RoutingTable:
    dep = Deployment(model.name, MappingProxyType({model.version: model}), model.version)
    return RoutingTable(MappingProxyType({model.name: dep}))


@pytest.fixture
def plane(model: LoadedModel) -> Iterator[DataPlane]:
    dp = DataPlane(
        ScoringSettings(),
        # every batch in the compute pool: requests queue up behind a running batch
        BatchingSettings(max_batch_size=16, inline_rows=0),
        table_of(model),
        Metrics(CollectorRegistry()),
    )
    yield dp
    dp.close()


def request(model: LoadedModel, rows: int, seed: int, *, drop: str | None = None) -> InferRequest:
    cols = columns_of(generate(rows, seed), [i.name for i in model.inputs])
    tensors = []
    for info in model.inputs:
        if info.name == drop:
            continue
        col = cols[info.name]
        data = pack_bytes(col) if info.datatype == "BYTES" else np.ascontiguousarray(col)
        tensors.append(InferInput(info.name, info.datatype, (rows,), data))
    return InferRequest(model_name=model.name, model_version="", id="", inputs=tensors)


def serve(dp: DataPlane, requests: list[InferRequest]) -> list[Any]:
    """Every request at once, as the transport sends them: received before,
    recorded as a success once the reply is there."""

    async def one(req: InferRequest) -> Any:
        received = time.perf_counter()
        result = await dp.infer(req, received)
        assert result.statistics is not None
        result.statistics.succeeded(len(result.probability), received)
        return result

    async def main() -> list[Any]:
        return await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)

    return asyncio.run(main())


def only(dp: DataPlane, name: str = "", version: str = "") -> VersionStatistics:
    (served,) = dp.statistics(name, version)
    return served.statistics


def test_the_batcher_feeds_executions_batch_sizes_and_failures(
    plane: DataPlane, model: LoadedModel
) -> None:
    assert only(plane) == VersionStatistics()  # loaded, nothing served yet
    sizes = [1] * 30 + [5, 3, 7]
    bad = [request(model, 2, 90 + i, drop=model.inputs[0].name) for i in range(4)]
    good = [request(model, n, i) for i, n in enumerate(sizes)]
    got = serve(plane, good + bad)
    assert all(not isinstance(g, BaseException) for g in got[: len(good)])
    assert all(isinstance(g, InvalidInput) for g in got[len(good) :])

    s = only(plane)
    batcher = plane._batchers[model].batcher
    executions = list(batcher.batch_rows)
    assert len(executions) < len(good)  # requests did share executions
    assert s.execution_count == len(executions)
    assert s.inference_count == sum(sizes) == sum(executions)
    assert s.success.count == len(good)
    assert s.fail.count == len(bad) and s.fail.ns > 0
    by_size: dict[int, int] = {}
    for rows in executions:
        by_size[rows] = by_size.get(rows, 0) + 1
    assert {b.batch_size: b.compute_infer.count for b in s.batches} == by_size
    assert all(b.compute_infer.ns > 0 for b in s.batches)
    for d in (s.queue, s.compute_input, s.compute_infer, s.compute_output):
        assert d.count == len(good) and d.ns > 0
    assert s.queue.ns + s.compute_input.ns + s.compute_infer.ns <= s.success.ns
    # Every request is charged its batch's call: more than the calls themselves
    # once some batch held several requests.
    assert s.compute_infer.ns > sum(b.compute_infer.ns for b in s.batches)
    # The same queue times as the Prometheus histogram (the batcher measures both).
    hist = plane._metrics.queue_seconds.labels(model.name, str(model.version))
    queue_sum = next(x.value for x in hist.collect()[0].samples if x.name.endswith("_sum"))
    assert s.queue.ns == pytest.approx(queue_sum * NS, abs=len(good))


def test_a_failed_merged_batch_counts_each_rescored_request_as_an_execution(
    plane: DataPlane, model: LoadedModel
) -> None:
    reqs = [request(model, 1, 200 + i) for i in range(12)]
    string_input = next(i.name for i in model.inputs if i.datatype == "BYTES")
    poisoned = reqs[5]
    reqs[5] = InferRequest(
        model_name=model.name,
        model_version="",
        id="",
        inputs=[
            t._replace(data=pack_bytes([b"\xff\xfe"])) if t.name == string_input else t
            for t in poisoned.inputs
        ],
    )
    got = serve(plane, reqs)
    assert isinstance(got[5], InvalidInput) and string_input in str(got[5])
    # All twelve were queued before the batcher ran: one merged batch, which failed.
    assert list(plane._batchers[model].batcher.batch_rows) == [12]
    s = only(plane)
    assert s.success.count == 11 and s.fail.count == 1
    assert s.inference_count == 11
    # The failed merged call is not an execution; each request scored on its own
    # after it is one, of 1 row.
    assert s.execution_count == 11
    assert [(b.batch_size, b.compute_infer.count) for b in s.batches] == [(1, 11)]
    assert s.queue.ns + s.compute_input.ns + s.compute_infer.ns <= s.success.ns


def test_statistics_requests_name_what_is_wrong(plane: DataPlane, model: LoadedModel) -> None:
    name, v = model.name, str(model.version)
    assert [(s.name, s.version) for s in plane.statistics()] == [(name, model.version)]
    assert [s.version for s in plane.statistics(name)] == [model.version]
    assert [s.version for s in plane.statistics(name, v)] == [model.version]
    assert plane.statistics(name)[0].sha256 == model.manifest.model_sha256
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        plane.statistics("nope")
    with pytest.raises(NotFound, match=f"model '{name}' version 9 is not loaded"):
        plane.statistics(name, "9")
    for bad in ("x", "0", "-1", "1.0", " 1", "²"):
        with pytest.raises(InvalidInput, match="field 'version' must be a version number"):
            plane.statistics(name, bad)
    with pytest.raises(InvalidInput, match="field 'version' needs field 'name'"):
        plane.statistics("", v)


def test_a_reloaded_version_starts_from_zero(
    plane: DataPlane, model: LoadedModel, trained: tuple[ModelRepository, Any]
) -> None:
    serve(plane, [request(model, 1, 300 + i) for i in range(3)])
    assert only(plane).success.count == 3
    repo, ref = trained
    again = load_version(repo, ref, drift_slots=0)  # unloaded, then loaded again
    plane.swap_table(table_of(again))
    assert only(plane) == VersionStatistics()
    serve(plane, [request(again, 1, 400)])
    assert only(plane).success.count == 1
