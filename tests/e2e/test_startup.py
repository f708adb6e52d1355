"""Starting the server on real model folders: refused versions, deterministic
training, an inferred spec trained through the CLI, the `score` CLI, SIGTERM."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import train_model

from riskserve.client import build_request, probabilities
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

ROUNDS = 20
SEED = 3
CLI = Path(sys.executable).with_name("riskserve")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(version_dir: Path) -> dict[str, Any]:
    return json.loads((version_dir / "manifest.json").read_text())


def _stub(target: str) -> tuple[grpc.Channel, pb_grpc.GRPCInferenceServiceStub]:
    ch = grpc.insecure_channel(target)
    return ch, pb_grpc.GRPCInferenceServiceStub(ch)


def _refusals(handle: Any) -> list[dict[str, Any]]:
    return [e for e in handle.events() if e.get("event") == "model version refused"]


# --------------------------------------------------------------------------------------
# a folder with one good version and three bad ones
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_thrice(tmp_path_factory: pytest.TempPathFactory, train_data: Path) -> dict[str, Any]:
    """`fraud` trained three times on the same data with the same seed."""
    models = tmp_path_factory.mktemp("startup") / "models"
    results = [train_model(train_data, models, ROUNDS, SEED) for _ in range(3)]
    # hashed now: damaged_repo tampers with these files later
    on_disk = [_sha256(models / "fraud" / str(v) / "model.txt") for v in (1, 2, 3)]
    manifests = [_manifest(models / "fraud" / str(v)) for v in (1, 2, 3)]
    return {"models": models, "results": results, "on_disk": on_disk, "manifests": manifests}


@pytest.mark.unit  # trains in process; no server
def test_training_is_deterministic(trained_thrice: dict[str, Any]) -> None:
    models: Path = trained_thrice["models"]
    results = trained_thrice["results"]
    assert [r.ref.version for r in results] == [1, 2, 3]
    assert [r.ref.path for r in results] == [models / "fraud" / str(v) for v in (1, 2, 3)]
    manifests = trained_thrice["manifests"]
    hashes = {m["files"]["model.txt"] for m in manifests}
    assert len(hashes) == 1, hashes
    assert {r.model_sha256 for r in results} == hashes
    assert set(trained_thrice["on_disk"]) == hashes
    assert len({m["files"]["features.json"] for m in manifests}) == 1
    assert [m["version"] for m in manifests] == [1, 2, 3]
    assert all(m["name"] == "fraud" and m["model_format"] == "lightgbm" for m in manifests)


@pytest.fixture(scope="module")
def damaged_repo(trained_thrice: dict[str, Any]) -> Path:
    """v1 good; v2 model.txt tampered; v3 features.json does not compile (manifest
    updated to match); v4 a copy of v1 without manifest.json."""
    models: Path = trained_thrice["models"]
    root = models / "fraud"
    v2_model = root / "2" / "model.txt"
    data = bytearray(v2_model.read_bytes())
    pos = data.index(b"Tree=0")
    data[pos + 5] = ord("7")  # "Tree=7": still text, a different hash
    v2_model.write_bytes(bytes(data))

    spec_path = root / "3" / "features.json"
    spec = json.loads(spec_path.read_text())
    for t in spec["transforms"]:
        for step in t.get("steps") or []:
            if step.get("op") == "standardize":
                step["std"] = -1.0
    spec_path.write_text(json.dumps(spec))
    manifest = _manifest(root / "3")
    manifest["files"]["features.json"] = _sha256(spec_path)
    (root / "3" / "manifest.json").write_text(json.dumps(manifest, indent=2))

    shutil.copytree(root / "1", root / "4")
    (root / "4" / "manifest.json").unlink()
    return models


def test_refused_versions_are_logged_and_the_good_one_serves(
    damaged_repo: Path, start_server: Any, reference: Any, fresh_table: Any, rows: Any
) -> None:
    h = start_server(damaged_repo)
    root = damaged_repo / "fraud"
    refused = {e["version"]: e for e in _refusals(h)}
    assert set(refused) == {2, 3, 4}, h.log_text()
    for e in refused.values():
        assert e["level"] == "error" and e["model"] == "fraud"
    assert str(root / "2" / "model.txt") in refused[2]["reason"]
    assert "sha256" in refused[2]["reason"]
    assert str(root / "3" / "features.json") in refused[3]["reason"]
    assert str(root / "4" / "manifest.json") in refused[4]["reason"]

    v1 = root / "1"
    cols = rows(reference.columns(fresh_table, v1), slice(0, 50))
    want = reference.predict(v1, cols)
    ch, stub = _stub(h.target)
    try:
        md = stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"), timeout=10)
        assert list(md.versions) == ["1"]
        for version in ("", "1"):
            resp = stub.ModelInfer(
                build_request("fraud", cols, reference.datatypes(v1), version=version),
                timeout=10,
            )
            assert resp.model_version == "1"
            np.testing.assert_allclose(probabilities(resp), want, rtol=0, atol=1e-6)
        for bad in ("2", "3", "4"):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(
                    build_request("fraud", cols, reference.datatypes(v1), version=bad), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert bad in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelReady(pb.ModelReadyRequest(name="fraud", version=bad), timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        ch.close()


@pytest.mark.parametrize("content", ["null", "[]"])
def test_non_object_manifest_is_refused_not_fatal(
    tmp_path: Path, models_dir: Path, start_server: Any, served: Any, content: str
) -> None:
    """A manifest.json that is valid JSON but not an object must be refused like
    any other bad manifest; the other versions and models still serve."""
    models = tmp_path / "models"
    shutil.copytree(models_dir / "fraud" / "1", models / "fraud" / "1")
    shutil.copytree(models_dir / "fraud_onnx" / "1", models / "fraud_onnx" / "1")
    bad = models / "fraud" / "2"
    shutil.copytree(models_dir / "fraud" / "1", bad)
    (bad / "manifest.json").write_text(content)
    h = start_server(models)
    refused = _refusals(h)
    assert [(e["model"], e["version"]) for e in refused] == [("fraud", 2)], h.log_text()
    assert str(bad / "manifest.json") in refused[0]["reason"]
    assert served(h.target, ["fraud", "fraud_onnx"]) == {"fraud": ["1"], "fraud_onnx": ["1"]}


# --------------------------------------------------------------------------------------
# an inferred spec on a hand-made CSV, trained through the CLI
# --------------------------------------------------------------------------------------

CSV_ROWS = 3000


def _write_mixed_csv(path: Path) -> None:
    rng = np.random.default_rng(11)
    cats = ["red", "green", "blue", "violet"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["spend", "visits", "vip", "colour", "user", "label"])
        for k in range(CSV_ROWS):
            spend = round(float(rng.lognormal(3.0, 1.0)), 2)
            visits = int(rng.integers(0, 40))
            vip = bool(rng.random() < 0.3)
            colour = cats[int(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))]
            user = f"user-{int(rng.integers(0, 400)):03d}"
            logit = -2.0 + 0.03 * spend - 0.05 * visits + (1.2 if colour == "violet" else 0.0)
            logit += -1.0 if vip else 0.5
            label = int(rng.random() < 1 / (1 + math.exp(-logit)))
            blank = k % 9 == 0
            w.writerow(
                ["" if blank else f"{spend:.2f}", visits, "true" if vip else "false", colour,
                 user, label]
            )  # fmt: skip


@pytest.fixture(scope="module")
def csv_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("csvmodel")
    data = work / "mixed.csv"
    _write_mixed_csv(data)
    models = work / "models"
    cmd = [
        str(CLI), "train", "--data", str(data), "--target", "label", "--model", "mixed",
        "--models", str(models), "--rounds", "25", "--seed", "5",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return {"data": data, "models": models, "out": out, "stderr": proc.stderr}


def test_inferred_spec_from_csv(csv_model: dict[str, Any]) -> None:
    out = csv_model["out"]
    assert out["model"] == "mixed" and out["version"] == 1
    vdir = csv_model["models"] / "mixed" / "1"
    assert Path(out["path"]) == vdir
    assert out["model_sha256"] == _sha256(vdir / "model.txt")
    assert 0.5 < out["metrics"]["auc"] <= 1.0
    spec = json.loads((vdir / "features.json").read_text())
    assert {i["name"]: i["dtype"] for i in spec["inputs"]} == {
        "spend": "float",
        "visits": "int",
        "vip": "bool",
        "colour": "string",
        "user": "string",
    }
    kinds = {t.get("input"): t["type"] for t in spec["transforms"]}
    assert kinds["colour"] == "one_hot"
    assert kinds["user"] == "ordinal"
    assert _manifest(vdir)["spec_source"] == "inferred"


def test_inferred_spec_model_serves(
    csv_model: dict[str, Any], start_server: Any, reference: Any
) -> None:
    from riskserve.training.datagen import read_table

    vdir = csv_model["models"] / "mixed" / "1"
    h = start_server(csv_model["models"])
    table = read_table(csv_model["data"]).slice(0, 200)
    cols = reference.columns(table, vdir)
    assert np.isnan(cols["spend"]).any()
    cols["colour"][1] = "ultraviolet"  # unseen
    cols["user"][2] = ""  # missing
    cols["user"][3] = "user-never"  # unseen
    want = reference.predict(vdir, cols)
    ch, stub = _stub(h.target)
    try:
        md = stub.ModelMetadata(pb.ModelMetadataRequest(name="mixed"), timeout=10)
        assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [
            ("spend", "FP64", [-1]),
            ("visits", "INT64", [-1]),
            ("vip", "BOOL", [-1]),
            ("colour", "BYTES", [-1]),
            ("user", "BYTES", [-1]),
        ]
        dts = {t.name: t.datatype for t in md.inputs}
        for raw in (True, False):
            resp = stub.ModelInfer(build_request("mixed", cols, dts, raw=raw), timeout=10)
            assert resp.model_version == "1"
            got = probabilities(resp)
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        assert got.std() > 0
    finally:
        ch.close()


# --------------------------------------------------------------------------------------
# the score CLI
# --------------------------------------------------------------------------------------


def test_cli_score_prints_probability(server: Any, models_dir: Path, reference: Any) -> None:
    from riskserve.training.datagen import generate

    proc = subprocess.run(
        [str(CLI), "score", "--server", server.target, "--model", "fraud"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["model"] == "fraud" and out["version"] == "1"
    assert isinstance(out["probability"], list) and len(out["probability"]) == 1
    p = out["probability"][0]
    assert 0.0 <= p <= 1.0
    # the default example row is generate(1, seed=7)
    vdir = models_dir / "fraud" / "1"
    want = reference.predict(vdir, reference.columns(generate(1, 7), vdir))
    assert abs(p - want[0]) <= 1e-6


def test_cli_score_json_row(server: Any, models_dir: Path, reference: Any) -> None:
    from riskserve.client import example_row

    row = example_row(9)
    row["amount"] = 12345.67
    row["distance_from_home_km"] = None  # missing
    proc = subprocess.run(
        [str(CLI), "score", "--server", server.target, "--model", "fraud_onnx",
         "--json", json.dumps(row)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["version"] == "1"
    vdir = models_dir / "fraud_onnx" / "1"
    dtypes = reference.input_dtypes(vdir)
    cols: dict[str, Any] = {}
    for name, dtype in dtypes.items():
        v = row[name]
        if dtype == "string":
            cols[name] = [v]
        elif dtype == "bool":
            cols[name] = np.array([v], dtype=bool)
        elif dtype == "int":
            cols[name] = np.array([v], dtype=np.int64)
        else:
            cols[name] = np.array([math.nan if v is None else v], dtype=np.float64)
    want = reference.predict(vdir, cols)
    assert abs(out["probability"][0] - want[0]) <= 1e-5


def test_cli_score_partial_json_fills_from_the_example(server: Any) -> None:
    from riskserve.client import example_row

    partial = {"amount": 950.0, "channel": "ecommerce", "new_device": True}
    proc = subprocess.run(
        [str(CLI), "score", "--server", server.target, "--model", "fraud",
         "--json", json.dumps(partial)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    filled = len(example_row(7)) - len(partial)
    assert f"{filled} fields not in --json were taken from example" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["version"] == "1" and 0.0 <= out["probability"][0] <= 1.0
    # The same row sent whole gives the same score: the fill is the documented example.
    whole = {**example_row(7), **partial}
    proc2 = subprocess.run(
        [str(CLI), "score", "--server", server.target, "--model", "fraud", "--strict",
         "--json", json.dumps(whole)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc2.returncode == 0, proc2.stderr
    assert json.loads(proc2.stdout)["probability"] == out["probability"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "no_such_model"], ["NOT_FOUND", "no_such_model"]),
        (
            ["--model", "fraud", "--strict", "--json", '{"amount": 1.5}'],
            ["INVALID_ARGUMENT", "currency"],
        ),
        (["--model", "fraud", "--json", '{"amount": 1.5, "bogus": 1}'], ["bogus"]),
    ],
)
def test_cli_score_errors_are_one_line(server: Any, args: list[str], needles: list[str]) -> None:
    proc = subprocess.run(
        [str(CLI), "score", "--server", server.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------
# shutdown
# --------------------------------------------------------------------------------------


def test_sigterm_right_after_serving_drains_cleanly(tmp_path: Path, launch_server: Any) -> None:
    """The server announces "serving"; a SIGTERM from then on must drain and exit 0
    (an orchestrator may stop a pod at any moment). Repeated because the window is
    short."""
    results = []
    for _ in range(8):
        h = launch_server(tmp_path / "empty-models")
        rc = h.stop()  # SIGTERM as soon as "serving" is logged
        results.append((rc, any(e.get("event") == "stopped" for e in h.events())))
    assert results == [(0, True)] * 8, results


def test_sigterm_with_models_exits_zero(models_dir: Path, start_server: Any) -> None:
    h = start_server(models_dir)
    time.sleep(0.2)
    ch, stub = _stub(h.target)
    try:
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    finally:
        ch.close()
    # stop_and_check in the fixture's teardown asserts exit code 0 and a clean log
