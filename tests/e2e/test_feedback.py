"""The feedback loop end to end: a real `riskserve serve` per test on its own copy
of a models folder (v1 and v2 of `fraud`, trained on generated payments), real
gRPC clients, the real SQLite store the server writes under models/.feedback/.

Reply ids, the `flagged` output, the prediction log (rows, shadow rows, keyed
hashes, a full queue, SIGTERM flush, two workers), labels through the Feedback
API (credentials, results, bad input, pending joins, kill -9 mid-stream), the CLI
(`labels send`, `performance`) and outcomes equal to scikit-learn's."""

from __future__ import annotations

import json
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pytest
from conftest import (
    FRAUD_SPEC,
    V2_DATATYPE,
    ServerHandle,
    _server_env,
    run_cli,
    train_model,
    wait_for,
)
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from riskserve.client import build_request
from riskserve.feedback.postgres import PostgresStore
from riskserve.feedback.records import Outcome
from riskserve.feedback.sqlite import SqliteStore
from riskserve.ids import uuid7_millis
from riskserve.labels_client import FeedbackClient
from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2 as fpb

pytestmark = pytest.mark.timeout(240)

MODEL = "fraud"
ADMIN = "feedback-test-admin-token"
FEEDBACK = "feedback-test-label-token"
TRAIN_ROWS = 4_000
ROUNDS = 20
TRAFFIC_ROWS = 4_000
RPC_TIMEOUT = 30.0


# -- models, traffic, servers ------------------------------------------------------------


@pytest.fixture(scope="module")
def base_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from riskserve.training.datagen import run_datagen

    work = tmp_path_factory.mktemp("feedback")
    data = work / "train.parquet"
    run_datagen(TRAIN_ROWS, 0, data)
    models = work / "models"
    train_model(data, models, ROUNDS, 1)
    train_model(data, models, ROUNDS, 2)
    return models


@pytest.fixture
def models(base_models: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(base_models, dst)
    return dst


@pytest.fixture(scope="module")
def traffic() -> pa.Table:
    from riskserve.training.datagen import generate

    return generate(TRAFFIC_ROWS, 99)


def _columns(table: pa.Table, rows: slice) -> tuple[dict[str, Any], dict[str, str]]:
    spec = json.loads(FRAUD_SPEC.read_text())
    cols: dict[str, Any] = {}
    for i in spec["inputs"]:
        col = table.column(i["name"]).slice(rows.start, rows.stop - rows.start)
        if i["dtype"] == "string":
            cols[i["name"]] = [str(v) for v in col.to_pylist()]
        else:
            np_type = {"bool": bool, "int": np.int64, "float": np.float64}[i["dtype"]]
            cols[i["name"]] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np_type)
    return cols, {i["name"]: V2_DATATYPE[i["dtype"]] for i in spec["inputs"]}


def request(
    table: pa.Table, i: int, rid: str = "", key: str | None = None, rows: int = 1
) -> ipb.ModelInferRequest:
    cols, dts = _columns(table, slice(i, i + rows))
    params = {"routing_key": key} if key is not None else None
    return build_request(MODEL, cols, dts, request_id=rid, parameters=params)


def env(**settings: Any) -> dict[str, str]:
    out = {f"RISKSERVE_{k.upper()}": str(v) for k, v in settings.items()}
    out.setdefault("RISKSERVE_ADMIN_TOKEN", ADMIN)
    out.setdefault("RISKSERVE_FEEDBACK_TOKEN", FEEDBACK)
    out.setdefault("RISKSERVE_CANARY_MIN_REQUESTS", str(10**9))
    return out


@pytest.fixture
def serve(start_server: Callable[..., ServerHandle]) -> Callable[..., ServerHandle]:
    def start(models: Path, workers: int | None = None, **settings: Any) -> ServerHandle:
        return start_server(models, env=env(**settings), workers=workers)

    return start


def store_of(models: Path) -> SqliteStore:
    return SqliteStore(models / ".feedback" / "feedback.sqlite")


def logged(models: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(models / ".feedback" / "feedback.sqlite") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM predictions ORDER BY rowid")]


def feedback(srv: ServerHandle, token: str = FEEDBACK) -> FeedbackClient:
    return FeedbackClient(srv.target, token=token, timeout=RPC_TIMEOUT)


def label(rid: str, fraud: bool, **kw: Any) -> fpb.Label:
    out = fpb.OUTCOME_FRAUD if fraud else fpb.OUTCOME_LEGITIMATE
    return fpb.Label(request_id=rid, outcome=out, source=kw.pop("source", "chargeback"), **kw)


def admin_call(srv: ServerHandle, method: str, req: Any) -> Any:
    stub = agrpc.ModelAdminStub(srv.channel)
    md = [("authorization", f"Bearer {ADMIN}")]
    return getattr(stub, method)(req, metadata=md, timeout=RPC_TIMEOUT)


# -- identity and the log -----------------------------------------------------------------


def test_every_reply_carries_an_id_and_every_row_is_logged(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    srv = serve(models)
    given = srv.stub.ModelInfer(request(traffic, 0, "txn-given", key="card-1"), timeout=10)
    assert given.id == "txn-given"
    before = int(time.time() * 1000)
    made = srv.stub.ModelInfer(request(traffic, 1), timeout=10)
    assert uuid.UUID(made.id).version == 7
    assert before - 5 <= uuid7_millis(made.id) <= int(time.time() * 1000) + 5
    other = srv.stub.ModelInfer(request(traffic, 2), timeout=10)
    assert other.id != made.id
    batch = srv.stub.ModelInfer(request(traffic, 10, "txn-batch", key="card-2", rows=3), timeout=10)
    assert batch.id == "txn-batch"
    probs = np.frombuffer(batch.raw_output_contents[0], dtype="<f4")

    wait_for("6 logged rows", lambda: store_of(models).counts().predictions == 6)
    rows = {r["id"]: r for r in logged(models)}
    assert set(rows) == {
        "txn-given",
        made.id,
        other.id,
        "txn-batch/0",
        "txn-batch/1",
        "txn-batch/2",
    }
    g = rows["txn-given"]
    assert (g["model"], g["version"], g["variant"]) == (MODEL, 2, "v2")
    assert g["shadow"] == 0
    # A keyed hash, the same for one card, never the card id itself.
    assert g["key_hash"] and "card-1" not in g["key_hash"] and len(g["key_hash"]) == 32
    assert rows["txn-batch/0"]["key_hash"] == rows["txn-batch/2"]["key_hash"] != g["key_hash"]
    for i in range(3):
        r = rows[f"txn-batch/{i}"]
        assert r["score"] == pytest.approx(float(probs[i]), abs=1e-7)
        assert bool(r["flagged"]) == (r["score"] >= r["threshold"])
        inputs = json.loads(r["inputs"])
        cols, _ = _columns(traffic, slice(10 + i, 11 + i))
        assert set(inputs) == set(cols)
        for k, v in cols.items():
            want = v[0] if isinstance(v, list) else v[0].item()
            if isinstance(want, float) and np.isnan(want):
                assert inputs[k] is None, k
            else:
                assert inputs[k] == want, k
    assert srv.metric("riskserve_prediction_log_rows_total", result="written") == 6
    assert srv.metric("riskserve_prediction_log_rows_total", result="dropped") == 0


def test_flagged_output_is_the_decision_at_the_threshold(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    srv = serve(models)
    req = request(traffic, 0, "txn-f", rows=200)
    req.outputs.add(name="flagged")
    req.outputs.add(name="probability")
    resp = srv.stub.ModelInfer(req, timeout=10)
    assert [o.name for o in resp.outputs] == ["flagged", "probability"]
    assert [o.datatype for o in resp.outputs] == ["BOOL", "FP32"]
    flagged = np.frombuffer(resp.raw_output_contents[0], dtype=np.bool_)
    probs = np.frombuffer(resp.raw_output_contents[1], dtype="<f4")
    dep = admin_call(srv, "GetDeployment", apb.GetDeploymentRequest(model=MODEL))
    threshold = dict(_thresholds(dep))[2]
    assert 0 < threshold < 1
    np.testing.assert_array_equal(flagged, probs >= np.float32(threshold))
    assert flagged.any() and not flagged.all()
    bad = request(traffic, 0)
    bad.outputs.add(name="verdict")
    with pytest.raises(grpc.RpcError) as e:
        srv.stub.ModelInfer(bad, timeout=10)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'verdict'" in str(e.value.details())


def _thresholds(dep: Any) -> list[tuple[int, float]]:
    """(version, effective threshold) from a Deployment message."""
    out = []
    for t in dep.thresholds:
        out.append((int(t.version), float(t.threshold)))
    return out


def test_shadow_scorings_are_logged_as_shadow(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    srv = serve(models)
    admin_call(srv, "LoadVersion", apb.LoadVersionRequest(model=MODEL, version=1, reason="t"))
    admin_call(
        srv,
        "SetShadow",
        apb.SetShadowRequest(model=MODEL, version=1, sample_percent=100, reason="t"),
    )
    for i in range(20):
        srv.stub.ModelInfer(request(traffic, i, f"s-{i}", key=f"card-{i}"), timeout=10)
    wait_for("40 logged rows", lambda: store_of(models).counts().predictions == 40)
    rows = logged(models)
    shadow = [r for r in rows if r["shadow"]]
    primary = {r["id"]: r for r in rows if not r["shadow"]}
    assert len(shadow) == 20 and len(primary) == 20
    for r in shadow:
        assert (r["version"], r["variant"]) == (1, "shadow")
        assert primary[r["id"]]["version"] == 2
        assert r["key_hash"] == primary[r["id"]]["key_hash"]


def test_a_full_queue_drops_and_counts_and_never_blocks_a_reply(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    """The test holds SQLite's write lock, so the log writer cannot commit: the
    queue fills, later rows are dropped and counted, and every reply still comes
    (a reply that waited for the log would time out here)."""
    srv = serve(models, prediction_log_queue_rows=10, prediction_log_batch_rows=5)
    srv.stub.ModelInfer(request(traffic, 0, "warm"), timeout=10)
    wait_for("the first row", lambda: store_of(models).counts().predictions == 1)
    db = sqlite3.connect(models / ".feedback" / "feedback.sqlite", timeout=30)
    db.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        for i in range(200):
            srv.stub.ModelInfer(request(traffic, i % 50, f"q-{i}"), timeout=5)
        took = time.monotonic() - started
        dropped = srv.metric("riskserve_prediction_log_rows_total", result="dropped")
        assert dropped >= 200 - 10 - 5, (dropped, took)  # queue 10, a batch of 5 in hand
    finally:
        db.rollback()
        db.close()
    wait_for(
        "the queued rows",
        lambda: srv.metric("riskserve_prediction_log_rows_total", result="written") >= 11,
    )
    n = store_of(models).counts().predictions
    assert 11 <= n <= 1 + 200 - int(dropped)


def test_sigterm_commits_what_is_queued(
    models: Path, launch_server: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    srv = launch_server(models, env=env(prediction_log_flush_seconds=30))
    for i in range(50):
        srv.stub.ModelInfer(request(traffic, i, f"t-{i}"), timeout=10)
    assert store_of(models).counts().predictions == 0  # still queued (30 s flush)
    assert srv.stop() == 0
    assert store_of(models).counts().predictions == 50


def test_two_workers_write_one_consistent_log(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    srv = serve(models, workers=2)
    ids = [f"w-{i}" for i in range(300)]
    pids = set()
    for i, rid in enumerate(ids):
        # a fresh channel now and then, so both workers get connections
        if i % 30 == 0:
            ch = grpc.insecure_channel(srv.target)
            from riskserve.pb.inference import grpc_service_pb2_grpc as igrpc

            stub = igrpc.GRPCInferenceServiceStub(ch)
        stub.ModelInfer(request(traffic, i, rid, key=f"card-{i % 40}"), timeout=10)
    wait_for("300 rows", lambda: store_of(models).counts().predictions == 300)
    rows = logged(models)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    for line in srv.events("worker serving"):
        pids.add(line["pid"])
    assert len(pids) == 2


# -- labels in ---------------------------------------------------------------------------------


def test_label_credentials(models: Path, serve: Callable[..., ServerHandle]) -> None:
    srv = serve(models)
    for token, code in (
        ("", grpc.StatusCode.UNAUTHENTICATED),
        ("wrong", grpc.StatusCode.UNAUTHENTICATED),
        (ADMIN, grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as e:
            FeedbackClient(srv.target, token=token or "none").send([label("x", True)])
        assert e.value.code() is code, token
        with pytest.raises(grpc.RpcError) as e:
            FeedbackClient(srv.target, token=token or "none").stream([label("x", True)])
        assert e.value.code() is code, token
    assert feedback(srv).send([label("x", True)]).results[0].result == fpb.PENDING
    # Outcomes may be read with the reader/admin role or the feedback one.
    assert feedback(srv, ADMIN).performance(MODEL, 0.0).model == MODEL


def test_label_results_and_bad_input(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    srv = serve(models)
    for i in range(4):
        srv.stub.ModelInfer(request(traffic, i, f"r-{i}"), timeout=10)
    wait_for("4 rows", lambda: store_of(models).counts().predictions == 4)
    fb = feedback(srv)
    past = int((time.time() - 3600) * 1000)
    first = fb.send(
        [
            label("r-0", True, label_id="k0"),
            label("r-1", False, label_id="k1", amount=12.5),
            label("r-2", True, label_id="k2", label_time_ms=past),  # before its prediction
            label("r-404", True, label_id="k3"),
        ]
    )
    assert [a.result for a in first.results] == [
        fpb.ACCEPTED,
        fpb.ACCEPTED,
        fpb.REJECTED,
        fpb.PENDING,
    ]
    assert "before the prediction" in first.results[2].reason
    assert dict(first.counts) == {
        "accepted": 2,
        "duplicate": 0,
        "revised": 0,
        "pending": 1,
        "rejected": 1,
    }
    again = fb.send([label("r-0", True, label_id="k0"), label("r-0", False, label_id="k0b")])
    assert [a.result for a in again.results] == [fpb.DUPLICATE, fpb.REVISED]
    history = store_of(models).history("r-0")
    assert [(h.label_id, h.status) for h in history] == [("k0", "superseded"), ("k0b", "current")]

    cases = [
        (fpb.Label(outcome=fpb.OUTCOME_FRAUD), "labels[1].request_id"),
        (fpb.Label(request_id="r-3"), "labels[1].outcome"),
        (fpb.Label(request_id="r-3", outcome=7), "labels[1].outcome"),
        (label("r-3", True, amount=float("nan")), "labels[1].amount"),
        (label("r-3", True, label_time_ms=-5), "labels[1].label_time_ms"),
        (label("r-3", True, source="Charge Back!"), "labels[1].source"),
    ]
    for bad, field in cases:
        with pytest.raises(grpc.RpcError) as e:
            fb.send([label("r-3", True), bad])
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, field
        assert str(e.value.details()).startswith(field), e.value.details()
    # Nothing of a refused batch was written.
    assert store_of(models).history("r-3") == []


def test_a_label_sent_before_its_prediction_lands_is_joined(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    srv = serve(models, prediction_log_flush_seconds=3)
    srv.stub.ModelInfer(request(traffic, 0, "early"), timeout=10)
    ack = feedback(srv).send([label("early", True)])
    assert ack.results[0].result == fpb.PENDING
    assert [h.status for h in store_of(models).history("early")] == ["pending"]
    wait_for(
        "the join", lambda: [h.status for h in store_of(models).history("early")] == ["current"]
    )
    joined = store_of(models).joined(MODEL, 0, time.time() + 10)
    assert list(joined.outcome) == [int(Outcome.FRAUD)]


def _stream_in_child(target: str, ids: list[str], acked: Path) -> subprocess.Popen[str]:
    """A client process that streams labels for `ids` in batches of 100 and appends
    the index range of each acknowledged batch to `acked`."""
    code = f"""
import json, sys
from riskserve.labels_client import FeedbackClient
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2 as fpb
ids = json.load(open({str(acked) + ".ids"!r}))
F, L = fpb.OUTCOME_FRAUD, fpb.OUTCOME_LEGITIMATE
labels = [fpb.Label(request_id=r, outcome=F if i % 7 == 0 else L,
                    source="chargeback", label_id="L" + r) for i, r in enumerate(ids)]
c = FeedbackClient({target!r}, token={FEEDBACK!r}, timeout=60)
done = 0
out = open({str(acked)!r}, "a")
def ack(n):
    global done
    out.write(f"{{done}} {{done + n}}\\n"); out.flush(); done += n
try:
    c.stream(labels, batch=100, on_ack=ack)
except Exception as e:
    print("stream ended:", type(e).__name__, file=sys.stderr)
"""
    Path(str(acked) + ".ids").write_text(json.dumps(ids))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_9_mid_stream_loses_no_acknowledged_label(
    models: Path,
    launch_server: Callable[..., ServerHandle],
    serve: Callable[..., ServerHandle],
    tmp_path: Path,
) -> None:
    n = 10_000
    ids = [f"k9-{i}" for i in range(n)]
    srv = launch_server(models, env=env())
    acked = tmp_path / "acked.txt"
    client = _stream_in_child(srv.target, ids, acked)
    wait_for("some acknowledgements", lambda: acked.exists() and len(acked.read_text()) > 20)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    client.wait(60)
    ranges = [tuple(map(int, line.split())) for line in acked.read_text().splitlines()]
    assert ranges, "no batch was acknowledged before the kill"
    acked_n = ranges[-1][1]
    assert acked_n < n, "the stream finished before the kill: the test proves nothing"

    srv2 = serve(models)
    store = store_of(models)
    for lo, hi in ranges:
        for rid in (ids[lo], ids[hi - 1]):
            h = store.history(rid)
            assert len(h) == 1 and h[0].label_id == "L" + rid, rid
    with sqlite3.connect(models / ".feedback" / "feedback.sqlite") as db:
        stored = {r[0] for r in db.execute("SELECT label_id FROM labels")}
        count = db.execute("SELECT count(*) FROM labels").fetchone()[0]
    assert count == len(stored)  # exactly once each
    assert {"L" + r for r in ids[:acked_n]} <= stored

    labels = [
        fpb.Label(
            request_id=r,
            outcome=fpb.OUTCOME_FRAUD if i % 7 == 0 else fpb.OUTCOME_LEGITIMATE,
            source="chargeback",
            label_id="L" + r,
        )
        for i, r in enumerate(ids)
    ]
    fb = feedback(srv2)
    first = fb.stream(labels, batch=1000)
    counts1 = {k: sum(r.counts[k] for r in first) for k in ("duplicate", "pending")}
    assert counts1["duplicate"] == len(stored) and counts1["pending"] == n - len(stored)
    before = store.counts()
    second = fb.stream(labels, batch=1000)
    assert sum(r.counts["duplicate"] for r in second) == n
    assert store.counts() == before


# -- outcomes out ------------------------------------------------------------------------------


def test_outcomes_equal_scikit_learn_per_variant(
    models: Path, serve: Callable[..., ServerHandle], traffic: pa.Table, tmp_path: Path
) -> None:
    srv = serve(models, outcome_min_labels=5)
    admin_call(srv, "LoadVersion", apb.LoadVersionRequest(model=MODEL, version=1, reason="t"))
    admin_call(
        srv,
        "SetTraffic",
        apb.SetTrafficRequest(
            model=MODEL,
            variants=[apb.Variant(version=1, weight=50), apb.Variant(version=2, weight=50)],
            reason="a/b",
        ),
    )
    # 400 requests of 10 rows, 200 cards: rows are logged as <id>/<row>.
    per, n = 10, 4_000
    y = np.asarray(traffic.column("is_fraud").to_numpy(), dtype=int)[:n]
    served: dict[str, list[tuple[float, int]]] = {"v1": [], "v2": []}
    ids: list[str] = []
    for r in range(n // per):
        req = request(traffic, r * per, f"ab-{r}", key=f"card-{r % 200}", rows=per)
        req.outputs.add(name="probability")
        resp = srv.stub.ModelInfer(req, timeout=10)
        probs = np.frombuffer(resp.raw_output_contents[0], dtype="<f4")
        for j, p in enumerate(probs):
            served[resp.parameters["variant"].string_param].append((float(p), r * per + j))
            ids.append(f"{resp.id}/{j}")
    assert len(served["v1"]) > 1000 and len(served["v2"]) > 1000
    wait_for(f"{n} rows", lambda: store_of(models).counts().predictions == n)
    # Labels for 90 % of the rows, written as a CSV and sent by the CLI.
    rng = np.random.default_rng(3)
    labelled = np.sort(rng.choice(n, size=int(0.9 * n), replace=False))
    amounts = np.round(rng.uniform(1, 500, size=n), 2)
    csv = tmp_path / "labels.csv"
    with csv.open("w") as f:
        f.write("request_id,outcome,source,amount\n")
        for i in labelled:
            f.write(f"{ids[i]},{'fraud' if y[i] else 'legit'},chargeback,{amounts[i]}\n")
        f.write("ab-0/0,maybe,chargeback,1\n")  # refused by the CLI, counted as rejected
    env_cli = {"RISKSERVE_FEEDBACK_TOKEN": FEEDBACK}
    out = _cli(env_cli, "labels", "send", "--server", srv.target, "--file", str(csv), "--json")
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts == {
        "accepted": len(labelled),
        "duplicate": 0,
        "revised": 0,
        "pending": 0,
        "rejected": 1,
    }
    png = tmp_path / "perf.png"
    out = _cli(
        env_cli,
        "performance", "--server", srv.target, MODEL, "--maturity", "0d", "--json",
        "--png", str(png),
    )  # fmt: skip
    perf = json.loads(out.strip().splitlines()[-1])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dep = admin_call(srv, "GetDeployment", apb.GetDeploymentRequest(model=MODEL))
    thresholds = dict(_thresholds(dep))
    got = {v["variant"]: v for v in perf["variants"]}
    assert set(got) == {"v1", "v2"}
    is_labelled = np.zeros(n, dtype=bool)
    is_labelled[labelled] = True
    for variant, pairs in served.items():
        version = int(variant[1:])
        p = np.asarray([s for s, _ in pairs], dtype=np.float64)
        idx = np.asarray([i for _, i in pairs])
        keep = is_labelled[idx]
        p, idx = p[keep], idx[keep]
        truth = y[idx]
        decided = (p.astype(np.float32) >= np.float32(thresholds[version])).astype(int)
        v = got[variant]
        assert v["version"] == version
        assert v["labelled"] == len(idx)
        assert v["threshold"] == pytest.approx(thresholds[version])
        assert v["recall"] == pytest.approx(recall_score(truth, decided))
        assert v["precision"] == pytest.approx(precision_score(truth, decided, zero_division=0))
        fp = int(((decided == 1) & (truth == 0)).sum())
        assert v["false_positive_rate"] == pytest.approx(fp / int((truth == 0).sum()))
        assert v["auc"] == pytest.approx(roc_auc_score(truth, p), abs=1e-6)
        caught = amounts[idx][(decided == 1) & (truth == 1)].sum()
        assert v["amount_recall"] == pytest.approx(caught / amounts[idx][truth == 1].sum())
        assert v["coverage"] == pytest.approx(len(idx) / len(pairs))
    verdict = perf["verdict"]
    assert verdict["control"] in ("v1", "v2")
    assert verdict["summary"]
    # Today's predictions are not judged at the default maturity (14 days).
    default = feedback(srv).performance(MODEL)
    assert all(v.labelled == 0 for v in default.variants)
    assert "not enough labels" in default.verdict or "nothing" in default.verdict


def _cli(extra_env: dict[str, str], *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "riskserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_server_env(), **extra_env},
    )
    assert r.returncode == 0, r.stderr + r.stdout
    return r.stdout


def test_labels_cli_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("id,what\n1,2\n")
    r = run_cli("labels", "send", "--server", "127.0.0.1:1", "--file", str(bad))
    assert r.returncode == 2
    assert "no column 'request_id'" in r.stderr


def test_outcome_series_exist_from_the_start(
    models: Path, serve: Callable[..., ServerHandle]
) -> None:
    """Before any label, every served variant's outcome series is on /metrics (NaN),
    and so are the log and label counters at 0."""
    srv = serve(models)
    for name in ("riskserve_outcome_recall", "riskserve_outcome_false_positive_rate"):
        assert math.isnan(srv.metric(name, model=MODEL, version="2", variant="v2"))
    assert srv.metric("riskserve_outcome_labelled", model=MODEL, version="2", variant="v2") == 0
    text = _metrics_text(srv)
    for result in ("accepted", "duplicate", "revised", "pending", "rejected"):
        assert f'riskserve_labels_total{{result="{result}"}} 0.0' in text
    for result in ("written", "dropped", "failed"):
        assert f'riskserve_prediction_log_rows_total{{result="{result}"}} 0.0' in text


def _metrics_text(srv: ServerHandle) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def test_a_postgresql_store_serves_the_same_loop(
    models: Path, launch_server: Callable[..., ServerHandle], traffic: pa.Table
) -> None:
    """RISKSERVE_FEEDBACK_DSN on a real PostgreSQL 15 cluster (started here, as the
    postgres user): two workers log, labels join, outcomes come back."""
    from feedback.pg import PgCluster

    with PgCluster.start(fsync=False) as pg:
        settings = {"feedback_dsn": pg.dsn(tcp=True), "outcome_maturity_seconds": 0}
        srv = launch_server(models, env=env(**settings, outcome_refresh_seconds=0.5), workers=2)
        for i in range(40):
            srv.stub.ModelInfer(request(traffic, i, f"pg-{i}", key=f"card-{i}"), timeout=10)
        store = PostgresStore(pg.dsn(tcp=True))
        try:
            wait_for("40 rows in PostgreSQL", lambda: store.counts().predictions == 40)
            fb = feedback(srv)
            acks = fb.send([label(f"pg-{i}", i % 4 == 0) for i in range(40)])
            assert {a.result for a in acks.results} == {fpb.ACCEPTED}
            perf = fb.performance(MODEL, 0.0)
            (v2,) = [v for v in perf.variants if v.variant == "v2"]
            assert v2.labelled == 40 and v2.fraud == 10
            assert store.counts().labels == 40
            # The metrics process of the two workers exports them from the same store.
            wait_for(
                "outcomes on /metrics",
                lambda: srv.metric("riskserve_outcome_labelled", model=MODEL, variant="v2") == 40,
            )
        finally:
            store.close()
            srv.stop_and_check()  # before the cluster stops


def test_garbage_and_bad_requests_get_a_clear_status(
    models: Path, serve: Callable[..., ServerHandle]
) -> None:
    """Bytes that are no message, on each Feedback method (with the credential):
    INVALID_ARGUMENT naming the message, never INTERNAL; a bad model name too."""
    srv = serve(models)
    md = [("authorization", f"Bearer {FEEDBACK}")]
    garbage = b"\xff\xff\xff\x0f\x0a"
    for method in ("SendLabels", "GetPerformance"):
        call = srv.channel.unary_unary(f"/riskserve.feedback.v1.Feedback/{method}")
        with pytest.raises(grpc.RpcError) as e:
            call(garbage, metadata=md, timeout=10)
        assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT, method
        assert "not a valid riskserve.feedback.v1" in str(e.value.details())
    stream = srv.channel.stream_stream("/riskserve.feedback.v1.Feedback/StreamLabels")
    ok = fpb.SendLabelsRequest(labels=[label("g-1", True)]).SerializeToString()
    replies = stream(iter([ok, garbage]), metadata=md, timeout=10)
    first = fpb.SendLabelsResponse.FromString(next(replies))
    assert first.results[0].result == fpb.PENDING  # acknowledged before the bad message
    with pytest.raises(grpc.RpcError) as e:
        next(replies)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert str(e.value.details()).startswith("message 1: ")
    fb = feedback(srv)
    for model, code in (("", "INVALID_ARGUMENT"), ("nope", "NOT_FOUND")):
        with pytest.raises(grpc.RpcError) as e:
            fb.performance(model, 0.0)
        assert e.value.code().name == code, model
    with pytest.raises(grpc.RpcError) as e:
        fb.performance(MODEL, -1.0)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "maturity_seconds" in str(e.value.details())
    assert store_of(models).history("g-1")[0].status == "pending"
