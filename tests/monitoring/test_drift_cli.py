"""`riskserve drift` and `riskserve drift-report` against a real server whose
traffic has a drifted `amount`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from conftest import run_cli

from riskserve.client import build_request
from riskserve.pb.inference import grpc_service_pb2 as pb
from riskserve.pb.inference import grpc_service_pb2_grpc as pb_grpc
from riskserve.training.datagen import generate
from riskserve.training.train import columns_of


def test_drift_table_and_report(
    models_dir: Path, tmp_path: Path, start_server: Callable[..., Any]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models, ignore=shutil.ignore_patterns("deployment.json"))
    h = start_server(models)
    url = f"http://127.0.0.1:{h.metrics_port}/metrics"

    # Not enough rows yet: every field says so, nothing alerts.
    before = run_cli("drift", "--metrics", url)
    assert before.returncode == 0, before.stderr
    assert "ALERT" not in before.stdout and "not enough data" in before.stdout

    with grpc.insecure_channel(h.target) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        md = stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"), timeout=10)
        dts = {i.name: i.datatype for i in md.inputs}
        cols = columns_of(generate(3000, 77), list(dts))
        cols["amount"] = cols["amount"] * 10
        for i in range(0, 3000, 250):
            batch = {k: v[i : i + 250] for k, v in cols.items()}
            stub.ModelInfer(build_request("fraud", batch, dts), timeout=30)

    out = run_cli("drift", "--metrics", url, "--model", "fraud", "--window", "cumulative")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[1:]]
    # Worst first: amount leads, alerting; the untouched raw inputs stay well below.
    assert rows[0][2] == "amount" and rows[0][-1] == "ALERT", out.stdout
    psi = {r[2]: float(r[3]) for r in rows if r[3] != "-"}
    assert psi["amount"] > 0.25
    untouched = {k: v for k, v in psi.items() if k not in ("amount", "__score__")}
    assert untouched and max(untouched.values()) < 0.1, untouched

    png = tmp_path / "drift.png"
    rep = run_cli("drift-report", "--metrics", url, "--out", str(png), "--top", "4")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["fields"] == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    bad = run_cli("drift", "--metrics", "http://127.0.0.1:9/metrics")
    assert bad.returncode == 2 and "riskserve drift:" in bad.stderr
