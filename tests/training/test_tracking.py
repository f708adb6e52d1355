"""MLflow tracking against a real MLflow file store (file:// URI, read back with
MLflow's own client): a `train` run and a `retrain` run each log their parameters,
metrics, data as a dataset input with its digest, and the model files; the registered
riskserve version becomes an MLflow model version; aliases point at the champion and
the challenger. A tracking server that is down, or not MLflow, is refused by name
before anything is trained."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FRAUD_SPEC
from test_retrain_pipeline import SETTINGS, config, fill, listing, store_of

from riskserve.training.datagen import fingerprint, generate, run_datagen
from riskserve.training.retrain import retrain
from riskserve.training.tracking import DIGEST_CHARS, Tracker, TrackingError, open_tracker
from riskserve.training.train import TrainConfig, train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_file_store_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_ALLOW_FILE_STORE unset (restored afterwards): the Tracker opts in."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "unset-by-test")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture
def tracked(tmp_path: Path, no_file_store_opt_in: None) -> Iterator[tuple[Tracker, Any]]:
    """A Tracker on a fresh file store, and MLflow's client on the same store."""
    uri = (tmp_path / "mlruns").as_uri()
    tracker = Tracker(uri, "fraud-experiments")
    from mlflow.tracking import MlflowClient

    yield tracker, MlflowClient(tracking_uri=uri, registry_uri=uri)


def only_run(client: Any, tracker: Tracker, **tags: str) -> Any:
    runs = client.search_runs([tracker.experiment_id])
    picked = [r for r in runs if all(r.data.tags.get(k) == v for k, v in tags.items())]
    assert len(picked) == 1, [r.data.tags for r in runs]
    return picked[0]


def artifact_bytes(client: Any, run_id: str, path: str, dst: Path) -> bytes:
    local = client.download_artifacts(run_id, path, str(dst))
    return Path(local).read_bytes()


def test_a_train_run_is_logged(tmp_path: Path, tracked: tuple[Tracker, Any]) -> None:
    tracker, client = tracked
    assert client.get_experiment_by_name("fraud-experiments").experiment_id == tracker.experiment_id
    data = tmp_path / "train.parquet"
    run_datagen(3000, 1, data)
    models = tmp_path / "models"
    res = train(
        TrainConfig(data=data, target="is_fraud", model="fraud", models_dir=models,
                    spec=FRAUD_SPEC, seed=3, rounds=15),
        tracker=tracker,
    )  # fmt: skip
    run = only_run(client, tracker, **{"riskserve.command": "train"})
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["seed"], p["num_boost_round"], p["learning_rate"]) == ("3", "15", "0.05")
    assert p["spec_source"] == str(FRAUD_SPEC) and p["model_format"] == "lightgbm"
    assert run.data.metrics["auc"] == res.metrics["auc"]
    assert run.data.metrics["threshold"] == res.operating_point["threshold"]
    sha = fingerprint(data)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == sha[:DIGEST_CHARS] and inp.dataset.name == "train.parquet"
    assert json.loads(inp.dataset.source) == {"uri": str(data)}
    assert json.loads(inp.dataset.profile) == {"rows": 3000, "sha256": sha, "target": "is_fraud"}
    assert [t.value for t in inp.tags if t.key == "mlflow.data.context"] == ["training"]
    tags = run.data.tags
    assert tags["riskserve.data_sha256"] == sha
    assert (tags["riskserve.model"], tags["riskserve.version"]) == ("fraud", "1")
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id, "model"))
    assert names == ["model/features.json", "model/model.txt"]
    body = artifact_bytes(client, run.info.run_id, "model/model.txt", tmp_path / "dl")
    assert hashlib.sha256(body).hexdigest() == res.model_sha256
    (mv,) = client.search_model_versions("name='fraud'")
    assert mv.tags == {"riskserve.version": "1"} and mv.run_id == run.info.run_id


def test_a_retrain_run_is_logged_and_aliases_follow(
    tmp_path: Path, tracked: tuple[Tracker, Any]
) -> None:
    tracker, client = tracked
    data = tmp_path / "train.parquet"
    run_datagen(4000, 1, data)
    models = tmp_path / "models"
    train(
        TrainConfig(data=data, target="is_fraud", model="fraud", models_dir=models,
                    spec=FRAUD_SPEC, seed=1, rounds=20),
        tracker=tracker,
    )  # fmt: skip
    store = store_of(models)
    fill(store, generate(5000, 7))
    store.close()
    res = retrain(config(models, trigger="schedule"), lambda: store_of(models), tracker=tracker)
    assert res.registered and res.version == 2
    run = only_run(client, tracker, **{"riskserve.command": "retrain"})
    assert run.info.run_id == res.mlflow_run_id and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["riskserve.trigger"] == "schedule" and tags["riskserve.gate"] == "passed"
    assert (tags["riskserve.version"], tags["riskserve.data_sha256"]) == ("2", res.snapshot_sha256)
    p = run.data.params
    assert (p["parent_version"], p["trigger"], p["seed"], p["num_boost_round"]) == (
        "1", "schedule", "1", "20",
    )  # fmt: skip
    m = run.data.metrics
    g = res.gate
    assert m["champion_auc"] == g.champion.auc and m["challenger_auc"] == g.challenger.auc
    assert m["champion_recall_at_fpr"] == g.champion.recall_at_fpr
    assert m["challenger_precision"] == g.challenger.precision and m["gate_passed"] == 1.0
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == res.snapshot_sha256[:DIGEST_CHARS]
    assert json.loads(inp.dataset.source) == {"uri": str(res.snapshot)}
    profile = json.loads(inp.dataset.profile)
    assert profile["sha256"] == res.snapshot_sha256 and profile["rows"] == 5000
    assert profile["label_coverage"] == 1.0
    body = artifact_bytes(client, run.info.run_id, "model/model.txt", tmp_path / "dl")
    assert hashlib.sha256(body).hexdigest() == res.model_sha256
    assert res.mlflow_model_version == "2"

    aliases = tracker.set_aliases("fraud", {"champion": 1, "challenger": 2})
    assert aliases == {"champion": "1", "challenger": "2"}
    assert client.get_model_version_by_alias("fraud", "champion").tags["riskserve.version"] == "1"
    assert client.get_model_version_by_alias("fraud", "challenger").tags["riskserve.version"] == "2"
    # A version without an MLflow model version leaves its alias alone.
    assert tracker.set_aliases("fraud", {"champion": 9}) == {"champion": None}
    assert str(client.get_model_version_by_alias("fraud", "champion").version) == "1"

    # A refused challenger: the run is logged (gate failed), nothing registered anywhere.
    before = listing(models)
    refused = retrain(
        config(models, settings=SETTINGS, shuffle_training_labels=True),
        lambda: store_of(models),
        tracker=tracker,
    )
    assert not refused.registered and listing(models) == before
    failed = client.get_run(refused.mlflow_run_id)
    assert (
        failed.data.tags["riskserve.gate"] == "failed"
        and "riskserve.version" not in failed.data.tags
    )
    assert failed.data.metrics["gate_passed"] == 0.0
    assert len(client.search_model_versions("name='fraud'")) == 2


def test_a_tracking_server_that_is_down_is_named() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=rf"MLflow tracking server at {uri} cannot be reached"):
        Tracker(uri)
    assert open_tracker("", "riskserve") is None


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b"no such page")

    def log_message(self, *args: Any) -> None:
        pass


def test_a_server_that_is_not_mlflow_is_named() -> None:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{httpd.server_port}"
        with pytest.raises(
            TrackingError, match=rf"{uri} answered HTTP 404 .*is it an MLflow server"
        ):
            Tracker(uri)
    finally:
        httpd.shutdown()
        thread.join()


def test_a_file_store_mlflow_refuses_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")  # the operator said no
    uri = (tmp_path / "mlruns").as_uri()
    with pytest.raises(TrackingError, match=rf"MLflow at {uri}: .*MLFLOW_ALLOW_FILE_STORE"):
        Tracker(uri)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="cannot create"):
        Tracker((blocker / "mlruns").as_uri())
