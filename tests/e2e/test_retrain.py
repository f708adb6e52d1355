"""`riskserve retrain` end to end: a real server serves fraud v1 (trained by
`riskserve train`, tracked in a real MLflow file store) with the prediction log on;
traffic carries a new fraud pattern v1's data never labelled fraud (big pos grocery
payments); labels go in through the Feedback API (`riskserve labels send`). Then
`riskserve retrain` runs as a subprocess, as the watcher and the CronJob run it:

* `--canary 10`: v2 is registered with a manifest naming the snapshot digest and
  parent v1, beats v1 on the holdout, and the server splits 90/10; MLflow's aliases
  champion/challenger point at v1 and v2;
* `--from-snapshot` twice: the same model sha256;
* `--shuffle-training-labels`: the gate refuses, exit 3, the registry unchanged;
* bad input (no label in the window, a snapshot of another schema, a champion
  missing from the registry, an MLflow server that is down): exit 2, a clear error
  as the last JSON line, the registry unchanged."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import FRAUD_SPEC, V2_DATATYPE, ServerHandle, _server_env, start_server_process

from riskserve.client import build_request
from riskserve.feedback.sqlite import SqliteStore
from riskserve.pb.riskserve.admin.v1 import admin_pb2 as apb
from riskserve.pb.riskserve.admin.v1 import admin_pb2_grpc as agrpc
from riskserve.registry import ModelRepository

pytestmark = pytest.mark.timeout(300)

MODEL = "fraud"
ADMIN = "retrain-test-admin-token"
FEEDBACK = "retrain-test-label-token"
TRAIN_ROWS = 4000
ROUNDS = 20
TRAFFIC_ROWS = 5000
BATCH = 250
#: Share of the traffic that is the new fraud pattern.
PATTERN_SHARE = 0.08


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("retrain-e2e")


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`python -m riskserve.cli ARGS` without the test's RISKSERVE_* variables."""
    return subprocess.run(
        [sys.executable, "-m", "riskserve.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_server_env(),
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    doc: dict[str, Any] = json.loads(lines[-1])
    return doc


def with_new_pattern(
    table: pa.Table, rng: np.random.Generator
) -> tuple[pa.Table, np.ndarray[Any, np.dtype[np.bool_]]]:
    """`table` with PATTERN_SHARE of its rows turned into the new pattern (card-present
    chip payments of 250-450 at a grocery), every one of them fraud."""
    n = table.num_rows
    hit = rng.random(n) < PATTERN_SHARE
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    for i in np.flatnonzero(hit):
        cols["merchant_category"][i] = "grocery"
        cols["channel"][i] = "pos"
        cols["entry_mode"][i] = "chip"
        cols["card_present"][i] = True
        cols["amount"][i] = float(round(rng.uniform(250, 450), 2))
    out = pa.table({k: pa.array(v, table.schema.field(k).type) for k, v in cols.items()})
    return out, hit


@pytest.fixture(scope="module")
def world(work: Path) -> Iterator[dict[str, Any]]:
    """fraud v1 served with the log on, the shifted traffic scored and labelled."""
    from riskserve.training.datagen import generate, run_datagen

    data = work / "train.parquet"
    run_datagen(TRAIN_ROWS, 0, data)
    models = work / "models"
    mlruns = (work / "mlruns").as_uri()
    trained = cli(
        "train", "--data", str(data), "--target", "is_fraud", "--model", MODEL, "--models",
        str(models), "--spec", str(FRAUD_SPEC), "--rounds", str(ROUNDS), "--seed", "1",
        "--mlflow-uri", mlruns,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-4000:]
    env = {
        "RISKSERVE_ADMIN_TOKEN": ADMIN,
        "RISKSERVE_FEEDBACK_TOKEN": FEEDBACK,
        "RISKSERVE_CANARY_MIN_REQUESTS": str(10**9),
    }
    srv = start_server_process(models, env=env)
    try:
        traffic, hit = with_new_pattern(generate(TRAFFIC_ROWS, 99), np.random.default_rng(5))
        y = np.where(hit, 1, traffic.column("is_fraud").to_numpy())
        spec = json.loads(FRAUD_SPEC.read_text())
        dts = {i["name"]: V2_DATATYPE[i["dtype"]] for i in spec["inputs"]}
        ids: list[str] = []
        for start in range(0, TRAFFIC_ROWS, BATCH):
            part = traffic.slice(start, BATCH)
            cols = {n: part.column(n).to_pylist() for n in dts}
            for n, dt in dts.items():
                if dt == "FP64":
                    cols[n] = [np.nan if v is None else v for v in cols[n]]
            rid = f"txn-{start // BATCH}"
            srv.stub.ModelInfer(build_request(MODEL, cols, dts, request_id=rid), timeout=30)
            ids += [f"{rid}/{i}" for i in range(part.num_rows)]
        store = SqliteStore(models / ".feedback" / "feedback.sqlite")
        deadline = time.monotonic() + 30
        while store.counts().predictions < TRAFFIC_ROWS:
            assert time.monotonic() < deadline, store.counts()
            time.sleep(0.1)
        store.close()
        labels = work / "labels.csv"
        amount = traffic.column("amount").to_pylist()
        with labels.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["request_id", "outcome", "amount", "source"])
            for i, rid in enumerate(ids):
                w.writerow([rid, "fraud" if y[i] else "legit", amount[i], "chargeback"])
        sent = cli(
            "labels", "send", "--server", srv.target, "--file", str(labels), "--token",
            FEEDBACK, "--json",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr[-4000:]
        assert last_json(sent)["accepted"] == TRAFFIC_ROWS
        yield {"models": models, "server": srv, "mlruns": mlruns, "work": work}
    finally:
        srv.stop_and_check()


def retrain(
    w: dict[str, Any], *args: str, models: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return cli(
        "retrain", "--model", MODEL, "--models", str(models or w["models"]), "--maturity", "0d",
        "--window", "1d", "--json", *args,
    )  # fmt: skip


def listing(models: Path) -> dict[str, dict[str, str]]:
    repo = ModelRepository(models)
    return {
        str(r.version): {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(r.path.iterdir())
        }
        for r in repo.versions(MODEL)
    }


def deployment(srv: ServerHandle) -> Any:
    stub = agrpc.ModelAdminStub(srv.channel)
    md = [("authorization", f"Bearer {ADMIN}")]
    return stub.GetDeployment(apb.GetDeploymentRequest(model=MODEL), metadata=md, timeout=30)


@pytest.fixture(scope="module")
def snapshot(world: dict[str, Any]) -> Path:
    """A snapshot of the log (a dry run writes it and registers nothing)."""
    proc = retrain(world, "--dry-run")
    assert proc.returncode in (0, 3), proc.stderr[-4000:]
    return Path(last_json(proc)["snapshot"])


def test_retrain_registers_v2_and_starts_it_as_a_10_percent_canary(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv: ServerHandle = world["server"]
    before = listing(world["models"])
    assert list(before) == ["1"]
    proc = retrain(
        world, "--trigger", "drift", "--canary", "10", "--server", srv.target, "--token", ADMIN,
        "--mlflow-uri", world["mlruns"],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = last_json(proc)
    assert (doc["registered"], doc["version"], doc["parent"]) == (True, 2, 1)
    snapshot = Path(doc["snapshot"])
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == doc["snapshot_sha256"]
    assert snapshot.name == f"{doc['snapshot_sha256']}.parquet"
    assert pq.read_table(snapshot).num_rows == TRAFFIC_ROWS
    manifest = json.loads((world["models"] / MODEL / "2" / "manifest.json").read_text())
    assert manifest["retrain"]["parent"]["version"] == 1
    assert manifest["retrain"]["snapshot"]["sha256"] == doc["snapshot_sha256"]
    assert manifest["retrain"]["snapshot"]["label_coverage"] == 1.0
    assert manifest["retrain"]["trigger"] == "drift"
    assert manifest["files"]["model.txt"] == doc["model_sha256"]
    # The challenger learned the new pattern; the champion never saw it labelled.
    gate = doc["gate"]
    assert gate["passed"] and gate["failures"] == []
    assert gate["challenger"]["auc"] > gate["champion"]["auc"] + 0.02
    assert gate["challenger"]["recall_at_fpr"] > gate["champion"]["recall_at_fpr"]
    # The server splits 90/10 and serves v2.
    d = deployment(srv)
    assert {v.version: v.weight for v in d.variants} == {1: 90, 2: 10}
    assert 2 in d.loaded_versions
    assert doc["deployment"]["variants"] == {"1": 90, "2": 10}
    assert "retrain (drift): v2" in d.reason
    # MLflow: both runs, the aliases follow the deployment.
    assert doc["mlflow_aliases"] == {"champion": "1", "challenger": "2"}
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=world["mlruns"], registry_uri=world["mlruns"])
    champion = client.get_model_version_by_alias(MODEL, "champion")
    challenger = client.get_model_version_by_alias(MODEL, "challenger")
    assert (champion.tags["riskserve.version"], challenger.tags["riskserve.version"]) == ("1", "2")
    run = client.get_run(challenger.run_id)
    assert run.data.tags["riskserve.data_sha256"] == doc["snapshot_sha256"]
    assert run.inputs.dataset_inputs[0].dataset.digest == doc["snapshot_sha256"][:36]


def test_from_snapshot_twice_gives_the_same_model(world: dict[str, Any], snapshot: Path) -> None:
    before = listing(world["models"])
    runs = [retrain(world, "--from-snapshot", str(snapshot), "--dry-run") for _ in range(2)]
    docs = [last_json(p) for p in runs]
    for p, doc in zip(runs, docs, strict=True):
        assert p.returncode == 0, p.stderr[-4000:]
        assert doc["registered"] is False and doc["dry_run"] is True
        assert doc["snapshot_sha256"] == hashlib.sha256(snapshot.read_bytes()).hexdigest()
    assert docs[0]["model_sha256"] == docs[1]["model_sha256"]
    assert len(docs[0]["model_sha256"]) == 64
    assert listing(world["models"]) == before


def test_the_gate_refuses_a_challenger_trained_on_shuffled_labels(world: dict[str, Any]) -> None:
    before = listing(world["models"])
    proc = retrain(world, "--shuffle-training-labels")
    assert proc.returncode == 3, proc.stderr[-4000:]
    doc = last_json(proc)
    assert doc["registered"] is False and doc["version"] is None
    assert not doc["gate"]["passed"]
    assert any(f.startswith("auc ") for f in doc["gate"]["failures"]), doc["gate"]
    assert "gate: auc" in proc.stderr
    assert listing(world["models"]) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_input_gets_a_clear_error_and_leaves_the_registry_as_it_was(
    world: dict[str, Any], snapshot: Path, tmp_path: Path
) -> None:
    models: Path = world["models"]
    before = listing(models)
    snapshots = sorted(os.listdir(models / MODEL / ".snapshots"))

    # A snapshot whose schema does not match the spec: amount as text.
    table = pq.read_table(snapshot)
    i = table.schema.get_field_index("amount")
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(i, "amount", pc.cast(table.column(i), pa.string())), bad)

    # A champion missing from the registry: a copy of the folder without v1, whose
    # deployment still names v1 the control.
    copy = tmp_path / "models"
    shutil.copytree(models, copy)
    shutil.rmtree(copy / MODEL / "1")
    copy_before = listing(copy)

    down = f"http://127.0.0.1:{_free_port()}"
    cases = [
        (("--window", "1h", "--maturity", "30d"), models, r"no labelled predictions of 'fraud'"),
        (("--from-snapshot", str(bad)), models, r"column 'amount' is string, not the spec's float"),
        (
            (),
            copy,
            r"the champion fraud v1 \(the deployment's control version\) is not in the registry",
        ),
        (("--mlflow-uri", down), models, rf"MLflow tracking server at {down} cannot be reached"),
        (("--canary", "12.5"), models, r"--canary must be a whole percentage in 1\.\.99"),
    ]
    for args, where, message in cases:
        proc = cli(
            "retrain", "--model", MODEL, "--models", str(where), "--json",
            *(args if "--maturity" in args else ("--maturity", "0d", "--window", "1d", *args)),
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr[-3000:])
        doc = last_json(proc)
        assert doc["registered"] is False and doc["version"] is None, doc
        assert re.search(message, doc["error"]), (message, doc["error"])
        assert re.search(message, proc.stderr), proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
    assert listing(models) == before
    assert listing(copy) == copy_before
    assert sorted(os.listdir(models / MODEL / ".snapshots")) == snapshots
