"""The retraining loop end to end (issue 12): a real `riskserve serve`, real gRPC
clients, `riskserve retrain-watch` as a subprocess running the real `riskserve
retrain`, models trained by `riskserve train` on `riskserve datagen` data.

v1 serves, with the prediction log on, a short sliding drift window and outcome
maturity 0. Traffic shifts: a fraud pattern v1's data never labelled fraud (pharmacy
payments of 400-900, otherwise ordinary) arrives with its labels through the
Feedback API. The drift alert holds, the watcher retrains, and v2 is registered
from a snapshot of the labelled log (its manifest names the snapshot's digest and
the parent v1) and starts as a 10 % canary. More traffic and labels later,
`riskserve performance` shows v2's recall above v1's with the sequential test's
verdict, v2 catches the new pattern where v1 does not (from the `flagged` output of
the replies themselves), promoting v2 and rolling back both work, and the
watcher's /metrics counts the run as trigger="drift", result="registered"."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import watchproc
from conftest import FRAUD_SPEC, V2_DATATYPE, ServerHandle, run_cli, wait_for
from watchproc import WatchHandle

from riskserve.client import build_request
from riskserve.labels_client import FeedbackClient
from riskserve.pb.inference import grpc_service_pb2 as ipb
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc
from riskserve.pb.riskserve.feedback.v1 import feedback_pb2 as fpb
from riskserve.training.datagen import generate, read_table

pytestmark = pytest.mark.timeout(300)

MODEL = "fraud"
ADMIN = "retraining-test-admin-token"
FEEDBACK = "retraining-test-label-token"
TRAIN_ROWS = 6_000
ROUNDS = 40
#: The new fraud pattern: a category and an amount range v1's data never labelled fraud.
PATTERN_CATEGORY = "pharmacy"
PATTERN_AMOUNT = (400.0, 900.0)
#: Ordinary traffic, then traffic with the pattern (before and after the retrain).
BEFORE_ROWS, SHIFTED_ROWS, AFTER_ROWS = 1_500, 2_000, 3_000
SHIFTED_SHARE, AFTER_SHARE = 0.40, 0.20
ROWS_PER_REQUEST = 5
RPC_TIMEOUT = 30.0
#: Guards against a hang (not timings): the whole test has pytestmark's timeout.
WAIT = 150.0

SERVER_ENV = {
    "RISKSERVE_ADMIN_TOKEN": ADMIN,
    "RISKSERVE_FEEDBACK_TOKEN": FEEDBACK,
    # A sliding drift window of 2 minutes (60 slots of 2 s), checked twice a second.
    "RISKSERVE_DRIFT_SLOTS": "60",
    "RISKSERVE_DRIFT_SLOT_SECONDS": "2",
    "RISKSERVE_DRIFT_CHECK_SECONDS": "0.5",
    # Every labelled prediction is judged at once, and /metrics follows within 0.5 s.
    "RISKSERVE_OUTCOME_MATURITY_SECONDS": "0",
    "RISKSERVE_OUTCOME_REFRESH_SECONDS": "0.5",
    "RISKSERVE_OUTCOME_MIN_LABELS": "10",
    # The guard would (rightly) see v2's scores differ from v1's on the new pattern
    # and take its traffic away; here the outcomes are what is measured.
    "RISKSERVE_CANARY_MIN_REQUESTS": str(10**9),
}


# -- data ----------------------------------------------------------------------------------


def in_pattern(table: pa.Table) -> np.ndarray:
    cat = np.array(table.column("merchant_category").to_pylist())
    amount = table.column("amount").to_numpy(zero_copy_only=False)
    lo, hi = PATTERN_AMOUNT
    return (cat == PATTERN_CATEGORY) & (amount >= lo) & (amount <= hi)


def with_pattern(table: pa.Table, share: float, seed: int) -> tuple[pa.Table, np.ndarray]:
    """`table` with `share` of its legitimate rows turned into the new pattern
    (category and amount, an ordinary amount for the card: its 30-day average and
    24 h sum follow); returns the table and the pattern's row mask."""
    rng = np.random.default_rng(seed)
    y = table.column("is_fraud").to_numpy()
    rows = np.sort(rng.choice(np.flatnonzero(y == 0), round(share * table.num_rows), replace=False))
    cols = {n: table.column(n).to_pylist() for n in table.column_names}
    lo, hi = PATTERN_AMOUNT
    for i in rows:
        amount = round(float(rng.uniform(lo, hi)), 2)
        cols["amount_sum_24h"][i] = round(cols["amount_sum_24h"][i] - cols["amount"][i] + amount, 2)
        cols["amount"][i] = amount
        cols["avg_amount_30d"][i] = round(amount * float(rng.uniform(0.8, 1.25)), 2)
        cols["merchant_category"][i] = PATTERN_CATEGORY
        cols["is_fraud"][i] = 1
    mask = np.zeros(table.num_rows, dtype=bool)
    mask[rows] = True
    return pa.table(cols, schema=table.schema), mask


# -- traffic and labels ------------------------------------------------------------------------


@dataclasses.dataclass
class Scored:
    request_id: str
    fraud: bool
    pattern: bool
    version: str
    variant: str
    flagged: bool


def send(srv: ServerHandle, table: pa.Table, pattern: np.ndarray, tag: str) -> list[Scored]:
    """Every row of `table`, ROWS_PER_REQUEST per request, one routing key (card) per
    request, asking for the decision; what each row's reply said."""
    spec = json.loads(FRAUD_SPEC.read_text())
    dtypes = {i["name"]: V2_DATATYPE[i["dtype"]] for i in spec["inputs"]}
    kinds = {i["name"]: i["dtype"] for i in spec["inputs"]}
    y = table.column("is_fraud").to_numpy()
    out: list[Scored] = []
    for start in range(0, table.num_rows, ROWS_PER_REQUEST):
        part = table.slice(start, ROWS_PER_REQUEST)
        cols: dict[str, Any] = {}
        for name, kind in kinds.items():
            col = part.column(name)
            if kind == "string":
                cols[name] = [str(v) for v in col.to_pylist()]
            else:
                np_type = {"bool": bool, "int": np.int64, "float": np.float64}[kind]
                cols[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np_type)
        rid = f"{tag}-{start}"
        req = build_request(
            MODEL, cols, dtypes, request_id=rid, parameters={"routing_key": f"card-{rid}"}
        )
        req.outputs.add(name="flagged")
        resp: ipb.ModelInferResponse = srv.stub.ModelInfer(req, timeout=RPC_TIMEOUT)
        (flag_out,) = [i for i, o in enumerate(resp.outputs) if o.name == "flagged"]
        flagged = np.frombuffer(resp.raw_output_contents[flag_out], dtype=np.bool_)
        variant = resp.parameters["variant"].string_param
        for j in range(part.num_rows):
            out.append(
                Scored(
                    f"{rid}/{j}",
                    bool(y[start + j]),
                    bool(pattern[start + j]),
                    resp.model_version,
                    variant,
                    bool(flagged[j]),
                )
            )
    return out


def send_labels(srv: ServerHandle, scored: list[Scored]) -> None:
    labels = [
        fpb.Label(
            request_id=s.request_id,
            outcome=fpb.OUTCOME_FRAUD if s.fraud else fpb.OUTCOME_LEGITIMATE,
            source="chargeback" if s.fraud else "review",
        )
        for s in scored
    ]
    client = FeedbackClient(srv.target, token=FEEDBACK, timeout=RPC_TIMEOUT)
    try:
        replies = client.stream(labels, batch=500)
    finally:
        client.close()
    results = [r.result for reply in replies for r in reply.results]
    assert len(results) == len(labels)
    rejected = [r for reply in replies for r in reply.results if r.reason]
    assert not rejected, rejected[:3]


def pattern_recall(scored: list[Scored], variant: str) -> tuple[float, int]:
    rows = [s for s in scored if s.pattern and s.variant == variant]
    return (sum(s.flagged for s in rows) / len(rows) if rows else float("nan")), len(rows)


@pytest.fixture
def start_watch() -> Iterator[Callable[..., WatchHandle]]:
    started: list[WatchHandle] = []

    def start(models: Path, srv: ServerHandle, *args: str) -> WatchHandle:
        h = watchproc.start_watch(models, srv, MODEL, ADMIN, *args)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


def admin(srv: ServerHandle) -> Any:
    return agrpc.ModelAdminStub(srv.channel)


def weights(srv: ServerHandle) -> dict[int, int]:
    md = [("authorization", f"Bearer {ADMIN}")]
    dep = admin(srv).GetDeployment(
        apb.GetDeploymentRequest(model=MODEL), metadata=md, timeout=RPC_TIMEOUT
    )
    return {v.version: v.weight for v in dep.variants}


# -- the scenario ---------------------------------------------------------------------------------


def test_drift_retrains_a_canary_that_catches_the_new_pattern(
    tmp_path: Path,
    start_server: Callable[..., ServerHandle],
    start_watch: Callable[..., WatchHandle],
) -> None:
    data, models = tmp_path / "payments.parquet", tmp_path / "models"
    r = run_cli("datagen", "--rows", str(TRAIN_ROWS), "--seed", "0", "--out", str(data))
    assert r.returncode == 0, r.stderr
    train_table = read_table(data)
    assert int(train_table.column("is_fraud").to_numpy()[in_pattern(train_table)].sum()) == 0
    r = run_cli(
        "train", "--data", str(data), "--target", "is_fraud", "--model", MODEL,
        "--models", str(models), "--spec", str(FRAUD_SPEC), "--rounds", str(ROUNDS),
        "--seed", "1", timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["version"] == 1

    srv = start_server(models, env=SERVER_ENV)
    labelled_before_and_shifted = BEFORE_ROWS + SHIFTED_ROWS
    watch = start_watch(
        models, srv,
        # The score and v1's 5 most important inputs (amount and its 30-day average
        # among them) are watched.
        "--poll-seconds", "0.5", "--drift-hold-seconds", "2", "--drift-top-features", "5",
        # No run before every label of the shifted traffic is in (the snapshot takes them).
        "--min-labels", str(labelled_before_and_shifted),
        "--min-interval-seconds", "3600", "--timeout-seconds", "240",
        "--start", "canary", "--percent", "10", "--retrain-args", "--maturity 0d",
    )  # fmt: skip

    # Ordinary traffic, labelled: no drift, nothing runs.
    before = generate(BEFORE_ROWS, 101)
    scored = send(srv, before, np.zeros(BEFORE_ROWS, dtype=bool), "before")
    send_labels(srv, scored)
    wait_for(
        "the watcher to see the ordinary traffic's labels",
        lambda: watch.metric("riskserve_retrain_labelled_predictions", model=MODEL) == BEFORE_ROWS,
        WAIT,
    )
    assert watch.metric("riskserve_retrain_source_up", model=MODEL) == 1
    assert watch.metric("riskserve_retrain_condition", model=MODEL, trigger="drift") == 0
    assert watch.metric("riskserve_retrain_drift_held_seconds", model=MODEL) == 0
    assert srv.metric("riskserve_drift_alert", model=MODEL, version="1") == 0

    # The new pattern arrives, with its labels.
    shifted, shifted_pattern = with_pattern(generate(SHIFTED_ROWS, 102), SHIFTED_SHARE, 7)
    shifted_scored = send(srv, shifted, shifted_pattern, "shifted")
    v1_caught, n = pattern_recall(shifted_scored, "v1")
    assert n == round(SHIFTED_SHARE * SHIFTED_ROWS) and v1_caught < 0.05  # v1 misses it
    send_labels(srv, shifted_scored)
    scored += shifted_scored

    wait_for(
        "the watcher's retrain to finish",
        lambda: bool(watch.events("retrain finished")) or watch.proc.poll() is not None,
        WAIT,
    )
    (finished,) = watch.events("retrain finished")
    assert finished["result"] == "registered", watch.log_text()
    assert finished["trigger"] == "drift" and finished["version"] == 2
    (watched,) = [e for e in watch.events("drift watched") if e["version"] == 1]
    assert {"__score__", "amount", "avg_amount_30d"} <= set(watched["fields"])
    assert len(watched["fields"]) == 6
    (started,) = watch.events("retrain started")
    field = started["reason"].removeprefix("the PSI of ").split(" (v1) ")[0]
    assert field in watched["fields"], started["reason"]
    assert {e["version"] for e in srv.events("drift alert raised")} == {1}

    # The run log, the manifest's provenance and the snapshot agree.
    run_log = models / MODEL / ".retrain" / "runs.jsonl"
    (run,) = [json.loads(ln) for ln in run_log.read_text().splitlines()]
    assert (run["trigger"], run["result"], run["version"], run["parent"]) == (
        "drift", "registered", 2, 1,
    )  # fmt: skip
    assert run["gate"]["passed"] is True and run["gate"]["checks"]
    snapshot = Path(run["snapshot"])
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == run["snapshot_sha256"]
    manifest = json.loads((models / MODEL / "2" / "manifest.json").read_text())
    assert manifest["retrain"]["parent"]["version"] == 1
    assert manifest["retrain"]["snapshot"]["sha256"] == run["snapshot_sha256"]
    assert manifest["retrain"]["trigger"] == "drift"
    assert manifest["files"]["model.txt"] == run["model_sha256"]

    # v2 starts as a 10 % canary; the watcher's /metrics counts the run.
    assert weights(srv) == {1: 90, 2: 10}
    assert watch.metric("riskserve_retrain_runs_total", model=MODEL, trigger="drift",
                        result="registered") == 1  # fmt: skip
    total = sum(
        watch.metric("riskserve_retrain_runs_total", model=MODEL, trigger=t, result=res)
        for t in ("schedule", "drift", "recall")
        for res in ("registered", "rejected", "error", "timeout")
    )
    assert total == 1
    end = dt.datetime.fromisoformat(run["end"]).timestamp()
    assert watch.metric("riskserve_retrain_last_success_timestamp_seconds", model=MODEL) == end
    assert watch.metric("riskserve_retrain_last_registered_version", model=MODEL) == 2

    # More traffic with the pattern, split 90/10 by card; its labels.
    after, after_pattern = with_pattern(generate(AFTER_ROWS, 103), AFTER_SHARE, 8)
    after_scored = send(srv, after, after_pattern, "after")
    assert {s.variant for s in after_scored} == {"v1", "v2"}
    send_labels(srv, after_scored)
    scored += after_scored
    v1_recall, n1 = pattern_recall(after_scored, "v1")
    v2_recall, n2 = pattern_recall(after_scored, "v2")
    assert n2 >= 20 and n1 >= 5 * n2
    assert v2_recall > 0.5 > 0.05 > v1_recall, (v1_recall, v2_recall)
    wait_for(
        "every row in the prediction log",
        lambda: srv.metric("riskserve_prediction_log_rows_total", result="written") == len(scored),
        WAIT,
    )

    r = run_cli(
        "performance", "--server", srv.target, MODEL, "--maturity", "0d", "--json",
        "--token", FEEDBACK,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    perf = json.loads(r.stdout.splitlines()[-1])
    by_variant = {v["variant"]: v for v in perf["variants"] if not v["shadow"]}
    assert by_variant["v2"]["version"] == 2 and by_variant["v1"]["version"] == 1
    assert by_variant["v2"]["fraud"] >= 20
    assert by_variant["v2"]["recall"] > by_variant["v1"]["recall"]
    verdict = perf["verdict"]
    assert verdict["control"] == "v1"
    (comparison,) = [c for c in verdict["comparisons"] if c["challenger"] == "v2"]
    recall_test = comparison["tests"]["recall"]
    assert recall_test["significant"] and recall_test["difference"] > 0
    assert 0 <= recall_test["p_value"] < 0.05 and recall_test["ci"][0] > 0
    assert comparison["decision"] == "better"
    assert verdict["summary"].startswith("v2 vs v1: better")

    # Promote v2; roll back to the canary split.
    r = run_cli("admin", "--server", srv.target, "--token", ADMIN, "promote", MODEL, "2")
    assert r.returncode == 0, r.stderr
    assert {v: w for v, w in weights(srv).items() if w} == {2: 100}
    r = run_cli("admin", "--server", srv.target, "--token", ADMIN, "rollback", MODEL)
    assert r.returncode == 0, r.stderr
    assert weights(srv) == {1: 90, 2: 10}

    # Nothing else ran (the minimum interval), and the watcher stops cleanly.
    assert len(run_log.read_text().splitlines()) == 1
    assert watch.stop() == 0
    assert watch.events()[-1]["event"] == "stopped"
    assert not [e for e in watch.events() if "exception" in e], watch.log_text()
