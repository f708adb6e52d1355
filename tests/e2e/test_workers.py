"""`riskserve serve --workers 2`: two real worker processes behind one port.

Every test starts the real supervisor as a subprocess and talks to it over real
sockets: both workers take connections, the metrics process's /metrics adds the
workers up (request counters, histograms and drift bin counts, checked against
an independent count of what was sent), an admin change made through one worker
reaches the other, concurrent admin calls landing on different workers are
serialised into one history, no request fails while deployments change under
load, and a killed worker is replaced without losing its counts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import FRAUD_SPEC, V2_DATATYPE, ServerHandle
from prometheus_client.parser import text_string_to_metric_families
from test_deployments import (  # the deployment tests' fixtures and helpers
    MODEL,
    RPC_TIMEOUT,
    TOKEN,
    Admin,
    Traffic,
    base_models,
    in_process,
    models_copy,
    servers,
    settings_env,
    traffic,
    traffic_request,
    train_data,
    wait_for,
    weights_of,
    workdir,
)

from riskserve._native import DriftMonitor
from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.inference import grpc_service_pb2_grpc as igrpc
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb

pytestmark = pytest.mark.timeout(240)

__all__ = ["base_models", "models_copy", "servers", "traffic", "train_data", "workdir"]

WORKERS = 2
#: Separate connections: the kernel spreads connections (not requests) over the
#: workers, so with 24 of them both workers get some (a miss has p = 2^-23).
CONNECTIONS = 24


def start_two(servers: Callable[..., ServerHandle], models: Path, **settings: Any) -> ServerHandle:
    srv = servers(models, workers=WORKERS, **settings)
    wait_for(lambda: srv.metric("riskserve_worker_up") == WORKERS, 15, "both workers' snapshots")
    return srv


def fresh_stub(srv: ServerHandle) -> tuple[grpc.Channel, igrpc.GRPCInferenceServiceStub]:
    """A channel of its own (its own TCP connection, so the kernel picks a worker)."""
    ch = grpc.insecure_channel(
        srv.target, options=[("grpc.use_local_subchannel_pool", 1)]
    )  # no subchannel sharing between channels
    return ch, igrpc.GRPCInferenceServiceStub(ch)


def scrape(srv: ServerHandle, sample: str, **labels: str) -> list[Any]:
    """The samples named `sample` on the metrics process's /metrics with `labels`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return [
        s
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def per_worker(srv: ServerHandle, sample: str, **labels: str) -> dict[str, float]:
    return {s.labels["worker"]: s.value for s in scrape(srv, sample, **labels)}


def bin_counts(srv: ServerHandle, version: str) -> dict[tuple[str, str], float]:
    samples = scrape(srv, "riskserve_drift_bin_observations_total", model=MODEL, version=version)
    return {(s.labels["feature"], s.labels["bin"]): s.value for s in samples}


def test_both_workers_serve_and_metrics_add_up(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    models = models_copy("models")
    srv = start_two(servers, models)
    supervisor = srv.events("serving")[0]
    assert len(supervisor["workers"]) == WORKERS
    assert len(srv.events("worker serving")) == WORKERS

    # Each connection sends single-row requests and one 7-row request.
    sent_rows: list[int] = []
    scores: list[np.ndarray] = []
    versions: set[str] = set()
    for c in range(CONNECTIONS):
        ch, stub = fresh_stub(srv)
        try:
            for k in range(10):
                i = c * 10 + k
                resp = stub.ModelInfer(traffic.request(i, f"c{c}-{k}"), timeout=RPC_TIMEOUT)
                sent_rows.append(i)
                versions.add(resp.model_version)
                scores.append(np.frombuffer(resp.raw_output_contents[0], dtype=np.float32))
            batch = [900 + (c * 7 + j) % 100 for j in range(7)]
            req = ipb.ModelInferRequest()
            req.CopyFrom(_batch_request(traffic, batch))
            resp = stub.ModelInfer(req, timeout=RPC_TIMEOUT)
            sent_rows.extend(batch)
            scores.append(np.frombuffer(resp.raw_output_contents[0], dtype=np.float32))
        finally:
            ch.close()
    n_requests = CONNECTIONS * 11
    n_rows = len(sent_rows)
    assert versions == {"2"}  # a fresh folder serves the newest version

    # Both workers answered some of them, and every request is counted once.
    per = wait_for(
        lambda: (
            p
            if sum((p := per_worker(srv, "riskserve_worker_requests_total")).values()) == n_requests
            else None
        ),
        10,
        "worker snapshots to count every request",
    )
    assert sorted(per) == ["0", "1"] and all(v > 0 for v in per.values()), per
    assert srv.metric("riskserve_requests_total", code="OK") == n_requests
    assert srv.metric("riskserve_request_duration_seconds_count") == n_requests
    assert srv.metric("riskserve_inference_rows_total") == n_rows
    assert srv.metric("riskserve_request_rows_count") == n_requests
    assert srv.metric("riskserve_request_rows_sum") == n_rows
    # Histogram buckets merge too: every request took under 2.5 s.
    assert srv.metric("riskserve_request_duration_seconds_bucket", le="2.5") == n_requests
    assert srv.metric("riskserve_model_info", version="2") == 1
    assert srv.metric("riskserve_deployment_revision", model=MODEL) == 1

    # Drift: the merged per-bin counts equal an independent monitor fed the same
    # rows and the scores the server returned, bin for bin, and so does PSI.
    wait_for(
        lambda: srv.metric("riskserve_drift_observations", window="cumulative") == n_rows,
        10,
        "drift snapshots of every row",
    )
    spec = (models / MODEL / "2" / "features.json").read_text()
    mine = DriftMonitor(spec)
    cols = {
        k: (v[sent_rows] if isinstance(v, np.ndarray) else [v[i] for i in sent_rows])
        for k, v in traffic.columns.items()
    }
    mine.observe(cols)
    mine.observe_scores(np.concatenate(scores))
    expected = {}
    counts = mine.counts()
    off = 0
    for feature, labels, _shares in mine.fields:
        for j, label in enumerate(labels):
            expected[(feature, label)] = float(counts[off + j])
        off += len(labels)
    assert bin_counts(srv, "2") == expected
    for feature, n, value in mine.psi("cumulative"):
        assert n == n_rows
        if value is not None:
            got = srv.metric(
                "riskserve_drift_psi", feature=feature, window="cumulative", version="2"
            )
            assert got == pytest.approx(value, abs=1e-12), feature


def _batch_request(traffic: Traffic, rows: list[int]) -> ipb.ModelInferRequest:
    from riskserve.client import build_request

    spec = json.loads(FRAUD_SPEC.read_text())
    dts = {i["name"]: V2_DATATYPE[i["dtype"]] for i in spec["inputs"]}
    cols = {
        k: (v[rows] if isinstance(v, np.ndarray) else [v[i] for i in rows])
        for k, v in traffic.columns.items()
    }
    return build_request(MODEL, cols, dts)


def served_revisions(
    srv: ServerHandle, traffic: Traffic, n: int = CONNECTIONS
) -> set[tuple[int, str]]:
    """(deployment revision, version) seen by `n` requests on `n` fresh connections."""
    out = set()
    for c in range(n):
        ch, stub = fresh_stub(srv)
        try:
            resp = stub.ModelInfer(traffic.request(c, f"probe-{c}"), timeout=RPC_TIMEOUT)
            out.add((int(resp.parameters["deployment_revision"].string_param), resp.model_version))
        finally:
            ch.close()
    return out


def worker_revisions(srv: ServerHandle) -> dict[str, float]:
    return per_worker(srv, "riskserve_worker_deployment_revision", model=MODEL)


def test_an_admin_change_reaches_every_worker(
    models_copy: Callable[[str], Path],
    servers: Callable[..., ServerHandle],
    traffic: Traffic,
    capsys: pytest.CaptureFixture[str],
) -> None:
    models = models_copy("models")
    srv = start_two(servers, models)
    admin = Admin(srv.channel)
    converged = []
    for weights in ({1: 100, 2: 0}, {1: 50, 2: 50}, {1: 0, 2: 100}):
        t0 = time.perf_counter()
        d = admin.SetTraffic(traffic_request(weights))
        assert weights_of(d) == weights
        wait_for(
            lambda d=d: set(worker_revisions(srv).values()) == {d.revision},
            10,
            f"both workers at revision {d.revision}",
        )
        converged.append(time.perf_counter() - t0)
        live = {str(v) for v, w in weights.items() if w > 0}
        seen = served_revisions(srv, traffic)
        assert {r for r, _ in seen} == {d.revision}, seen
        assert {v for _, v in seen} <= live

    # Admin calls racing from two threads, each on fresh connections (so on either
    # worker): one history, every revision once, every call applied.
    start_rev = admin.GetDeployment(apb.GetDeploymentRequest(model=MODEL)).revision
    errors: list[str] = []
    revisions: list[int] = []
    lock = threading.Lock()

    def hammer(t: int) -> None:
        for k in range(8):
            ch = grpc.insecure_channel(srv.target, options=[("grpc.use_local_subchannel_pool", 1)])
            try:
                other = Admin(ch, TOKEN)
                w = 10 * (t * 8 + k) % 100
                d = other.SetTraffic(traffic_request({1: w, 2: 100 - w}))
                with lock:
                    revisions.append(d.revision)
            except grpc.RpcError as e:
                errors.append(f"{e.code().name}: {e.details()}")
            finally:
                ch.close()

    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(revisions) == list(range(start_rev + 1, start_rev + 17))
    history = [h.revision for h in admin.history()]
    assert sorted(history) == list(range(1, start_rev + 17))
    on_disk = json.loads((models / MODEL / "deployment.json").read_text())
    assert [r["revision"] for r in on_disk["history"]] == sorted(history)
    wait_for(
        lambda: set(worker_revisions(srv).values()) == {start_rev + 16},
        10,
        "both workers at the last revision",
    )

    # From the log: when the worker that took each call changed it, and when the
    # other one started serving it.
    def when(e: dict[str, Any]) -> float:
        return dt.datetime.fromisoformat(e["ts"]).timestamp()

    changed = {e["revision"]: when(e) for e in srv.events("deployment changed")}
    followed = srv.events("deployment followed")
    lags = [when(e) - changed[e["revision"]] for e in followed]
    # A worker may skip revisions the other made in quick succession, never the last.
    assert start_rev + 16 in {e["revision"] for e in followed}
    with capsys.disabled():
        print(
            f"\n[workers] admin change → the other worker serving it: {len(lags)} changes, "
            f"median {np.median(lags) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms (log times); "
            "seen on /metrics after " + ", ".join(f"{s * 1000:.0f} ms" for s in converged)
        )


def test_no_request_fails_while_deployments_change_across_workers(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    srv = start_two(servers, models_copy("models"))
    admin = Admin(srv.channel)
    admin.SetTraffic(traffic_request({1: 100, 2: 0}))
    stop = threading.Event()
    replies: list[tuple[str, int, int]] = []
    failures: list[str] = []

    def client(w: int) -> None:
        n = 0
        while not stop.is_set():
            ch, stub = fresh_stub(srv)  # a new connection every 20 requests
            try:
                for _ in range(20):
                    key = f"w{w}-{n}"
                    n += 1
                    try:
                        r = stub.ModelInfer(traffic.request(n, key), timeout=RPC_TIMEOUT)
                    except grpc.RpcError as e:
                        failures.append(f"{e.code().name}: {e.details()}")
                        continue
                    rev = int(r.parameters["deployment_revision"].string_param)
                    replies.append((key, rev, int(r.model_version)))
            finally:
                ch.close()

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for _ in range(8):
            admin.LoadVersion(apb.LoadVersionRequest(model=MODEL, version=2))
            admin.SetTraffic(traffic_request({1: 80, 2: 20}))
            admin.Promote(apb.PromoteRequest(model=MODEL, version=2))
            admin.Rollback(apb.RollbackRequest(model=MODEL))
            admin.SetTraffic(traffic_request({1: 100, 2: 0}))
            admin.UnloadVersion(apb.UnloadVersionRequest(model=MODEL, version=2))
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(RPC_TIMEOUT + 5)
    assert not failures, failures[:5]
    assert len(replies) > 200
    by_rev = {h.revision: h for h in admin.history()}
    assign = {r: in_process(weights_of(h), h.salt) for r, h in by_rev.items() if weights_of(h)}
    revs = set()
    for key, rev, version in replies:
        assert rev in by_rev, rev
        assert weights_of(by_rev[rev]).get(version, 0) > 0, (key, rev, version)
        assert assign[rev].assign(key) == version, (key, rev, version)
        revs.add(rev)
    assert len(revs) > 10  # the requests really saw the changes


def test_a_killed_worker_is_replaced_and_its_counts_kept(
    models_copy: Callable[[str], Path], servers: Callable[..., ServerHandle], traffic: Traffic
) -> None:
    srv = start_two(servers, models_copy("models"))
    for c in range(CONNECTIONS):
        ch, stub = fresh_stub(srv)
        try:
            for k in range(5):
                stub.ModelInfer(traffic.request(c * 5 + k, f"k{c}-{k}"), timeout=RPC_TIMEOUT)
        finally:
            ch.close()
    n = CONNECTIONS * 5
    wait_for(
        lambda: srv.metric("riskserve_drift_observations", window="cumulative") == n,
        10,
        "drift snapshots",
    )
    before = per_worker(srv, "riskserve_worker_requests_total")
    victim = srv.events("worker serving")[0]
    os.kill(int(victim["pid"]), signal.SIGKILL)
    wait_for(lambda: len(srv.events("worker serving")) == WORKERS + 1, 60, "a new worker")
    replaced = srv.events("worker serving")[-1]
    assert replaced["worker"] == victim["worker"] and replaced["pid"] != victim["pid"]
    assert srv.events("worker process died; restarting")
    # It serves, and nothing counted before the kill was lost.
    assert served_revisions(srv, traffic, 8)
    assert srv.metric("riskserve_requests_total", code="OK") == n + 8
    wait_for(
        lambda: srv.metric("riskserve_drift_observations", window="cumulative") == n + 8,
        10,
        "drift counts of the dead worker kept and the new requests added",
    )
    after = per_worker(srv, "riskserve_worker_requests_total")
    assert all(after[w] >= before[w] for w in before), (before, after)


def test_workers_do_not_outlive_a_killed_supervisor(
    models_copy: Callable[[str], Path], launch_server: Callable[..., ServerHandle]
) -> None:
    # launch_server: not stopped and checked afterwards, the test kills it.
    srv = launch_server(models_copy("models"), env=settings_env(), workers=WORKERS)
    pids = [int(p) for p in srv.events("serving")[0]["workers"]]
    srv.proc.kill()  # SIGKILL: no chance to stop its children itself
    srv.proc.wait(10)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (dead, not yet reaped by init) no longer holds the port either.
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_for(lambda: all(gone(p) for p in pids), 30, "the workers to exit")
    with socket.socket() as s:  # the port is free again
        s.bind(("127.0.0.1", srv.port))
